"""Outages: the upstream down through breaker cycles, engines racing for one lock, Redis dying.

Real mock upstream on loopback, real journal files, a real redis-server from the fixture.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio

from kktd.config import OnUnavailable, SyncConfig
from kktd.journal import Journal
from kktd.sync.breaker import BreakerState
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.redis_server import RedisServer
from tests.support.upstream import FN, Rig, engine_rig, running, store_fds
from tests.support.wait import wait_until

TTL = 0.9  # the lock's ttl in these tests: renewals every 0.3 s, Redis calls time out at 0.15 s
FAST = SyncConfig(interval=0.05, batch_size=10, max_attempts=20)


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis_from_url(redis_server.url, None, ttl=TTL)
    try:
        yield client
    finally:
        await client.aclose()


async def all_synced(journal: Journal, total: int) -> bool:
    return (await journal.counts()).synced == total


def fences_only_increase(mock: MockUpstream) -> bool:
    fences = [r.fence for r in mock.state.requests if r.fence is not None]
    return fences == sorted(fences)


async def test_an_outage_through_many_breaker_cycles_dead_letters_nothing(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 121))
    await mock.go_down()
    async with engine_rig(journal, mock.url, sync=FAST) as rig, running(rig.engine):
        await wait_until(lambda: rig.opens() >= 4, what="four breaker cycles")
        counts = await journal.counts()
        assert (counts.pending, counts.dead) == (120, 0)
        await mock.come_back()
        await wait_until(lambda: all_synced(journal, 120), what="the journal to drain")
    counts = await journal.counts()
    assert counts.dead == 0
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, 121)}
    assert mock.state.duplicates == 0
    # nothing reached the upstream twice, and no attempt was counted for the outage
    assert all(n == 1 for n in mock.state.deliveries.values())
    for fd in (1, 60, 120):
        entry = await journal.get(FN, fd)
        assert entry is not None
        assert entry.attempts == 0


async def test_while_the_breaker_is_open_no_request_reaches_the_upstream(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 31))
    mock.set_faults(unauthorized=True)
    sent_when_opened: list[int] = []

    def changed(_: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            sent_when_opened.append(len(mock.state.requests))

    async with (
        engine_rig(
            journal,
            mock.url,
            sync=FAST,
            max_in_flight=1,
            reset_timeout=0.05,
            on_breaker_change=changed,
        ) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: len(sent_when_opened) >= 4, what="four breaker cycles")
    # five failures open it; after that, one probe per cycle and nothing while it is open
    assert sent_when_opened[:4] == [5, 6, 7, 8]
    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.attempts) == ("pending", 0)  # 401 is never counted


def redis_lock(
    client: redis.asyncio.Redis, instance: str, on_unavailable: OnUnavailable = "proceed"
) -> RedisSyncLock:
    return RedisSyncLock(client, "kktd:sync:{fn}", TTL, on_unavailable, instance)


@pytest.mark.parametrize("engines", [2, 3])
async def test_engines_on_one_lock_never_overlap(
    tmp_path: Path, mock: MockUpstream, redis_client: redis.asyncio.Redis, engines: int
) -> None:
    """Instances sharing one journal race for each new receipt; one FN is synced by one at once."""
    total, chunk = 150, 6
    mock.set_faults(delay=0.002)
    async with AsyncExitStack() as stack:
        journals = [
            await stack.enter_async_context(await Journal.open(tmp_path / "shared.db"))
            for _ in range(engines)
        ]
        rigs: list[Rig] = []
        for i, journal in enumerate(journals):
            lock = redis_lock(redis_client, f"till-{i}")
            # slightly different idle intervals, so that who retries first varies
            sync = SyncConfig(interval=0.01 + 0.003 * i, batch_size=10, max_attempts=20)
            rig = await stack.enter_async_context(
                engine_rig(journal, mock.url, lock=lock, sync=sync, instance=f"till-{i}")
            )
            rigs.append(rig)
            await stack.enter_async_context(running(rig.engine))
        for n, first in enumerate(range(1, total + 1, chunk)):
            # receipts keep coming and every instance hears of them, each in turn the first
            await store_fds(journals[0], range(first, min(first + chunk, total + 1)))
            for rig in rigs[n % engines :] + rigs[: n % engines]:
                rig.engine.wake()
            await asyncio.sleep(0.02)  # the pace of the till, not a wait for an event
        await wait_until(lambda: all_synced(journals[0], total), what="the journal to drain")
    assert mock.state.overlaps == 0
    assert mock.state.fence_violations == 0
    assert fences_only_increase(mock)
    owners: dict[int | None, set[str | None]] = {}
    for r in mock.state.requests:
        owners.setdefault(r.fence, set()).add(r.instance)
    assert None not in owners  # every request went out under a lease
    assert all(len(instances) == 1 for instances in owners.values())
    senders = set().union(*owners.values())
    assert len(senders) >= 2, f"no contention to speak of: only {senders} sent"
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, total + 1)}
    assert mock.state.duplicates == 0  # rounds never overlapped, so nothing was sent twice


async def test_redis_killed_mid_round_proceeds_unfenced_then_locks_again(
    journal: Journal,
    mock: MockUpstream,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
) -> None:
    total = 80
    await store_fds(journal, range(1, total + 1))
    mock.set_faults(delay=0.03)
    lock = redis_lock(redis_client, "till-1", "proceed")
    sync = SyncConfig(interval=0.05, batch_size=50, max_attempts=20)
    async with (
        engine_rig(journal, mock.url, lock=lock, sync=sync, max_in_flight=1) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: len(mock.state.requests) >= 5, what="a round under way")
        before = mock.state.highest_fence[FN]
        redis_server.kill()
        await wait_until(
            lambda: any(r.fence is None for r in mock.state.requests),
            what="unfenced sends while Redis is down",
        )
        unfenced_at = len(mock.state.requests)
        redis_server.start()
        await wait_until(
            lambda: any(r.fence is not None for r in mock.state.requests[unfenced_at:]),
            what="fenced sends once Redis is back",
        )
        await wait_until(lambda: all_synced(journal, total), what="the journal to drain")
    fenced_again = [r.fence for r in mock.state.requests[unfenced_at:] if r.fence is not None]
    assert min(fenced_again) > before
    assert lock.unavailable_total >= 1
    assert mock.state.fence_violations == 0
    assert (await journal.counts()).dead == 0
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, total + 1)}


async def test_redis_killed_mid_round_with_skip_sends_nothing_until_it_is_back(
    journal: Journal,
    mock: MockUpstream,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
) -> None:
    total = 80
    await store_fds(journal, range(1, total + 1))
    mock.set_faults(delay=0.03)
    lock = redis_lock(redis_client, "till-1", "skip")
    sync = SyncConfig(interval=0.05, batch_size=50, max_attempts=20)
    async with (
        engine_rig(journal, mock.url, lock=lock, sync=sync, max_in_flight=1) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: len(mock.state.requests) >= 5, what="a round under way")
        redis_server.kill()
        # the round cut short may have written a request the mock has yet to finish reading
        await wait_until(
            lambda: lock.unavailable_total >= 2 and mock.state.in_flight == 0,
            what="rounds skipped, the last request of the lost round answered",
        )
        sent = len(mock.state.requests)
        await wait_until(lambda: lock.unavailable_total >= 4, what="more rounds skipped")
        assert len(mock.state.requests) == sent
        report = rig.engine.status().last_report
        assert report is not None
        assert report.status == "skipped"
        redis_server.start()
        await wait_until(lambda: all_synced(journal, total), what="the journal to drain")
    assert all(r.fence is not None for r in mock.state.requests)
    assert mock.state.fence_violations == 0
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, total + 1)}


async def test_redis_paused_past_the_ttl_stops_the_round_before_the_lease_ends(
    journal: Journal,
    mock: MockUpstream,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
) -> None:
    total = 80
    await store_fds(journal, range(1, total + 1))
    mock.set_faults(delay=0.03)
    lock = redis_lock(redis_client, "till-1", "skip")
    sync = SyncConfig(interval=0.05, batch_size=50, max_attempts=20)
    async with (
        engine_rig(journal, mock.url, lock=lock, sync=sync, max_in_flight=1) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: len(mock.state.requests) >= 5, what="a round under way")
        fence = mock.state.highest_fence[FN]
        paused_at = time.time()  # the mock stamps requests with time.time() too
        redis_server.pause()
        try:
            await wait_until(
                lambda: lock.unavailable_total >= 1 and time.time() > paused_at + TTL,
                what="the round to stop and the ttl to pass",
            )
        finally:
            redis_server.resume()
        await wait_until(lambda: all_synced(journal, total), what="the journal to drain")
    held = [r for r in mock.state.requests if r.fence == fence]
    # the last renewal was before the pause, so the lease in Redis ended by paused_at + TTL
    assert all(r.at < paused_at + TTL for r in held)
    assert len(held) < 50  # the round was cut short, not finished
    later = [r for r in mock.state.requests if r.at >= paused_at + TTL]
    assert later
    assert all(r.fence is not None and r.fence > fence for r in later)
    assert mock.state.fence_violations == 0
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, total + 1)}
