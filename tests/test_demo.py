"""The demo, as a newcomer runs it: receipts flow within seconds, it stops cleanly."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import termios
from pathlib import Path

from tests.support.wait import wait_until_blocking

SUMMARY = re.compile(
    r"^demo: printed (\d+), journaled (\d+), delivered (\d+), pending (\d+), dead (\d+) in \d+ s$",
    re.MULTILINE,
)
DEMO = [sys.executable, "-m", "kktd.testbed.demo"]


def summary(out: str) -> tuple[int, ...]:
    found = SUMMARY.search(out)
    assert found is not None, out
    return tuple(int(n) for n in found.groups())


def test_receipts_flow_to_the_upstream_and_the_demo_exits_0() -> None:
    done = subprocess.run(
        [*DEMO, "--seconds", "8", "--no-keys"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed, journaled, delivered, pending, dead = summary(done.stdout)
    assert delivered >= 5  # ~2 receipts a second for 8 s, on a loaded machine too
    assert dead == 0
    assert delivered + pending == journaled <= printed  # every journaled FD accounted for
    assert "kktd stopped (exit 0)" in done.stdout
    assert re.search(r"^\s+\d+s  printed ", done.stdout, re.MULTILINE)  # the live lines


def test_ctrl_c_stops_kktd_and_cleans_up() -> None:
    with subprocess.Popen(
        [*DEMO, "--no-keys"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "  printed " in line:
                break
        workdir = Path(lines[0].split()[3])
        proc.send_signal(signal.SIGINT)
        out = "".join(lines) + proc.stdout.read()
        assert proc.wait(timeout=60) == 0, out
    assert "kktd stopped (exit 0)" in out
    assert not workdir.exists()


def test_keys_break_the_upstream_and_the_terminal_is_restored() -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    with subprocess.Popen(
        DEMO, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        out = ""
        try:
            for line in proc.stdout:
                out += line
                if line.startswith("keys:"):
                    # in canonical mode a key waits for an Enter that never comes
                    wait_for_cbreak(slave)
                    os.write(master, b"u")  # upstream down
                if "upstream DOWN" in line:
                    os.write(master, b"q")
            assert proc.wait(timeout=60) == 0, out
            assert "<- upstream DOWN (connection refused)" in out
            assert termios.tcgetattr(slave) == before
        finally:
            if proc.poll() is None:
                proc.kill()  # its kktd goes too; its directory is ours to remove then
                if out.startswith("kktd demo in "):
                    shutil.rmtree(out.split()[3], ignore_errors=True)
            os.close(master)
            os.close(slave)


def test_the_demo_runs_with_the_kkt_on_a_tcp_port() -> None:
    done = subprocess.run(
        [*DEMO, "--seconds", "6", "--no-keys", "--tcp"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^emulated KKT on tcp://127\.0\.0\.1:\d+,", done.stdout, re.MULTILINE)
    printed, journaled, delivered, pending, dead = summary(done.stdout)
    assert delivered >= 3
    assert dead == 0
    assert delivered + pending == journaled <= printed


def wait_for_cbreak(tty: int, within: float = 10.0) -> None:
    wait_until_blocking(
        lambda: not termios.tcgetattr(tty)[3] & termios.ICANON,
        timeout=within,
        interval=0.01,
        what="the demo put the terminal in cbreak mode",
    )


def test_kktd_stops_when_the_demo_is_killed_outright() -> None:
    """SIGKILL (a test timeout, the OOM killer): no handler of the demo runs, kktd must go too."""
    with subprocess.Popen(
        [*DEMO, "--no-keys"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if "  printed " in line:  # kktd answers: it runs
                    break
            (kktd,) = children(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
            wait_until_blocking(
                lambda: not alive(kktd), timeout=30, what=f"kktd {kktd} gone with the demo"
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            shutil.rmtree(lines[0].split()[3], ignore_errors=True)  # the demo's own directory


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps yet has stopped all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
