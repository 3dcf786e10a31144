"""Helpers for tests that talk to the mock upstream: entries, polling, TLS files, a stuck port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kktd.config import SyncConfig, UpstreamConfig
from kktd.journal import Journal, Outgoing
from kktd.sync.backoff import Backoff
from kktd.sync.body import encode_body
from kktd.sync.breaker import BreakerState, CircuitBreaker
from kktd.sync.client import UpstreamClient
from kktd.sync.engine import SyncEngine
from kktd.sync.lock import LocalSyncLock, SyncLock
from kktd.testbed.mock_upstream import MockUpstream

FN = "9999078900005488"


def entry_raw(fd: int) -> bytes:
    """The TLV bytes of `make_entry`'s FD."""
    return b"\x01\x02" + fd.to_bytes(4, "little")


def make_entry(
    fd: int, *, fn: str = FN, fields: dict[str, Any] | None = None, raw: bytes | None = None
) -> Outgoing:
    """A pending FD as the engine claims it (no journal needed): the body journaling builds."""
    fields = fields if fields is not None else {"doc_type": 3, "doc_kind": "receipt"}
    return Outgoing(fn, fd, encode_body(fn, fd, entry_raw(fd) if raw is None else raw, fields))


@asynccontextmanager
async def running_mock(**kwargs: Any) -> AsyncIterator[MockUpstream]:
    mock = MockUpstream(**kwargs)
    await mock.start()
    try:
        yield mock
    finally:
        await mock.stop()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1 made with the openssl tool; skips the test without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connect hangs until it times out.

    Linux drops SYNs for a listener whose backlog is full, which is what a black-holed
    upstream looks like from here.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    port = int(listener.getsockname()[1])
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def store_fds(journal: Journal, fds: Iterable[int], *, fn: str = FN) -> None:
    """Journal FDs as the poller would (pending, due now)."""
    for fd in fds:
        await journal.store(fn, fd, 3, b"\x01\x02" + fd.to_bytes(4, "little"), {"doc_type": 3})


@dataclass
class Rig:
    """An engine with its parts, small and fast settings, and the breaker's transitions."""

    engine: SyncEngine
    client: UpstreamClient
    breaker: CircuitBreaker
    backoff: Backoff
    changes: list[tuple[BreakerState, BreakerState]] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)

    def opens(self) -> int:
        return sum(1 for _, new in self.changes if new is BreakerState.OPEN)


@asynccontextmanager
async def engine_rig(
    journal: Journal,
    url: str,
    *,
    lock: SyncLock | None = None,
    sync: SyncConfig | None = None,
    max_in_flight: int = 4,
    timeout: float = 5.0,
    failure_threshold: int = 5,
    reset_timeout: float = 0.05,
    backoff: tuple[float, float] = (0.001, 0.01),
    wall: Callable[[], float] = time.time,
    instance: str = "till-1",
    on_breaker_change: Callable[[BreakerState, BreakerState], None] | None = None,
    client_class: type[UpstreamClient] = UpstreamClient,
    client_options: dict[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    client = client_class(
        UpstreamConfig(url=url, timeout=timeout, max_in_flight=max_in_flight),
        instance_id=instance,
        version="test",
        **(client_options or {}),
    )
    changes: list[tuple[BreakerState, BreakerState]] = []

    def changed(old: BreakerState, new: BreakerState) -> None:
        changes.append((old, new))
        if on_breaker_change is not None:
            on_breaker_change(old, new)

    breaker = CircuitBreaker(failure_threshold, reset_timeout, on_change=changed)
    back = Backoff(backoff[0], backoff[1], "none")
    engine = SyncEngine(
        journal,
        client,
        breaker,
        back,
        lock if lock is not None else LocalSyncLock(instance),
        sync if sync is not None else SyncConfig(interval=60.0, batch_size=50, max_attempts=5),
        wall=wall,
    )
    rig = Rig(engine, client, breaker, back, changes)
    engine.on_round = rig.reports.append
    await client.start()
    try:
        yield rig
    finally:
        await client.close()


@asynccontextmanager
async def running(engine: SyncEngine) -> AsyncIterator[list[float]]:
    """The engine's loop as a task; yields the times it beat. Cancelled on exit."""
    beats: list[float] = []
    task = asyncio.create_task(engine.run(lambda: beats.append(time.monotonic())))
    try:
        yield beats
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "the sync loop ended on its own"
