"""Sync rounds against the real mock upstream and a real journal file (SPEC section 3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import pytest

from kktd.config import SyncConfig
from kktd.journal import Journal, JournalEntry, JournalFullError
from kktd.sync.breaker import BreakerState
from kktd.sync.engine import SyncReport
from kktd.sync.lock import Lease, LocalSyncLock
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.clock import T0, FakeClock
from tests.support.redis_server import RedisServer
from tests.support.upstream import (
    FN,
    engine_rig,
    running,
    running_mock,
    store_fds,
)
from tests.support.wait import wait_until


@pytest.fixture
def journal_clock(wall: FakeClock) -> FakeClock:
    """The journal and the engine share one injected wall clock."""
    return wall


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with running_mock() as upstream:
        yield upstream


async def row(journal: Journal, fd: int) -> JournalEntry:
    entry = await journal.get(FN, fd)
    assert entry is not None
    return entry


# -- one test per row of the outcome table: the journal row after one manual round --


async def test_accepted_fd_is_synced(journal: Journal, mock: MockUpstream, wall: FakeClock) -> None:
    await store_fds(journal, [1])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
    entry = await row(journal, 1)
    assert (entry.state, entry.attempts, entry.last_error, entry.synced_at) == (
        "synced",
        0,
        None,
        T0,
    )
    assert (report.status, report.synced, report.failed, report.dead) == ("completed", 1, 0, 0)
    assert set(mock.state.accepted) == {(FN, 1)}
    assert rig.engine.deliveries["accepted"] == 1


async def test_duplicate_fd_is_synced(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1])
    mock.state.accepted[(FN, 1)] = {"fn": FN, "fd": 1}  # delivered before, answer lost
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
    assert (await row(journal, 1)).state == "synced"
    assert report.synced == 1
    assert mock.state.duplicates == 1
    assert rig.engine.deliveries["duplicate"] == 1


async def test_rejected_fd_is_dead_at_once_with_the_upstreams_reason(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2])
    mock.set_faults(reject_fds=[1])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures == 0  # a rejection is the upstream working
    entry = await row(journal, 1)
    assert (entry.state, entry.last_error) == ("dead", "FD 1 rejected: document not acceptable")
    assert (await row(journal, 2)).state == "synced"
    assert (report.synced, report.failed, report.dead) == (1, 0, 1)


async def test_forbidden_is_a_breaker_failure_never_counted_against_the_fd(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1])
    before = await row(journal, 1)
    mock.set_faults(unauthorized=True)
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures == 1
    assert await row(journal, 1) == before  # untouched: pending, no attempt, no error
    assert (before.state, before.attempts, before.last_error) == ("pending", 0, None)
    assert (report.synced, report.failed, report.dead) == (0, 1, 0)


async def test_retry_after_is_a_floor_on_the_next_attempt(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1])
    mock.set_faults(rate_limit_rate=1.0, retry_after=7)
    async with engine_rig(journal, mock.url, wall=wall, backoff=(1.0, 60.0)) as rig:
        await rig.engine.sync_now()
        assert rig.backoff.current_delay == 7.0
    entry = await row(journal, 1)
    assert (entry.attempts, entry.next_attempt_at) == (0, T0 + 7.0)  # nothing accepted: uncounted
    assert entry.last_error == "HTTP 429: slow down"


async def test_unreachable_upstream_is_a_breaker_failure_never_counted_against_the_fd(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1])
    before = await row(journal, 1)
    await mock.go_down()
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures == 1
        assert rig.engine.deliveries["unreachable"] == 1
    assert await row(journal, 1) == before  # untouched: pending, no attempt, no error
    assert (before.state, before.attempts, before.last_error) == ("pending", 0, None)
    assert report.failed == 1


async def test_a_wrong_upstream_path_dead_letters_nothing(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2])
    before = await row(journal, 1)
    wrong = mock.url.rsplit("/", 1)[0] + "/no-such-path"
    async with engine_rig(journal, wrong, wall=wall) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures >= 1
        assert rig.engine.deliveries["misrouted"] >= 1
    assert await row(journal, 1) == before  # pending, no attempt counted
    assert (report.dead, (await journal.counts()).dead) == (0, 0)


async def test_a_retry_after_pause_is_not_cut_short_by_new_fds(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, [1])
    mock.set_faults(rate_limit_rate=1.0, retry_after=30)
    async with engine_rig(journal, mock.url) as rig, running(rig.engine) as beats:
        await wait_until(lambda: rig.engine.deliveries["transient"] == 1)
        mock.set_faults(rate_limit_rate=0.0)
        requests = len(mock.state.requests)
        await store_fds(journal, [2])
        rig.engine.wake()
        seen = len(beats)
        # the paused loop beats once a slice and looks at wakes each time: two beats later it
        # has seen this one, and still sent nothing
        await wait_until(lambda: len(beats) >= seen + 2, timeout=10.0)
        assert len(mock.state.requests) == requests
        assert (rig.engine.status().next_round_in_seconds or 0) > 20


# -- rounds --


async def test_a_round_claims_lowest_first_and_keeps_max_in_flight(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(20, 0, -1))
    mock.set_faults(delay=0.05)
    sync = SyncConfig(interval=60.0, batch_size=8, max_attempts=5)
    async with engine_rig(journal, mock.url, wall=wall, sync=sync, max_in_flight=3) as rig:
        report = await rig.engine.sync_now()
    assert report.synced == 8
    assert sorted(fd for _, fd in mock.state.accepted) == list(range(1, 9))
    assert mock.state.peak_in_flight == 3


async def test_an_open_breaker_stops_the_round_and_nothing_more_reaches_the_upstream(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 21))
    mock.set_faults(unauthorized=True)
    async with engine_rig(journal, mock.url, wall=wall, max_in_flight=1, reset_timeout=60.0) as rig:
        first = await rig.engine.sync_now()
        assert rig.breaker.state is BreakerState.OPEN
        again = await rig.engine.sync_now()
    assert len(mock.state.requests) == 5  # the threshold, then not one more
    assert first.failed == 5
    assert again.status == "circuit_open"
    assert again.retry_in_seconds is not None
    assert 59.0 < again.retry_in_seconds <= 60.0


async def test_a_poison_fd_goes_dead_after_exactly_max_attempts_while_others_are_delivered(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 11))
    mock.set_faults(fail_fds=[3])
    async with engine_rig(journal, mock.url) as rig, running(rig.engine):

        async def poison_dead() -> bool:
            return (await row(journal, 3)).state == "dead"

        last = 10
        while not await poison_dead() and last < 200:
            # the till keeps issuing receipts: FD 3 fails beside accepted ones, and that counts
            last += 1
            await store_fds(journal, [last])
            rig.engine.wake()

            def delivered(fd: int = last) -> bool:
                return (FN, fd) in mock.state.accepted

            await wait_until(delivered, what=f"FD {last}")
    poison = await row(journal, 3)
    assert (poison.attempts, poison.last_error) == (5, "HTTP 500: cannot store FD 3")
    assert sum(1 for r in mock.state.requests if r.fd == 3) >= 5  # a lone retry is not counted
    counts = await journal.counts()
    assert (counts.synced, counts.dead, counts.pending) == (last - 1, 1, 0)
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, last + 1) if fd != 3}


async def test_a_new_fd_wakes_the_idle_loop_long_before_the_interval(
    journal: Journal, mock: MockUpstream
) -> None:
    async with engine_rig(journal, mock.url) as rig, running(rig.engine) as beats:
        await wait_until(lambda: rig.engine.status().next_round_in_seconds is not None)
        assert rig.engine.status().next_round_in_seconds == pytest.approx(60.0, abs=5.0)
        await store_fds(journal, [1])
        rig.engine.wake()
        await wait_until(lambda: (FN, 1) in mock.state.accepted, timeout=10.0)
        assert beats  # the loop beats while it idles


@pytest.mark.slow
async def test_a_backlog_of_5000_drains_without_waiting_the_interval(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 5001))
    sync = SyncConfig(interval=60.0, batch_size=50, max_attempts=5)
    async with engine_rig(journal, mock.url, sync=sync) as rig, running(rig.engine):

        async def drained() -> bool:
            return (await journal.counts()).synced == 5000

        # the interval is 60 s: a loop that waited it between batches would take 100 minutes
        await wait_until(drained, timeout=50.0, what="the backlog to drain")
    full_rounds = [r for r in rig.reports if r.synced == 50]
    assert len(full_rounds) == 100
    assert len(mock.state.accepted) == 5000
    assert mock.state.duplicates == 0


# -- manual sync and status --


async def test_manual_sync_reports_completed_with_counts(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2, 3])
    mock.set_faults(reject_fds=[2], fail_fds=[3])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
        status = rig.engine.status()
    assert report == SyncReport("completed", 1, 1, 1, report.duration_seconds)
    assert report.duration_seconds >= 0
    assert status.last_report == report
    assert status.last_round_at == T0
    assert (status.backoff_failures, status.breaker_state) == (1, BreakerState.CLOSED)


async def test_manual_sync_with_nothing_pending_completes_empty(
    journal: Journal, mock: MockUpstream
) -> None:
    async with engine_rig(journal, mock.url) as rig:
        report = await rig.engine.sync_now()
    assert (report.status, report.synced, report.failed, report.dead) == ("completed", 0, 0, 0)
    assert mock.state.requests == []


async def test_the_last_failure_is_kept_for_the_operator(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1])
    mock.set_faults(fail_fds=[1])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        before = rig.engine.last_failure
        await rig.engine.sync_now()
        failure = rig.engine.last_failure
    assert before is None
    assert failure is not None
    assert (failure.at, failure.fn, failure.fd, failure.delivery.status) == (T0, FN, 1, 500)


async def test_idle_waits_for_the_round_in_flight_and_holds_off_the_next(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 5))
    mock.set_faults(delay=0.2)
    async with engine_rig(journal, mock.url) as rig, running(rig.engine):
        await wait_until(lambda: mock.state.in_flight > 0, what="a round to be sending")
        async with rig.engine.idle():
            # the round finished whole: every delivery answered and recorded
            assert mock.state.in_flight == 0
            assert (await journal.counts()).synced == 4
            await store_fds(journal, [5])
            rig.engine.wake()
            requests = len(mock.state.requests)
            await asyncio.sleep(0.1)  # a loop not held off would send FD 5 within this
            assert len(mock.state.requests) == requests
        await wait_until(lambda: (FN, 5) in mock.state.accepted, what="FD 5 once let go")


async def test_manual_sync_reports_busy_with_the_holder_when_another_instance_syncs(
    journal: Journal, mock: MockUpstream, redis_server: RedisServer
) -> None:
    await store_fds(journal, [1])
    client = redis_from_url(redis_server.url, None, ttl=5.0)
    ours = RedisSyncLock(client, "kktd:sync:{fn}", 5.0, "proceed", "till-1")
    theirs = RedisSyncLock(client, "kktd:sync:{fn}", 5.0, "proceed", "till-2")
    try:
        async with engine_rig(journal, mock.url, lock=ours) as rig:
            async with theirs.hold(FN):
                report = await rig.engine.sync_now()
                assert rig.engine.status().lock_holder == "till-2"
            after = await rig.engine.sync_now()
    finally:
        await client.aclose()
    assert (report.status, report.holder, report.synced) == ("busy", "till-2", 0)
    assert mock.state.requests[0].fence is not None  # the second one ran under our lease
    assert (after.status, after.synced) == ("completed", 1)


async def test_reconfigure_takes_effect_from_the_next_round(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 11))
    sync = SyncConfig(interval=60.0, batch_size=3, max_attempts=5)
    async with engine_rig(journal, mock.url, wall=wall, sync=sync) as rig:
        first = await rig.engine.sync_now()
        rig.engine.reconfigure(SyncConfig(interval=60.0, batch_size=5, max_attempts=5))
        second = await rig.engine.sync_now()
    assert (first.synced, second.synced) == (3, 5)


class SwallowingLock(LocalSyncLock):
    """A lock whose acquisition eats a cancellation, as a client library can by accident."""

    def __init__(self) -> None:
        super().__init__("till-1")
        self.waiting = asyncio.Event()

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]:
        return self._swallowing(fn)

    @asynccontextmanager
    async def _swallowing(self, fn: str) -> AsyncIterator[Lease]:
        self.waiting.set()
        with suppress(asyncio.CancelledError):  # the accident
            await asyncio.Event().wait()  # never set: only a cancellation gets past
        async with super().hold(fn) as lease:
            yield lease


async def test_a_stop_request_swallowed_inside_a_round_still_ends_the_loop(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, [1])
    lock = SwallowingLock()
    async with engine_rig(journal, mock.url, lock=lock) as rig:
        task = asyncio.create_task(rig.engine.run(lambda: None))
        await asyncio.wait_for(lock.waiting.wait(), 10)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
    assert done, "the sync loop lost the stop request"
    assert task.cancelled()


async def test_a_journal_that_cannot_be_written_pauses_the_loop_instead_of_ending_it(
    journal: Journal, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_fds(journal, [1, 2])
    failures = 0
    real = journal.mark_synced_many

    async def full_once(keys: list[tuple[str, int]], now: float) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise JournalFullError("database or disk is full")
        await real(keys, now)

    monkeypatch.setattr(journal, "mark_synced_many", full_once)
    async with (
        engine_rig(journal, mock.url, sync=SyncConfig(interval=0.05)) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: failures == 1)
        report = rig.engine.status().last_report
        assert report is not None
        assert report.status == "skipped"

        async def both_synced() -> bool:
            return (await journal.counts()).synced == 2

        await wait_until(both_synced)
    # sent again after the failed write: the upstream's Idempotency-Key answered 409
    assert mock.state.duplicates >= 1
