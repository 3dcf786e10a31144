"""The suite fails when a process it started outlives it: a child left running, and an orphan
re-parented to init, which only the session's environment mark still ties to it."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from tests.support.leftovers import processes
from tests.support.wait import wait_until_blocking

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """\
import subprocess


def test_leaves_a_child_and_an_orphan():
    subprocess.Popen(["sleep", "{child}"])
    # the shell exits at once: its sleep is re-parented, no longer our descendant
    subprocess.run(["sh", "-c", "sleep {orphan} &"], check=True)
"""

TIDY = """\
import subprocess


def test_stops_what_it_starts():
    child = subprocess.Popen(["sleep", "300"])
    child.kill()
    child.wait()
"""


def run_session(directory: Path, source: str) -> subprocess.CompletedProcess[str]:
    test = directory / "test_session.py"
    test.write_text(source, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def running(*commands: str) -> list[int]:
    return [p.pid for p in processes("") if p.cmdline in commands and p.state != "Z"]


def test_a_session_that_leaves_processes_running_fails_and_kills_them(tmp_path: Path) -> None:
    # durations nobody else runs sleep with: they name this test's processes
    child, orphan = (f"{300 + n}.{random.randrange(10**6):06d}" for n in (0, 1))
    done = run_session(tmp_path, LEAKY.format(child=child, orphan=orphan))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "2 process(es) started by this test session are still running:" in done.stdout
    assert f": sleep {child}\n" in done.stdout
    assert f": sleep {orphan}\n" in done.stdout  # found by the session's mark alone
    wait_until_blocking(
        lambda: not running(f"sleep {child}", f"sleep {orphan}"),
        timeout=10,
        what="the leftovers killed",
    )


def test_a_session_that_stops_what_it_starts_passes(tmp_path: Path) -> None:
    done = run_session(tmp_path, TIDY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "still running" not in done.stdout
