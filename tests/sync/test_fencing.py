"""Fencing end to end (issue 16): the lease is checked right before each request is written, and a
collector's 412 (fence superseded) ends the round without counting anything.

A process paused between "the engine let a delivery go" and "its bytes are written" is made
deterministic here: the delivery is held at a hook while an injected monotonic clock moves past
the lease's deadline, as it would for a process stopped by SIGSTOP. Real redis-server, real mock
upstream on loopback, real journal file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from structlog.testing import capture_logs

from kktd.config import UpstreamConfig
from kktd.journal import Journal, Outgoing
from kktd.sync.breaker import BreakerState
from kktd.sync.client import Outcome, UpstreamClient, WriteRefused, superseded
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from kktd.testbed.mock_upstream import Arrival, MockUpstream
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer
from tests.support.upstream import FN, engine_rig, make_entry, store_fds

KEY = "kktd:sync:{fn}"
TTL, MARGIN = 30.0, 5.0  # the lease's deadline is 25 s after its grant, by the injected clock
OTHER_FN = "9999078900009999"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis_from_url(redis_server.url, None, ttl=TTL)
    try:
        yield client
    finally:
        await client.aclose()


def fenced_lock(client: redis.asyncio.Redis, clock: FakeClock) -> RedisSyncLock:
    # renewals far apart, so only the clock decides when the lease ends
    return RedisSyncLock(
        client, KEY, TTL, "proceed", "till-1", monotonic=clock, margin=MARGIN, renew_interval=600.0
    )


def arrivals_of(mock: MockUpstream) -> list[Arrival]:
    seen: list[Arrival] = []
    mock.on_arrival = seen.append
    return seen


class HeldClient(UpstreamClient):
    """Holds each delivery after the engine let it go and before it goes out, until released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def deliver(self, entry: Outgoing, fence: int | None, **kwargs: Any) -> Any:
        release = asyncio.Event()
        await self.held.put(release)
        await release.wait()
        return await super().deliver(entry, fence, **kwargs)


class HoldAtTheWrite:
    """aiohttp tracing that holds a request once its connection is up and its headers are
    ready, the last moment aiohttp awaits anything before it writes (the lease check comes
    after it)."""

    def __init__(self) -> None:
        self.held: asyncio.Queue[asyncio.Event] = asyncio.Queue()
        self.tracing = aiohttp.TraceConfig()
        self.tracing.on_request_headers_sent.append(self._hold)

    async def _hold(self, *_: object) -> None:
        release = asyncio.Event()
        await self.held.put(release)
        await release.wait()


async def next_held(queue: asyncio.Queue[asyncio.Event]) -> asyncio.Event:
    return await asyncio.wait_for(queue.get(), 10)


async def assert_untouched(journal: Journal, fds: range) -> None:
    """Pending, never counted, no error: as if the round had never tried them."""
    for fd in fds:
        entry = await journal.get(FN, fd)
        assert entry is not None
        assert (entry.state, entry.attempts, entry.last_error) == ("pending", 0, None)


async def test_a_delivery_held_past_the_lease_deadline_is_never_written(
    journal: Journal, mock: MockUpstream, redis_client: redis.asyncio.Redis
) -> None:
    await store_fds(journal, range(1, 4))
    clock = FakeClock()
    arrivals = arrivals_of(mock)
    lock = fenced_lock(redis_client, clock)
    async with engine_rig(
        journal, mock.url, lock=lock, client_class=HeldClient, max_in_flight=1
    ) as rig:
        assert isinstance(rig.client, HeldClient)
        manual = asyncio.create_task(rig.engine.sync_now())
        release = await next_held(rig.client.held)
        clock.now += TTL - MARGIN  # the process slept through the rest of its lease
        release.set()
        report = await asyncio.wait_for(manual, 10)
    assert (arrivals, mock.state.requests) == ([], [])  # not even the headers went out
    assert report.status == "skipped"  # the lease was lost: the round ended there
    await assert_untouched(journal, range(1, 4))
    assert rig.breaker.state is BreakerState.CLOSED
    assert rig.breaker.consecutive_failures == 0


async def test_the_lease_is_checked_after_the_last_wait_before_the_bytes_go_out(
    journal: Journal, mock: MockUpstream, redis_client: redis.asyncio.Redis
) -> None:
    await store_fds(journal, range(1, 4))
    clock = FakeClock()
    arrivals = arrivals_of(mock)
    hold = HoldAtTheWrite()
    lock = fenced_lock(redis_client, clock)
    async with engine_rig(
        journal,
        mock.url,
        lock=lock,
        max_in_flight=1,
        client_options={"tracing": (hold.tracing,)},
    ) as rig:
        manual = asyncio.create_task(rig.engine.sync_now())
        (await next_held(hold.held)).set()  # FD 1, inside the lease: goes out
        second = await next_held(hold.held)  # FD 2: connected, headers ready
        clock.now += TTL - MARGIN
        second.set()
        report = await asyncio.wait_for(manual, 10)
    assert [(a.fn, a.fence) for a in arrivals] == [(FN, lock.last_fence)]
    assert [(r.fd, r.status) for r in mock.state.requests] == [(1, 201)]
    assert (report.status, report.synced) == ("skipped", 1)
    await assert_untouched(journal, range(2, 4))


# aiohttp 3.12+ sends the headers with the first body chunk; older versions write them first
HEADERS_WAIT_FOR_BODY = tuple(int(n) for n in aiohttp.__version__.split(".")[:2]) >= (3, 12)


@pytest.mark.parametrize(
    "answers",
    [pytest.param([False], id="refused-at-the-headers"), pytest.param([True], id="at-the-body")],
)
async def test_a_refused_write_sends_no_byte_of_the_request(answers: list[bool]) -> None:
    received = bytearray()
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # until the client hangs up
        writer.close()
        closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(
        UpstreamConfig(url=f"http://127.0.0.1:{port}/v1/receipts"), instance_id="t", version="t"
    )
    await client.start()
    asked = iter(answers)
    try:
        with pytest.raises(WriteRefused):
            await client.deliver(make_entry(1), 7, may_write=lambda: next(asked, False))
        await asyncio.wait_for(closed.wait(), 10)  # it connected, then hung up
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert b'"fd": 1' not in received  # the body never left
    if HEADERS_WAIT_FOR_BODY or answers == [False]:
        assert bytes(received) == b""


# -- 412: the fence was superseded --


def superseded_at(mock: MockUpstream, fn: str, fence: int) -> None:
    """The collector has accepted `fence` for `fn` from another instance."""
    mock.state.highest_fence[fn] = fence


async def test_a_412_ends_the_round_at_once_and_counts_nothing(
    journal: Journal, mock: MockUpstream, redis_client: redis.asyncio.Redis
) -> None:
    await store_fds(journal, range(1, 6))
    lock = RedisSyncLock(redis_client, KEY, TTL, "proceed", "till-1")
    theirs = 10**15  # above any fence this Redis hands out (they start near the clock in ms)
    superseded_at(mock, FN, theirs)
    async with engine_rig(journal, mock.url, lock=lock, max_in_flight=1) as rig:
        with capture_logs() as logs:
            report = await rig.engine.sync_now()
    assert [(r.fd, r.status) for r in mock.state.requests] == [(1, 412)]  # nothing more started
    assert (report.status, report.synced, report.failed, report.dead) == ("busy", 0, 0, 0)
    await assert_untouched(journal, range(1, 6))
    assert rig.breaker.state is BreakerState.CLOSED
    assert rig.breaker.consecutive_failures == 0
    assert rig.backoff.failures == 0
    assert rig.engine.deliveries[Outcome.FENCE_SUPERSEDED.value] == 1
    lines = [line for line in logs if line["event"] == "sync.fence_superseded"]
    assert [(line["fence"], line["current_fence"]) for line in lines] == [(lock.last_fence, theirs)]


async def test_a_412_ends_only_that_fns_round(
    journal: Journal, mock: MockUpstream, redis_client: redis.asyncio.Redis
) -> None:
    await store_fds(journal, range(1, 4))
    await store_fds(journal, range(1, 4), fn=OTHER_FN)
    lock = RedisSyncLock(redis_client, KEY, TTL, "proceed", "till-1")
    superseded_at(mock, FN, 10**15)
    async with engine_rig(journal, mock.url, lock=lock, max_in_flight=4) as rig:
        await rig.engine.sync_now()
    assert set(mock.state.accepted) == {(OTHER_FN, fd) for fd in range(1, 4)}
    await assert_untouched(journal, range(1, 4))


async def test_a_412_to_a_half_open_probe_leaves_the_breaker_probing(
    journal: Journal, mock: MockUpstream, redis_client: redis.asyncio.Redis
) -> None:
    await store_fds(journal, range(1, 4))
    lock = RedisSyncLock(redis_client, KEY, TTL, "proceed", "till-1")
    async with engine_rig(
        journal, mock.url, lock=lock, max_in_flight=1, failure_threshold=1, reset_timeout=0.01
    ) as rig:
        rig.breaker.record_failure()  # open
        await asyncio.sleep(0.02)  # past reset_timeout, on the breaker's own clock
        assert rig.breaker.state is BreakerState.HALF_OPEN
        superseded_at(mock, FN, 10**15)
        await rig.engine.sync_now()
        assert rig.breaker.state is BreakerState.HALF_OPEN
        assert rig.breaker.try_acquire()  # the probe slot was given back


@pytest.mark.parametrize(
    ("body", "current"),
    [
        (b'{"error": "superseded", "current_fence": 42}', 42),
        (b'{"current_fence": "42"}', 42),
        (b'{"current_fence": true}', None),
        (b'{"current_fence": -1}', None),
        (b'{"current_fence": "9' + b"9" * 30 + b'"}', None),
        (b"<html>Precondition Failed</html>", None),
    ],
)
async def test_a_412_is_fence_superseded_with_the_collectors_fence_when_it_says_it(
    body: bytes, current: int | None
) -> None:
    delivery = superseded(body)
    assert (delivery.outcome, delivery.status, delivery.current_fence) == (
        Outcome.FENCE_SUPERSEDED,
        412,
        current,
    )


async def test_without_a_gate_a_refused_write_never_connects() -> None:
    """The client the daemon builds without lock.redis_url asks `may_write` once, up front."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(
        UpstreamConfig(url=f"http://127.0.0.1:{port}/v1/receipts"),
        instance_id="t",
        version="t",
        gate_writes=False,
    )
    await client.start()
    try:
        with pytest.raises(WriteRefused):
            await client.deliver(make_entry(1), 7, may_write=lambda: False)
        # and one that may write is sent as usual (it reaches the server)
        delivery = await client.deliver(make_entry(2), 7, may_write=lambda: True)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert connections == 1  # only the second request reached the server
    assert delivery.outcome is Outcome.TRANSIENT  # which hung up without an answer
