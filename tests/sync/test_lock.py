"""The fenced sync lock (SPEC section 3) on a private redis-server that tests kill and pause."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError

from kktd.config import OnUnavailable, Secret
from kktd.sync.lock import (
    Lease,
    LeaseLost,
    LocalSyncLock,
    LockBusy,
    LockUnavailable,
)
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from tests.support.redis_server import RedisServer

KEY = "kktd:sync:{fn}"
FN = "9999078900005488"
LOCK_KEY = f"kktd:sync:{FN}"

MakeLock = Callable[..., RedisSyncLock]


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[list[redis.asyncio.Redis]]:
    """Every client a test opens, closed at the end so no socket is left to the GC."""
    opened: list[redis.asyncio.Redis] = []
    yield opened
    for client in opened:
        await client.aclose()


@pytest.fixture
def make_lock(redis_server: RedisServer, clients: list[redis.asyncio.Redis]) -> MakeLock:
    """A lock of its own instance id with its own connection pool, as another kktd would have."""

    def make(
        instance: str,
        *,
        ttl: float = 30.0,
        on_unavailable: OnUnavailable = "proceed",
        **kwargs: Any,
    ) -> RedisSyncLock:
        client = redis_from_url(redis_server.url, None, ttl=ttl)
        clients.append(client)
        return RedisSyncLock(client, KEY, ttl, on_unavailable, instance, **kwargs)

    return make


@pytest.fixture
def raw(redis_server: RedisServer, clients: list[redis.asyncio.Redis]) -> redis.asyncio.Redis:
    """A plain client to look at and tamper with the keys behind the lock's back."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    clients.append(client)
    return client


async def hold_until_cancelled(
    lock: RedisSyncLock,
    first: Callable[[], Awaitable[object]],
    cancelled_at: list[float] | None = None,
) -> None:
    """Hold the lock, do `first`, then wait for the lock to cancel the body (noting when)."""
    async with lock.hold(FN):
        await first()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if cancelled_at is not None:
                cancelled_at.append(time.monotonic())
            raise
    pytest.fail("the body outlived its lease")


async def get_text(client: redis.asyncio.Redis, key: str) -> str:
    value = await client.get(key)
    assert isinstance(value, str)
    return value


async def test_acquisitions_get_increasing_fences(make_lock: MakeLock) -> None:
    lock = make_lock("a")
    fences: list[int] = []
    for _ in range(5):
        async with lock.hold(FN) as lease:
            assert lease.key == LOCK_KEY
            assert lease.instance == "a"
            assert lease.fence is not None
            fences.append(lease.fence)
    assert fences == sorted(set(fences))
    assert lock.last_fence == fences[-1]


async def test_each_acquisition_has_a_fresh_token(make_lock: MakeLock) -> None:
    lock = make_lock("a")
    tokens = set()
    for _ in range(3):
        async with lock.hold(FN) as lease:
            tokens.add(lease.token)
    assert len(tokens) == 3


async def test_second_holder_is_told_busy_with_the_first_instance_id(make_lock: MakeLock) -> None:
    first, second = make_lock("till-1"), make_lock("till-2")
    async with first.hold(FN):
        with pytest.raises(LockBusy) as busy:
            async with second.hold(FN):
                pytest.fail("two holders at once")
    assert busy.value.holder == "till-1"
    assert second.holder_seen == "till-1"
    async with second.hold(FN) as lease:
        assert lease.instance == "till-2"


async def test_one_instance_cannot_hold_one_fn_twice(make_lock: MakeLock) -> None:
    lock = make_lock("a")
    async with lock.hold(FN):
        with pytest.raises(LockBusy) as busy:
            async with lock.hold(FN):
                pytest.fail("two holders at once")
    assert busy.value.holder == "a"


async def test_release_deletes_only_our_own_token(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a")
    async with lock.hold(FN) as lease:
        assert json.loads(await get_text(raw, LOCK_KEY)) == {"instance": "a", "token": lease.token}
        # Our lease expired and another instance took the key: our exit must not free it.
        await raw.set(LOCK_KEY, "someone-else")
    assert await raw.get(LOCK_KEY) == "someone-else"
    async with lock.hold("other-fn"):
        pass
    assert await raw.exists("kktd:sync:other-fn") == 0


async def test_renewal_keeps_the_lease_past_its_ttl(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a", ttl=1.0)
    async with lock.hold(FN) as lease:
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            assert lock.lease_alive(lease)
            await asyncio.sleep(0.1)
        assert await raw.pttl(LOCK_KEY) > 0
        assert lease.token in await get_text(raw, LOCK_KEY)
    assert not lock.lease_alive(lease)
    assert await raw.exists(LOCK_KEY) == 0


async def test_refused_renewal_cancels_the_body(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a", ttl=1.0)
    with pytest.raises(LeaseLost, match="renewal_refused"):
        await hold_until_cancelled(lock, lambda: raw.set(LOCK_KEY, "someone-else"))
    assert await raw.get(LOCK_KEY) == "someone-else"


async def test_deadline_cancels_the_body_with_no_renewal_and_no_redis_call(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    # Renewals far apart: only the loop timer can end this lease.
    lock = make_lock("a", ttl=1.0, margin=0.5, renew_interval=60.0)
    started = time.monotonic()
    with pytest.raises(LeaseLost, match="deadline_passed"):
        async with lock.hold(FN) as lease:
            await asyncio.sleep(30)
    assert time.monotonic() - started < 1.0
    assert not lock.lease_alive(lease)


async def test_a_deadline_found_passed_ends_the_lease_before_its_timer_runs(
    make_lock: MakeLock,
) -> None:
    # After a pause of the whole process the deadline timer is queued behind whatever asks
    # first; the asking must end the lease by itself.
    now = [100.0]
    lock = make_lock("a", ttl=30.0, margin=5.0, monotonic=lambda: now[0])
    leases: list[Lease] = []

    async def round_() -> None:
        async with lock.hold(FN) as lease:
            leases.append(lease)
            now[0] += 24.9
            assert lock.lease_alive(lease)
            now[0] += 0.1  # the timer, on the loop's own clock, is still 25 s away
            assert not lock.lease_alive(lease)
            await asyncio.sleep(30)
        pytest.fail("the body outlived its lease")

    with pytest.raises(LeaseLost, match="deadline_passed"):
        await round_()
    assert not lock.lease_alive(leases[0])


async def test_paused_redis_cancels_the_body_before_the_lease_ends(
    make_lock: MakeLock, redis_server: RedisServer
) -> None:
    ttl = 1.0
    lock = make_lock("a", ttl=ttl)
    cancelled_at: list[float] = []

    async def pause() -> None:
        redis_server.pause()

    started = time.monotonic()
    with pytest.raises(LeaseLost):
        await hold_until_cancelled(lock, pause, cancelled_at)
    assert len(cancelled_at) == 1
    assert cancelled_at[0] < started + ttl
    # Keep Redis hung past the ttl, then check the lease really ended there: another can take it.
    while time.monotonic() < started + ttl + 0.2:
        await asyncio.sleep(0.05)
    redis_server.resume()
    async with make_lock("b").hold(FN) as lease:
        assert lease.fence is not None


async def test_killed_redis_mid_hold_raises_lease_lost(
    make_lock: MakeLock, redis_server: RedisServer
) -> None:
    lock = make_lock("a", ttl=1.0)

    async def kill() -> None:
        redis_server.kill()

    with pytest.raises(LeaseLost, match="renewal_failed"):
        await hold_until_cancelled(lock, kill)


async def test_killed_and_restarted_redis_per_on_unavailable_then_fences_go_on(
    make_lock: MakeLock, redis_server: RedisServer
) -> None:
    proceed = make_lock("a", ttl=1.0, on_unavailable="proceed")
    skip = make_lock("b", ttl=1.0, on_unavailable="skip")
    async with proceed.hold(FN) as before:
        assert before.fence is not None

    redis_server.kill()
    async with proceed.hold(FN) as fallback:
        assert fallback.fence is None
        assert proceed.lease_alive(fallback)
        with pytest.raises(LockBusy):
            async with proceed.hold(FN):
                pytest.fail("the in-process fallback let two holders in")
    assert not proceed.lease_alive(fallback)
    assert proceed.unavailable_total == 1
    with pytest.raises(LockUnavailable):
        async with skip.hold(FN):
            pytest.fail("skip must not run the body")
    assert skip.unavailable_total == 1

    redis_server.start()  # no persistence: the fence counter is gone
    async with skip.hold(FN) as after_restart:
        assert after_restart.fence is not None
        assert after_restart.fence > before.fence
    async with make_lock("c").hold(FN) as newcomer:
        assert newcomer.fence is not None
        assert newcomer.fence > after_restart.fence
    async with proceed.hold(FN) as back:
        assert back.fence is not None
        assert back.fence > newcomer.fence


async def test_fence_floor_keeps_an_instance_ahead_of_a_reset_counter(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a")
    async with lock.hold(FN) as first:
        assert first.fence is not None
    await raw.set(f"{LOCK_KEY}:fence", 5)  # a counter that went backwards behind our back
    async with lock.hold(FN) as second:
        assert second.fence == first.fence + 1


async def test_outer_cancellation_propagates_and_releases(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a", ttl=1.0)
    inside = asyncio.Event()

    async def round_() -> None:
        async with lock.hold(FN):
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(round_())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await raw.exists(LOCK_KEY) == 0


async def test_outer_cancellation_during_a_lost_lease_still_propagates(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a", ttl=1.0)
    lost = asyncio.Event()

    async def round_() -> None:
        async with lock.hold(FN):
            await raw.set(LOCK_KEY, "someone-else")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                lost.set()
                await asyncio.sleep(30)  # slow cleanup, interrupted by the shutdown below
                raise

    task = asyncio.create_task(round_())
    await lost.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_lease_lost_leaves_the_task_uncancelled(
    make_lock: MakeLock, raw: redis.asyncio.Redis
) -> None:
    lock = make_lock("a", ttl=1.0)
    with pytest.raises(LeaseLost):
        await hold_until_cancelled(lock, lambda: raw.set(LOCK_KEY, "someone-else"))
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # the task goes on awaiting normally


@pytest.mark.parametrize("holders", [2, 3])
async def test_concurrent_holders_never_overlap(make_lock: MakeLock, holders: int) -> None:
    spans: list[tuple[float, float, int, str]] = []
    busy_told: list[tuple[str, str | None]] = []

    async def sync_rounds(lock: RedisSyncLock, rounds: int) -> None:
        done = 0
        while done < rounds:
            try:
                async with lock.hold(FN) as lease:
                    assert lease.fence is not None
                    start = time.monotonic()
                    await asyncio.sleep(0.01)
                    spans.append((start, time.monotonic(), lease.fence, lease.instance))
                    done += 1
            except LockBusy as busy:
                busy_told.append((lock.instance_id, busy.holder))
                await asyncio.sleep(0.003)

    locks = [make_lock(f"till-{n}", ttl=2.0) for n in range(holders)]
    await asyncio.gather(*(sync_rounds(lock, 8) for lock in locks))
    spans.sort()
    assert len(spans) == 8 * holders
    assert len({instance for *_, instance in spans}) == holders
    for (_, end, fence, _), (next_start, _, next_fence, _) in itertools.pairwise(spans):
        assert end <= next_start
        assert fence < next_fence
    instances = {lock.instance_id for lock in locks}
    assert all(holder in instances and holder != asker for asker, holder in busy_told)


async def test_local_lock_is_in_process_and_fenceless() -> None:
    lock = LocalSyncLock("till-1")
    async with lock.hold(FN) as lease:
        assert lease.fence is None
        assert lock.lease_alive(lease)
        assert lock.holder_seen == "till-1"
        with pytest.raises(LockBusy):
            async with lock.hold(FN):
                pytest.fail("two holders at once")
        async with lock.hold("another-fn") as other:
            assert other.token != lease.token
    assert not lock.lease_alive(lease)
    assert lock.holder_seen is None


async def test_redis_from_url_sends_the_password_from_the_secret(
    redis_server: RedisServer, raw: redis.asyncio.Redis, clients: list[redis.asyncio.Redis]
) -> None:
    await raw.config_set("requirepass", "s3cret")
    with_password = redis_from_url(redis_server.url, Secret("s3cret"))
    without = redis_from_url(redis_server.url, None)
    clients += [with_password, without]
    assert await with_password.ping()
    with pytest.raises((AuthenticationError, ResponseError)):
        await without.ping()
    await with_password.config_set("requirepass", "")


def test_redis_from_url_knows_tls_and_unix_sockets() -> None:
    tls = redis_from_url("rediss://redis.example:6380/0", None)
    unix = redis_from_url("unix:///run/redis/redis.sock?db=2", Secret("pw"), ttl=12.0)
    assert tls.connection_pool.connection_class is SSLConnection
    assert unix.connection_pool.connection_class is UnixDomainSocketConnection
    assert unix.connection_pool.connection_kwargs["path"] == "/run/redis/redis.sock"
    assert unix.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    assert unix.connection_pool.connection_kwargs["password"] == "pw"
    with pytest.raises(ValueError, match="redis://"):
        redis_from_url("http://redis.example", None)
