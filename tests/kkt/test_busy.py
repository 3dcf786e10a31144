"""Busy answers (50/58): retried at once, then after 10 ms doubling to 200 ms, 10 s in all.

SPEC section 1 and issue 13. The schedule is pinned with an injected sleep that records each
pause and advances a fake clock; the KKT is the emulator on a real pty answering busy when told.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kktd.config import KktConfig
from kktd.journal import Journal
from kktd.kkt.fd_read import BUSY_WAIT, FdReader
from kktd.kkt.link import IDENTIFY_BUSY_WAIT, KktError, KktLink, busy_delays
from kktd.kkt.poller import Poller
from kktd.kkt.transport import LinkDown
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from tests.support.clock import FakeClock

SCHEDULE = [0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.2, 0.2]


class Bench:
    def __init__(self, emulator: PtyEmulator, journal: Journal) -> None:
        self.device = emulator.device
        self.sleeps = FakeClock()
        self.link = KktLink(
            str(emulator.path),
            115200,
            control_timeout=0.2,
            monotonic=self.sleeps,
            sleep=self.sleeps.sleep,
        )
        self.reader = FdReader(self.link, sleep=self.sleeps.sleep)  # the poller's requests
        self.poller = Poller(
            self.link,
            journal,
            KktConfig(port=str(emulator.path), start_fd="first"),
            on_journaled=lambda: None,
            monotonic=self.sleeps,
            sleep=self.sleeps.sleep,
        )


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    async with PtyEmulator(KktDevice(archive=2), link=tmp_path / "kkt0") as emulator:
        journal = await Journal.open(tmp_path / "kktd.db")
        made = Bench(emulator, journal)
        try:
            yield made
        finally:
            await made.link.close()
            await journal.close()


def test_the_busy_pauses_are_none_then_10_ms_doubling_to_200_ms_up_to_the_budget() -> None:
    delays = list(busy_delays(BUSY_WAIT))
    assert delays[: len(SCHEDULE)] == pytest.approx(SCHEDULE)
    assert max(delays) == pytest.approx(0.2)
    assert math.fsum(delays) == pytest.approx(BUSY_WAIT)  # the same total wait as 50 x 200 ms


async def test_a_busy_answer_is_asked_again_at_once_then_after_10_ms_doubling(
    bench: Bench,
) -> None:
    await bench.link.connect()
    bench.device.busy(len(SCHEDULE))
    assert await bench.poller.poll() == 2  # the busy FF01 went through in the end
    assert bench.sleeps.slept == pytest.approx(SCHEDULE)


async def test_identifying_a_printing_kkt_follows_the_same_schedule(bench: Bench) -> None:
    bench.device.busy(5)
    await bench.link.connect()
    assert bench.sleeps.slept == pytest.approx(SCHEDULE[:5])


async def test_a_kkt_busy_for_good_is_given_up_after_the_bounded_wait(bench: Bench) -> None:
    await bench.link.connect()
    bench.device.busy(10_000)
    with pytest.raises(KktError) as failure:
        await bench.reader.request(0xFF01)
    assert failure.value.busy
    assert math.fsum(bench.sleeps.slept) == pytest.approx(BUSY_WAIT)
    assert len(bench.sleeps.slept) == len(list(busy_delays(BUSY_WAIT)))
    assert bench.device.faults.busy == 10_000 - len(bench.sleeps.slept) - 1


async def test_identifying_a_kkt_busy_for_good_fails_after_its_own_bounded_wait(
    bench: Bench,
) -> None:
    bench.device.busy(10_000)
    with pytest.raises(LinkDown, match="printing"):
        await bench.link.connect()
    assert math.fsum(bench.sleeps.slept) == pytest.approx(IDENTIFY_BUSY_WAIT)
