"""The files a cashier PC gets besides the venv: the unit keeps what kktd needs, the drop-in,
sysusers and tmpfiles entries work with systemd's own tools, the udev rule does its three jobs,
and the man page renders cleanly and documents every command and config key."""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.packaging import REPO, run, unit_lines

SERVICE = REPO / "systemd/kktd.service"
DROPIN = REPO / "systemd/kktd.service.d/notify-reload.conf"
MAN = REPO / "docs/kktd.8"
EXAMPLE_CONFIG = REPO / "etc/kktd/kktd.toml"


def _single(key: str, unit: Path = SERVICE) -> str:
    (value,) = unit_lines(unit, key)
    return value


def test_service_is_notify_with_watchdog_restart_policy_and_faulthandler() -> None:
    assert _single("Type") == "notify"
    assert _single("NotifyAccess") == "main"
    assert _single("WatchdogSec") == "30"
    assert _single("Restart") == "on-failure"
    assert _single("RestartPreventExitStatus") == "78"
    assert "PYTHONFAULTHANDLER=1" in _single("Environment").split()
    assert _single("Documentation") == "man:kktd(8)"
    assert _single("ExecStart") == "/opt/kktd/bin/kktd run --config /etc/kktd/kktd.toml"


def test_reload_checks_the_config_before_it_signals() -> None:
    assert unit_lines(SERVICE, "ExecReload") == [
        "/opt/kktd/bin/kktd check-config --config /etc/kktd/kktd.toml",
        "/bin/kill -HUP $MAINPID",
    ]


def test_service_keeps_the_serial_port_directories_and_network_kktd_needs() -> None:
    assert _single("DevicePolicy") == "closed"
    assert unit_lines(SERVICE, "DeviceAllow") == [
        "char-ttyACM rw",
        "char-ttyUSB rw",
        "char-ttyS rw",
    ]
    modprobe = {"modprobe@cdc_acm.service", "modprobe@usbserial.service"}
    for key in ("Wants", "After"):
        ordered = {u for line in unit_lines(SERVICE, key) for u in line.split()}
        assert modprobe <= ordered, key
    assert _single("StateDirectory") == "kktd"
    assert _single("ConfigurationDirectory") == "kktd"
    assert _single("RuntimeDirectory") == "kktd"
    assert _single("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert unit_lines(SERVICE, "PrivateNetwork") == []
    assert unit_lines(SERVICE, "IPAddressDeny") == []
    assert unit_lines(SERVICE, "LoadCredential") == [
        "upstream-token",
        "api-token",
        "redis-password",
    ]


def test_notify_reload_dropin_lets_systemd_signal_and_clears_exec_reload() -> None:
    assert _single("Type", DROPIN) == "notify-reload"
    assert _single("ReloadSignal", DROPIN) == "SIGHUP"
    assert _single("ExecReload", DROPIN) == ""


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd's tools")
def test_sysusers_and_tmpfiles_make_the_user_and_its_journal_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    users = run(["systemd-sysusers", f"--root={tmp_path}", REPO / "systemd/kktd.sysusers"])
    assert users.returncode == 0, users.stderr
    entry = next(
        line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
        if line.startswith("kktd:")
    )
    assert entry[5:] == ["/var/lib/kktd", "/usr/sbin/nologin"]
    dirs = run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", REPO / "systemd/kktd.tmpfiles"]
    )
    assert (dirs.returncode, dirs.stderr) == (0, "")
    state = (tmp_path / "var/lib/kktd").stat()
    assert (state.st_uid, state.st_mode & 0o7777) == (int(entry[2]), 0o750)


def test_udev_rule_gives_the_port_to_kktd_links_kkt0_and_keeps_modemmanager_off() -> None:
    rules = (REPO / "etc/udev/99-kkt.rules").read_text().splitlines()
    active = [line for line in rules if line and not line.startswith("#")]
    assert active
    for rule in active:
        assert 'SUBSYSTEM=="tty"' in rule
        assert re.search(r'ATTRS\{idVendor\}=="[0-9a-f]{4}"', rule)
        assert re.search(r'ATTRS\{idProduct\}=="[0-9a-f]{4}"', rule)
        assert 'GROUP="kktd"' in rule
        assert 'SYMLINK+="kkt0"' in rule
        assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in rule
    assert any("udevadm info --attribute-walk" in line for line in rules)


def test_udev_rules_ship_a_commented_com_port_rule_giving_the_port_to_kktd() -> None:
    """PrivateUsers=yes hides group dialout from the service: the port must be group kktd's."""
    rules = (REPO / "etc/udev/99-kkt.rules").read_text().splitlines()
    (com,) = [line.removeprefix("#") for line in rules if 'KERNEL=="ttyS' in line]
    assert rules[rules.index(f"#{com}")].startswith("#SUBSYSTEM")  # shipped off: one KKT per link
    for part in ('SUBSYSTEM=="tty"', 'KERNEL=="ttyS0"', 'GROUP="kktd"', 'SYMLINK+="kkt0"'):
        assert part in com
    assert any("PrivateUsers=yes" in line for line in rules)


def _rendered_man() -> str:
    done = run(["groff", "-man", "-Tutf8", "-ww", "-P", "-cbou", MAN])
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff to render the man page")
def test_man_page_renders_without_warnings_and_has_every_section() -> None:
    page = _rendered_man()
    headings = re.findall(r"^([A-Z][A-Z ]+)$", page, re.MULTILINE)
    for section in (
        "NAME",
        "SYNOPSIS",
        "COMMANDS",
        "CONFIGURATION",
        "SIGNALS",
        "EXIT STATUS",
        "FILES",
    ):
        assert section in headings
    for code in ("0", "1", "2", "3", "78"):
        assert re.search(rf"^\s+{code}\s+\S", page, re.MULTILINE), code
    for name in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert name in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff to render the man page")
@pytest.mark.parametrize(
    "command",
    [
        "run",
        "check-config",
        "print-config",
        "--version",
        "status",
        "sync",
        "dlq list",
        "dlq retry",
        "doc",
        "export",
        "fleet",
        "emulator",
    ],
)
def test_man_page_documents_the_command(command: str) -> None:
    page = _rendered_man()
    commands = page.split("\nCOMMANDS\n", 1)[1].split("\nOPTIONS\n", 1)[0]
    assert re.search(rf"^ {{7}}{re.escape(command)}\b", commands, re.MULTILINE)


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff to render the man page")
@pytest.mark.skipif(not EXAMPLE_CONFIG.is_file(), reason="no example config in this checkout")
def test_man_page_documents_every_key_of_the_example_config() -> None:
    page = _rendered_man()
    config = page.split("\nCONFIGURATION\n", 1)[1].split("\nSECRETS\n", 1)[0]
    sections = re.split(r"^ {3}\[(\w+)\]$", config, flags=re.MULTILINE)
    documented = {
        name: set(re.findall(r"^ {7}(\w+) = ", body, re.MULTILINE))
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    missing = [
        f"{section}.{key}"
        for section, keys in example.items()
        for key in keys
        if key not in documented.get(section, set())
    ]
    assert missing == []


def test_scripts_are_executable() -> None:
    for name in ("packaging/install-systemd", "packaging/uninstall-systemd", "packaging/build-deb"):
        assert os.access(REPO / name, os.X_OK), name
    assert os.access(REPO / "scripts/check-unit", os.X_OK)
