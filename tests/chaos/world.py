"""The chaos harness's world: emulated KKTs, kktd subprocesses, the mock upstream, the checks.

Everything here is real: each kktd is `python -m kktd run` with its own journal file, talking to
an emulator on a pty (or on a TCP port) and to the in-process mock upstream over loopback; the
checks read the journal file itself (read-only, after kktd stopped) and the mock's accepted set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kktd.cli.client import ApiClient, ApiError, DaemonUnreachable
from kktd.config import ApiConfig
from kktd.emulator.device import KktDevice
from kktd.emulator.documents import DocumentGenerator
from kktd.emulator.pty import PtyEmulator
from kktd.emulator.serving import Serving
from kktd.emulator.tcp import TcpEmulator
from kktd.mock_upstream import MockUpstream

FN = "9999078900005488"
READY_WITHIN = 30.0
STOP_WITHIN = 20.0
DRAIN_WITHIN = 30.0
RSS_GROWTH_LIMIT_KB = 30 * 1024

CONFIG = """\
[kkt]
port = "{kkt}"
poll_interval = "100ms"
start_fd = "first"

[journal]
path = "{journal}"

[upstream]
url = "{upstream}"
timeout = "1s"
max_in_flight = 4

[sync]
interval = "500ms"
batch_size = 50
max_attempts = 1000

[backoff]
base = "100ms"
max = "1s"
jitter = "full"

[breaker]
failure_threshold = 3
reset_timeout = "1s"

[lock]
redis_url = "{redis}"
ttl = "2s"
on_unavailable = "{on_unavailable}"

[api]
listen = "unix:{api}"

[log]
level = "info"
format = "json"
"""


@dataclass
class Report:
    """One scenario's row: what ran, how much flowed, and every violation in detail."""

    scenario: str
    cycles: int = 0
    fds: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Kktd:
    """One kktd: its emulator, its config and journal, and the subprocess (restartable).

    The NOTIFY_SOCKET stays bound across restarts, so READY=1 of each run can be awaited.
    Exits are watched: any exit the harness did not cause is a violation.
    """

    def __init__(
        self, workdir: Path, name: str, upstream: str, seed: int, transport: str = "pty"
    ) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        device = KktDevice(DocumentGenerator(fn=FN, rng=random.Random(seed)))
        self.emulator: Serving = (
            TcpEmulator(device)
            if transport == "tcp"
            else PtyEmulator(device, link=self.dir / "kkt0")
        )
        self.upstream = upstream
        self.journal = self.dir / "kktd.db"
        self.config = self.dir / "kktd.toml"
        self.api = ApiConfig(listen=f"unix:{self.dir / 'api.sock'}")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.dir / "notify.sock"))
        self.notify.setblocking(False)
        self.messages: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False
        self.starts = 0
        self.unexpected: list[str] = []
        self.rss: list[tuple[int, int]] = []  # (start number, VmRSS kB)
        self.log_path = self.dir / "kktd.log"
        self.env: dict[str, str] = {}  # more environment for kktd (e.g. libfaketime's)

    @property
    def issued(self) -> int:
        return self.emulator.device.last_fd

    def write_config(
        self, *, journal: Path | None = None, redis: str = "", on_unavailable: str = "proceed"
    ) -> None:
        if journal is not None:
            self.journal = journal
        text = CONFIG.format(
            kkt=self.emulator.port,
            journal=self.journal,
            upstream=self.upstream,
            redis=redis,
            on_unavailable=on_unavailable,
            api=self.api.listen.removeprefix("unix:"),
        )
        self.config.write_text(text, encoding="utf-8")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"JOURNAL_STREAM", "WATCHDOG_USEC"}}
        env.update(NOTIFY_SOCKET=str(self.dir / "notify.sock"), KKTD_INSTANCE_ID=self.name)
        env.update(self.env)
        self.drain_notify()
        self.messages.clear()
        self.expected_exit = False
        self.starts += 1
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kktd", "run", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
            )

    def drain_notify(self) -> None:
        while True:
            try:
                data = self.notify.recv(65536)
            except BlockingIOError:
                return
            self.messages.extend(data.decode("utf-8", "replace").split("\n"))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_for_message(
        self, line: str, start: int = 0, within: float = READY_WITHIN
    ) -> int:
        """Index of the first notify line equal to `line` from `start` on."""
        deadline = time.monotonic() + within
        while True:
            self.drain_notify()
            with contextlib.suppress(ValueError):
                return self.messages.index(line, start)
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {line!r} (alive={self.alive})\n{self.tail()}")
            await asyncio.sleep(0.02)

    async def wait_ready(self) -> None:
        await self.wait_for_message("READY=1")

    async def kill(self) -> None:
        """SIGKILL; an earlier exit of its own is recorded as a violation."""
        assert self.proc is not None
        self.watch()
        self.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await asyncio.to_thread(self.proc.wait, STOP_WITHIN)

    async def stop(self) -> int:
        """SIGTERM and wait: a clean stop must exit 0."""
        assert self.proc is not None
        self.watch()
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, STOP_WITHIN)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
            self.unexpected.append(f"{self.name}: did not stop within {STOP_WITHIN:.0f} s")
            return -9
        if code != 0:
            self.unexpected.append(f"{self.name}: SIGTERM exit code {code}, expected 0")
        return code

    def watch(self) -> None:
        """Record an exit nobody asked for, and sample the memory of a live process."""
        if self.proc is None or self.expected_exit:
            return
        code = self.proc.poll()
        if code is not None:
            self.expected_exit = True  # report it once
            self.unexpected.append(f"{self.name}: exited by itself with {code}\n{self.tail()}")
            return
        self.drain_notify()
        # from READY on: the imports before it are growth of the start, not of the work
        rss = vm_rss_kb(self.proc.pid) if "READY=1" in self.messages else None
        if rss is not None:
            self.rss.append((self.starts, rss))

    async def buffer(self) -> dict[str, int] | None:
        try:
            async with ApiClient(self.api, timeout=3.0) as api:
                body = await api.call("GET", "/v1/kkt/buffer/status")
        except (DaemonUnreachable, ApiError, OSError, TimeoutError):
            return None
        return {k: int(body[k]) for k in ("pending", "synced", "dead")}

    async def drained(self) -> bool:
        counts = await self.buffer()
        return counts is not None and counts["pending"] == 0 and sum(counts.values()) >= self.issued

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_growth_kb(self) -> int:
        """Largest growth of one run's RSS over its first sample."""
        first: dict[int, int] = {}
        worst = 0
        for run, kb in self.rss:
            first.setdefault(run, kb)
            worst = max(worst, kb - first[run])
        return worst

    def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.notify.close()


def vm_rss_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


async def watch(nodes: list[Kktd], stop: asyncio.Event) -> None:
    """Every 0.5 s: unexpected exits and memory samples, until `stop` is set."""
    while not stop.is_set():
        for node in nodes:
            node.watch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def drain(nodes: list[Kktd], within: float = DRAIN_WITHIN) -> list[str]:
    """Stop issuing and wait until every node journaled and settled all its FDs."""
    for node in nodes:
        node.emulator.stop_issuing()
    deadline = time.monotonic() + within
    waiting = list(nodes)
    while waiting and time.monotonic() < deadline:
        waiting = [node for node in waiting if not await node.drained()]
        if waiting:
            await asyncio.sleep(0.2)
    return [
        f"{node.name}: not drained within {within:.0f} s: issued {node.issued},"
        f" buffer {await node.buffer()}\n{node.tail()}"
        for node in waiting
    ]


def read_journal(path: Path) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(fn, fd) -> (state, last_error) straight from the file; raises on a duplicate key."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT fn, fd, state, last_error FROM documents").fetchall()
    journal: dict[tuple[str, int], tuple[str, str | None]] = {}
    for fn, fd, state, error in rows:
        if (fn, fd) in journal:
            raise AssertionError(f"FD {fn}/{fd} journaled twice")
        journal[(fn, fd)] = (state, error)
    return journal


def check(nodes: list[Kktd], mock: MockUpstream) -> tuple[list[str], list[str]]:
    """Every invariant of the issue after a scenario: (violations, notes)."""
    violations: list[str] = []
    notes: list[str] = []
    journaled: set[tuple[str, int]] = set()
    accepted = mock.state.accepted
    for node in nodes:
        violations += node.unexpected
        try:
            journal = read_journal(node.journal)
        except (sqlite3.Error, AssertionError) as exc:
            violations.append(f"{node.name}: journal unreadable: {exc}")
            continue
        fds = {fd for fn, fd in journal if fn == FN}
        issued = set(range(1, node.issued + 1))
        if missing := sorted(issued - fds):
            violations.append(f"{node.name}: issued but not journaled: {_span(missing)}")
        if extra := sorted(fds - issued):
            violations.append(f"{node.name}: journaled but never issued: {_span(extra)}")
        journaled |= journal.keys()
        dead = 0
        for key, (state, error) in sorted(journal.items()):
            if state == "dead":
                dead += 1
                if not error:
                    violations.append(f"{node.name}: FD {key[1]} dead without a reason")
            elif key not in accepted:
                violations.append(f"{node.name}: FD {key[1]} is {state}, not accepted upstream")
        if dead:
            notes.append(f"{node.name}: {dead} dead with reasons")
        growth = node.rss_growth_kb()
        if growth > RSS_GROWTH_LIMIT_KB:
            violations.append(f"{node.name}: RSS grew by {growth // 1024} MB within one run")
        notes.append(
            f"{node.name}: RSS max {max((kb for _, kb in node.rss), default=0) // 1024} MB"
        )
    if invented := sorted(set(accepted) - journaled):
        violations.append(f"accepted upstream but journaled nowhere: {invented[:10]}")
    seen = mock.state
    if seen.fence_violations:
        violations.append(f"upstream saw {seen.fence_violations} fences go backwards")
    if seen.overlaps:
        violations.append(f"upstream saw {seen.overlaps} requests overlap across instances")
    notes.append(f"upstream: {len(accepted)} accepted, {seen.duplicates} answered 409")
    return violations, notes


def _span(fds: list[int]) -> str:
    shown = ", ".join(map(str, fds[:10]))
    return f"{len(fds)} FDs ({shown}{' ...' if len(fds) > 10 else ''})"
