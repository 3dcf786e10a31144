"""Processes a test session started and left running: the suite fails on them (issue 12).

A `kktd run`, an emulator or a `redis-server` that outlives its test keeps a port, a pty or a
unix socket and breaks later tests, later runs, and other developers' runs on the machine. The
session is identified three ways, so only what it started counts, never anybody else's process:
its environment mark (every child inherits `KKTD_TEST_SESSION`; a child re-parented to init
keeps it), descent from the pytest process, and a command line that points into the session's
temporary directory (for children started with an environment of their own).

Reads /proc: Linux only, like kktd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.wait import WaitTimeoutError, wait_until_blocking

MARK = "KKTD_TEST_SESSION"
PROC = Path("/proc")
GRACE = 5.0  # a process being stopped as the session ends gets this long to go
SHOWN = 160  # characters of a command line in the report


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    state: str
    started: int  # clock ticks after boot: with the pid, tells a reused pid apart
    cmdline: str
    marked: bool

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.started


def mark_session() -> str:
    """Put this session's mark in the environment every child inherits."""
    mark = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[MARK] = mark
    return mark


def processes(mark: str) -> list[Process]:
    """Every process on the machine that can be read, with whether it carries `mark`."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # another user's process: not ours
            environ = b""
        fields = stat.rpartition(")")[2].split()
        found.append(
            Process(
                pid=int(entry.name),
                ppid=int(fields[1]),
                state=fields[0],
                started=int(fields[19]),
                cmdline=cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
                marked=needle in environ.split(b"\0"),
            )
        )
    return found


def left_running(mark: str, before: set[tuple[int, int]], tmp_dirs: list[Path]) -> list[Process]:
    """The session's processes still running (zombies have stopped: they only wait to be reaped)."""
    me = os.getpid()
    everything = processes(mark)
    parents = {p.pid: p.ppid for p in everything}
    dirs = [f"{directory}{os.sep}" for directory in tmp_dirs]

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [
        p
        for p in everything
        if p.pid != me
        and p.key not in before
        and p.state not in ("Z", "X")
        and (p.marked or descends(p.pid) or any(d in p.cmdline for d in dirs))
    ]


def wait_for_leftovers(
    mark: str, before: set[tuple[int, int]], tmp_dirs: list[Path], grace: float = GRACE
) -> list[Process]:
    """`left_running`, after giving processes that are on their way out `grace` seconds."""
    with contextlib.suppress(WaitTimeoutError):
        wait_until_blocking(
            lambda: not left_running(mark, before, tmp_dirs), timeout=grace, interval=0.1
        )
    return left_running(mark, before, tmp_dirs)


def report(found: list[Process]) -> list[str]:
    lines = [f"{len(found)} process(es) started by this test session are still running:"]
    for p in found:
        command = p.cmdline if len(p.cmdline) <= SHOWN else p.cmdline[:SHOWN] + "…"
        lines.append(f"  pid {p.pid}: {command}")
    lines.append("a test or fixture did not stop what it started; they are killed now")
    return lines


def kill(found: list[Process]) -> None:
    """SIGKILL each by pid, after checking it still is the same process (not a reused pid)."""
    current = {p.pid: p for p in processes(os.environ.get(MARK, ""))}
    for p in found:
        same = current.get(p.pid)
        if same is not None and same.started == p.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
