"""Fixtures of the relay tests: an emulated KKT on a real pty, a KktLink, a mock OFD on loopback."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kktd.config import OfdConfig, OfdMode
from kktd.kkt.commands import Request
from kktd.kkt.link import KktLink
from kktd.kkt.ofd_protocol import OfdCommand
from kktd.ofd.audit import MemoryAudit
from kktd.ofd.mock_ofd import MockOfd
from kktd.ofd.relay import OfdRelay
from kktd.sync.backoff import Backoff
from kktd.sync.breaker import CircuitBreaker
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.emulator.ofd import FnArchive, FnOfd
from kktd.testbed.emulator.pty import PtyEmulator
from tests.support.clock import FakeClock
from tests.support.wait import wait_until

ARCHIVE = 3  # FDs the OFD confirmed before the test
UNSENT = 4  # FDs the FN holds for the OFD at the start

Stop = Callable[[], object]


class Tripwire(FnOfd):
    """The FN's OFD buffer, calling `trip` once, just after the first FF33 block is taken."""

    def __init__(self, archive: FnArchive, block_size: int) -> None:
        super().__init__(archive, block_size=block_size)
        self.trip: Stop | None = None

    def execute(self, request: Request) -> tuple[int, bytes]:
        result = super().execute(request)
        if request.cmd == OfdCommand.WRITE_BLOCK and self.trip is not None:
            trip, self.trip = self.trip, None
            trip()
        return result


def unsent(device: KktDevice) -> int:
    return device.last_fd - device.ofd_confirmed_fd


@pytest.fixture
def device() -> KktDevice:
    kkt = KktDevice(DocumentGenerator(rng=random.Random(8)), archive=ARCHIVE)
    for _ in range(UNSENT):
        kkt.issue()
    kkt.ofd.block_size = 100  # messages of ~200 bytes and answers of 288 span several blocks
    return kkt


@pytest.fixture
async def kkt(device: KktDevice, tmp_path: Path) -> AsyncIterator[PtyEmulator]:
    async with PtyEmulator(device, link=tmp_path / "kkt0") as emulator:
        yield emulator


@pytest.fixture
async def link(kkt: PtyEmulator) -> AsyncIterator[KktLink]:
    serial = KktLink(str(kkt.path), 115200)
    yield serial
    await serial.close()


@pytest.fixture
async def ofd() -> AsyncIterator[MockOfd]:
    async with MockOfd(slow_seconds=1.0) as server:
        yield server


@pytest.fixture
def audit() -> MemoryAudit:
    return MemoryAudit()


RelayFactory = Callable[..., OfdRelay]


@pytest.fixture
def make_relay(link: KktLink, ofd: MockOfd, audit: MemoryAudit, clock: FakeClock) -> RelayFactory:
    """A relay to the mock OFD: breaker 3 failures / 5 s and backoff 0.05..0.2 s on `clock`."""

    def make(*, timeout: float = 2.0, mode: OfdMode = "relay", **kwargs: Any) -> OfdRelay:
        cfg = OfdConfig(mode, "127.0.0.1", ofd.port, timeout)
        return OfdRelay(
            link,
            cfg,
            audit,
            breaker=CircuitBreaker(3, 5.0, monotonic=clock),
            backoff=Backoff(0.05, 0.2, "none"),
            monotonic=clock,
            wall=lambda: 1_700_000_000.0,
            interval=0.05,
            busy_pause=0.01,
            **kwargs,
        )

    return make


async def run_until(
    relay: OfdRelay, done: Callable[[], bool], *, seconds: float = 30.0
) -> list[float]:
    """Run the relay as the supervisor would until `done()`; returns the loop times of beats."""
    loop = asyncio.get_running_loop()
    beats: list[float] = []
    task = asyncio.create_task(relay.run(lambda: beats.append(loop.time())))
    try:

        def there() -> bool:
            assert not task.done(), task
            return done()

        await wait_until(there, timeout=seconds, what="the relay got there")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return beats
