"""The daemon-side commands of `kktd` (SPEC section 6): real subprocesses, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kktd import __version__

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "etc" / "kktd" / "kktd.toml"


def kktd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kktd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = kktd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kktd {__version__}"


def test_check_config_accepts_the_example_config() -> None:
    result = kktd("check-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_config_names_file_line_and_key_of_a_misspelled_key(tmp_path: Path) -> None:
    config = tmp_path / "kktd.toml"
    config.write_text('[kkt]\nport = "/dev/kkt0"\n\n[sync]\nintervall = "5s"\n', encoding="utf-8")
    result = kktd("check-config", "--config", str(config))
    assert result.returncode == 78
    assert result.stderr.startswith(f"{config}:5: sync.intervall: ")
    assert "did you mean 'interval'" in result.stderr


def test_check_config_on_a_missing_file_exits_78(tmp_path: Path) -> None:
    result = kktd("check-config", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 78
    assert "absent.toml" in result.stderr


def test_print_config_redacts_secrets(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("very-secret-token\n", encoding="utf-8")
    config = tmp_path / "kktd.toml"
    config.write_text('[upstream]\ntoken_file = "token"\n', encoding="utf-8")
    result = kktd("print-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "very-secret-token" not in result.stdout
    assert "<redacted>" in result.stdout
    assert "[upstream]" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = kktd("frobnicate")
    assert result.returncode == 2


def test_tools_keep_their_own_help() -> None:
    result = kktd("emulator", "--help")
    assert result.returncode == 0
    assert "--rate" in result.stdout


def test_check_config_says_which_transport_reaches_the_kkt(tmp_path: Path) -> None:
    config = tmp_path / "kktd.toml"
    config.write_text('[kkt]\nport = "/dev/ttyS0"\nbaudrate = 9600\n', encoding="utf-8")
    serial = kktd("check-config", "--config", str(config))
    config.write_text('[kkt]\nport = "tcp://192.168.137.111"\n', encoding="utf-8")
    tcp = kktd("check-config", "--config", str(config))
    assert (serial.returncode, serial.stderr) == (0, "")
    assert "the KKT: serial port /dev/ttyS0 at 9600 baud" in serial.stdout
    assert (tcp.returncode, tcp.stderr) == (0, "")
    assert "the KKT: TCP to 192.168.137.111 port 7778" in tcp.stdout


def test_check_config_warns_of_a_baud_rate_given_with_a_tcp_port_and_passes(
    tmp_path: Path,
) -> None:
    config = tmp_path / "kktd.toml"
    config.write_text('[kkt]\nport = "tcp://[::1]:7778"\nbaudrate = 4800\n', encoding="utf-8")
    result = kktd("check-config", "--config", str(config))
    assert result.returncode == 0
    assert result.stderr.startswith(f"warning: {config}:3: kkt.baudrate: ignored: ")
    assert "TCP to ::1 port 7778" in result.stdout


def test_check_config_explains_a_malformed_kkt_address_on_its_line(tmp_path: Path) -> None:
    config = tmp_path / "kktd.toml"
    config.write_text('[kkt]\npassword = 30\nport = "tcp://::1:7778"\n', encoding="utf-8")
    result = kktd("check-config", "--config", str(config))
    assert result.returncode == 78
    assert result.stderr == (
        f"{config}:3: kkt.port: an IPv6 address goes in brackets, the port after them"
        " (tcp://[::1]:7778), got tcp://::1:7778\n"
    )
