"""Supervision: stale or crash-looping components withhold the watchdog; crashes restart with
backoff."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from kktd.lifecycle.supervisor import (
    HEALTHY_STRETCH,
    Beat,
    Supervisor,
    Wake,
    sleep_beating,
    watchdog,
)
from tests.support.clock import FakeClock


def test_a_component_that_stops_beating_becomes_stale_after_its_deadline() -> None:
    clock = FakeClock()
    sup = Supervisor(monotonic=clock)
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
    sup = Supervisor(monotonic=clock)
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


class Crashing:
    """A component that crashes after running `runs` (clock) seconds, every time."""

    def __init__(self, clock: FakeClock, runs: float = 0.5) -> None:
        self.clock = clock
        self.runs = runs
        self.calls = 0

    async def __call__(self, beat: Beat) -> None:
        self.calls += 1
        beat()
        self.clock.now += self.runs
        raise RuntimeError("database disk image is malformed")


class RestartSleep:
    """The supervisor's restart wait on the fake clock; parks for good after `crashes` waits."""

    def __init__(self, clock: FakeClock, crashes: int) -> None:
        self.clock = clock
        self.crashes = crashes
        self.delays: list[float] = []
        self.parked = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay
        if len(self.delays) == self.crashes:
            self.parked.set()
            await asyncio.Event().wait()


async def _crash(sup: Supervisor, clock: FakeClock, crashes: int, runs: float) -> RestartSleep:
    """Let a component crash `crashes` times; its supervising task is left parked."""
    restart = RestartSleep(clock, crashes)
    task = asyncio.create_task(sup.supervise("poller", Crashing(clock, runs), sleep=restart))
    await asyncio.wait_for(restart.parked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return restart


async def _pings(sup: Supervisor, clock: FakeClock) -> list[float]:
    """What one watchdog tick sends."""
    pings: list[float] = []

    async def one_tick(_: float) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await watchdog(sup, lambda: pings.append(clock.now), 2, sleep=one_tick)
    return pings


async def test_a_component_that_keeps_crashing_withholds_the_watchdog() -> None:
    # Issue 11, item 1: restarted forever and beating after each restart, a component that
    # could never work kept the watchdog fed; five crashes in a row now count as dead.
    clock = FakeClock()
    sup = Supervisor(monotonic=clock)
    await _crash(sup, clock, crashes=5, runs=0.5)
    assert await _pings(sup, clock) == []
    assert sup.restarts("poller") == 5


async def test_four_crashes_are_not_yet_a_loop() -> None:
    clock = FakeClock()
    sup = Supervisor(monotonic=clock)
    await _crash(sup, clock, crashes=4, runs=0.5)
    assert sup.crash_loops() == {}
    assert await _pings(sup, clock) == [clock.now]


async def test_a_crash_loop_names_the_component_and_what_it_died_of() -> None:
    clock = FakeClock()
    sup = Supervisor(monotonic=clock, crash_loop=3)
    with capture_logs() as logs:
        await _crash(sup, clock, crashes=3, runs=0.5)
    assert sup.crash_loops() == {
        "poller": "3 crashes in a row, last: RuntimeError: database disk image is malformed"
    }
    assert sup.dead() == ["poller"]
    assert sup.all_restarts() == {"poller": 3}
    loops = [e for e in logs if e["event"] == "supervisor.crash_loop"]
    assert len(loops) == 1
    assert loops[0]["log_level"] == "error"


async def test_crashes_far_apart_are_no_loop_and_restart_after_the_shortest_wait() -> None:
    clock = FakeClock()
    sup = Supervisor(monotonic=clock)
    restart = await _crash(sup, clock, crashes=8, runs=HEALTHY_STRETCH + 1)
    assert sup.crash_loops() == {}
    assert restart.delays == [1.0] * 8


async def test_a_run_that_lasts_the_healthy_stretch_ends_the_loop() -> None:
    clock = FakeClock()
    sup = Supervisor(monotonic=clock)
    calls = 0
    healthy = asyncio.Event()
    ticking = asyncio.Event()

    async def heals(beat: Beat) -> None:
        nonlocal calls
        calls += 1
        beat()
        if calls <= 5:
            raise RuntimeError("still broken")
        healthy.set()
        while True:  # fine now: beats while the test moves the clock
            await ticking.wait()
            ticking.clear()
            beat()

    async def restart(delay: float) -> None:
        clock.now += delay

    task = asyncio.create_task(sup.supervise("poller", heals, sleep=restart))
    try:
        await asyncio.wait_for(healthy.wait(), 5)
        assert list(sup.crash_loops()) == ["poller"]  # running again, but not for long yet
        clock.now += HEALTHY_STRETCH
        assert sup.crash_loops() == {}
        with capture_logs() as logs:
            ticking.set()  # its next beat says so, once
            async with asyncio.timeout(5):
                while not logs:
                    await asyncio.sleep(0)
        assert [e["event"] for e in logs] == ["supervisor.crash_loop_ended"]
        assert await _pings(sup, clock) == [clock.now]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- sleep_beating: the one "sleep while beating" of every component --


async def test_sleep_beating_beats_at_least_once_a_slice() -> None:
    beats: list[None] = []
    await sleep_beating(0.05, lambda: beats.append(None), slice_seconds=0.01)
    # each slice is at most 0.01 s, so 0.05 s take five slices or more, each after a beat
    assert len(beats) >= 5 + 1


async def test_a_wake_set_before_the_sleep_ends_it_at_once() -> None:
    wake = Wake()
    wake.set()
    beats: list[None] = []
    await asyncio.wait_for(sleep_beating(3600, lambda: beats.append(None), wake=wake), 10)
    assert beats == [None]
    assert wake.is_set()  # the sleeper's owner clears it once it has looked


async def test_a_wake_during_the_sleep_ends_it_early_and_only_an_interruptible_one() -> None:
    wake = Wake()
    first_beat = asyncio.Event()
    deaf = asyncio.create_task(sleep_beating(3600, lambda: None))
    sleeper = asyncio.create_task(sleep_beating(3600, first_beat.set, wake=wake))
    await asyncio.wait_for(first_beat.wait(), 10)
    wake.set()
    await asyncio.wait_for(sleeper, 10)
    assert not deaf.done()
    deaf.cancel()
    with pytest.raises(asyncio.CancelledError):
        await deaf


async def test_a_stop_landing_as_a_slice_ends_is_not_lost() -> None:
    """The 3.11 trap the helper avoids: a cancellation in the same loop iteration as the timer
    that ends a slice must still stop the component's loop."""
    loop = asyncio.get_running_loop()

    async def component() -> None:
        while True:
            await sleep_beating(0.002, lambda: None, slice_seconds=0.002)

    for _ in range(50):
        task = asyncio.create_task(component())
        await asyncio.sleep(0)  # the first slice's timer is armed now
        loop.call_later(0.002, task.cancel)  # lands with the timer, or right next to it
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the stop request was lost"
        assert task.cancelled()


async def test_an_injected_sleep_takes_each_slice_on_its_own_clock() -> None:
    """The poller's fake clock: the whole sleep runs at once, one beat per slice and one after."""
    clock = FakeClock()
    beats: list[float] = []
    await asyncio.wait_for(
        sleep_beating(3.5, lambda: beats.append(clock.now), monotonic=clock, sleep=clock.sleep),
        10,
    )
    assert clock.slept == [1.0, 1.0, 1.0, 0.5]
    assert beats == [1000.0, 1001.0, 1002.0, 1003.0, 1003.5]
