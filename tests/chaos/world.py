"""The chaos harness's world: emulated KKTs, kktd subprocesses, the mock upstream, the checks.

Everything here is real: each kktd is `python -m kktd run` with its own journal file, talking to
an emulator on a pty (or on a TCP port) and to the in-process mock upstream over loopback; the
checks read the journal file itself (read-only, after kktd stopped) and the mock's accepted set.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kktd.cli.client import ApiClient, ApiError, DaemonUnreachable
from kktd.config import ApiConfig
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.emulator.serving import Serving
from kktd.testbed.emulator.tcp import TcpEmulator
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.config import render_config
from tests.support.kktd_process import KktdProcess, has_line
from tests.support.wait import WaitTimeoutError, wait_until

FN = "9999078900005488"
READY_WITHIN = 30.0
STOP_WITHIN = 20.0
DRAIN_WITHIN = 30.0
RSS_GROWTH_LIMIT_KB = 30 * 1024


def replace_file(path: Path, text: str) -> None:
    """Write `path` as an editor that saves safely does: a new file renamed over the old one.
    (A plain write_text truncates first: a SIGHUP still being handled could read it half
    written, which is a test of the harness, not of kktd.)"""
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(path)


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

    The process is a `KktdProcess`, whose NOTIFY_SOCKET stays bound across restarts, so READY=1
    of each run can be awaited. Exits are watched: any exit the harness did not cause is a
    violation.
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
        self.process = KktdProcess(self.config, env={"KKTD_INSTANCE_ID": name}, start=False)
        self.env = self.process.env  # more environment for kktd (e.g. libfaketime's)
        self.expected_exit = False
        self.starts = 0
        self.unexpected: list[str] = []
        self.rss: list[tuple[int, int]] = []  # (start number, VmRSS kB)
        self.log_path = self.process.log_path

    @property
    def issued(self) -> int:
        return self.emulator.device.last_fd

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    @property
    def messages(self) -> list[tuple[float, str]]:
        return self.process.messages

    def write_config(
        self, *, journal: Path | None = None, redis: str = "", on_unavailable: str = "proceed"
    ) -> None:
        if journal is not None:
            self.journal = journal
        replace_file(
            self.config,
            render_config(
                self.dir,
                kkt={"port": self.emulator.port, "poll_interval": "100ms", "start_fd": "first"},
                journal={"path": self.journal},
                upstream={"url": self.upstream, "timeout": "1s", "max_in_flight": 4},
                sync={"interval": "500ms", "batch_size": 50, "max_attempts": 1000},
                backoff={"base": "100ms", "max": "1s", "jitter": "full"},
                breaker={"failure_threshold": 3, "reset_timeout": "1s"},
                lock={"redis_url": redis, "ttl": "2s", "on_unavailable": on_unavailable},
                api={"listen": self.api.listen},
                log={"level": "info"},
            ),
        )

    def start(self) -> None:
        self.expected_exit = False
        self.starts += 1
        self.process.start()

    @property
    def alive(self) -> bool:
        return self.process.alive

    async def wait_for_message(
        self, line: str, start: int = 0, within: float = READY_WITHIN
    ) -> int:
        """Index of the first notify datagram from `start` on that has the line `line`."""
        try:
            return await self.process.wait_for_async(has_line(line), within, start)
        except AssertionError as exc:  # run_scenario reports a part that would not come up
            raise RuntimeError(f"{self.name}: no {line!r}: {exc}") from exc

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
        self.watch()
        self.expected_exit = True
        code = await asyncio.to_thread(self.process.stop, STOP_WITHIN)
        if code is None:
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
        self.process.drain()
        # from READY on: the imports before it are growth of the start, not of the work
        ready = any(has_line("READY=1")(message) for _, message in self.messages)
        rss = vm_rss_kb(self.proc.pid) if ready else None
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
        return self.process.tail(lines)

    def rss_growth_kb(self) -> int:
        """Largest growth of one run's RSS over its first sample."""
        first: dict[int, int] = {}
        worst = 0
        for run, kb in self.rss:
            first.setdefault(run, kb)
            worst = max(worst, kb - first[run])
        return worst

    def close(self) -> None:
        self.process.close()


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
    waiting = list(nodes)

    async def all_drained() -> bool:
        nonlocal waiting
        waiting = [node for node in waiting if not await node.drained()]
        return not waiting

    with contextlib.suppress(WaitTimeoutError):  # those still waiting are the violations
        await wait_until(all_drained, timeout=within, interval=0.2)
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
