"""Supervision: stale components withhold the watchdog; crashes restart with backoff."""

from __future__ import annotations

import asyncio

import pytest

from kktd.supervisor import Beat, Supervisor, watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_component_that_stops_beating_becomes_stale_after_its_deadline() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock)
    beat_a = sup.register("poller", deadline=10)
    sup.register("sync", deadline=30)
    clock.now += 9
    assert sup.stale() == []
    clock.now += 2
    assert sup.stale() == ["poller"]
    beat_a()
    assert sup.stale() == []
    clock.now += 20
    assert sup.stale() == ["poller", "sync"]


async def test_watchdog_pings_only_while_every_component_is_fresh() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock)
    beat = sup.register("poller", deadline=5)
    pings: list[float] = []
    ticks = 0

    async def tick(_: float) -> None:
        nonlocal ticks
        ticks += 1
        clock.now += 2  # the poller never beats again after the first tick
        if ticks == 6:
            beat()
        if ticks == 8:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await watchdog(sup, lambda: pings.append(clock.now), 2, sleep=tick)
    # pings at 1000, 1002, 1004; stale at 1006-1010; beaten at 1012, so 1012 and 1014 ping
    assert pings == [1000, 1002, 1004, 1012, 1014]


async def test_a_crashing_component_is_restarted_with_growing_delays() -> None:
    sup = Supervisor()
    calls = 0
    delays: list[float] = []
    done = asyncio.Event()

    async def flaky(beat: Beat) -> None:
        nonlocal calls
        calls += 1
        beat()
        if calls < 4:
            raise RuntimeError("boom")
        done.set()
        await asyncio.Event().wait()

    async def record(delay: float) -> None:
        delays.append(delay)

    task = asyncio.create_task(sup.supervise("flaky", flaky, sleep=record))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 4
    assert delays == [1.0, 2.0, 4.0]
    assert sup.restarts("flaky") == 3
