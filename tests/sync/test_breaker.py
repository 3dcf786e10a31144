"""The circuit breaker of SPEC section 3, driven by a hand-moved clock."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from kktd.sync.breaker import BreakerState, CircuitBreaker
from tests.support.clock import FakeClock


@pytest.fixture
def changes() -> list[tuple[BreakerState, BreakerState]]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, changes: list[tuple[BreakerState, BreakerState]]) -> CircuitBreaker:
    return CircuitBreaker(
        5, 60.0, monotonic=clock, on_change=lambda old, new: changes.append((old, new))
    )


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        assert breaker.try_acquire()
        breaker.record_failure()


def test_opens_after_exactly_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    for n in range(1, 5):
        breaker.record_failure()
        assert breaker.state is BreakerState.CLOSED
        assert breaker.consecutive_failures == n
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 60.0


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    for _ in range(4):
        breaker.record_failure()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_open_refuses_every_call_and_counts_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_it(breaker)
    clock.now += 59.9
    assert not any(breaker.try_acquire() for _ in range(10))
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == 5
    assert breaker.retry_in() == pytest.approx(0.1)


def test_turns_half_open_after_reset_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    clock.now += 60.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.retry_in() == 0.0


async def test_hundred_racing_callers_in_half_open_get_exactly_one_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_it(breaker)
    clock.now += 61.0
    start = asyncio.Event()

    async def caller() -> bool:
        await start.wait()
        return breaker.try_acquire()

    tasks = [asyncio.create_task(caller()) for _ in range(100)]
    await asyncio.sleep(0)
    start.set()
    granted = await asyncio.gather(*tasks)
    assert granted.count(True) == 1
    assert breaker.state is BreakerState.HALF_OPEN


def test_probe_success_closes(
    breaker: CircuitBreaker, clock: FakeClock, changes: list[tuple[BreakerState, BreakerState]]
) -> None:
    open_it(breaker)
    clock.now += 60.0
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.try_acquire()
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_probe_failure_reopens_for_another_reset_timeout(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_it(breaker)
    clock.now += 60.0
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 60.0
    clock.now += 59.0
    assert not breaker.try_acquire()
    clock.now += 1.0
    assert breaker.try_acquire()


def test_release_frees_the_probe_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_it(breaker)
    clock.now += 60.0
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()


def test_verdicts_from_non_probes_in_half_open_change_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    open_it(breaker)
    clock.now += 60.0
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_reconfigure_changes_threshold_and_probe_time(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    breaker.reconfigure(2, 10.0)
    breaker.record_failure()
    breaker.record_failure()
    states = [breaker.state]
    clock.now += 10.0
    states.append(breaker.state)
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_each_transition_is_logged_with_failures_and_retry_in(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    with capture_logs() as logs:
        open_it(breaker)
        clock.now += 60.0
        assert breaker.try_acquire()
        breaker.record_success()
    events = [(e["event"], e["failures"], e["retry_in"]) for e in logs]
    assert events == [
        ("breaker.opened", 5, 60.0),
        ("breaker.half_open", 5, 0.0),
        ("breaker.closed", 0, 0.0),
    ]
