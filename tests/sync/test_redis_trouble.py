"""Redis errors in three classes (issue 12 item 5), against real redis-servers: one that wants a
password, a read-only replica, one out of memory, one busy in a script.

Misconfigured (Redis answered and refused) never runs a round without the lock, whatever
`lock.on_unavailable` says; unreachable follows `on_unavailable`; transient is asked again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis.asyncio
from aiohttp import web
from redis._parsers.base import BaseParser  # how redis-py turns an error reply into a class
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from kktd.config import LockConfig, OnUnavailable, Secret
from kktd.control.api.server import create_app
from kktd.control.status import status_line
from kktd.journal import Journal
from kktd.sync.lock import LockMisconfigured, LockUnavailable
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from kktd.sync.redis_trouble import classify
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import ClientFactory, auth, build_daemon, journal_fds, make_config
from tests.support.redis_server import RedisServer
from tests.support.upstream import FN, engine_rig, running_mock, store_fds

KEY = "kktd:sync:{fn}"
PASSWORD = "right-one"


def serving(directory: Path, *options: str) -> Iterator[RedisServer]:
    server = RedisServer(directory, options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that wants PASSWORD."""
    yield from serving(tmp_path_factory.mktemp("guarded"), "--requirepass", PASSWORD)


@pytest.fixture
def replica(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """A read-only replica of `redis_server` (replica-read-only is Redis's default)."""
    primary = ("127.0.0.1", str(redis_server.port))
    yield from serving(tmp_path_factory.mktemp("replica"), "--replicaof", *primary)


@pytest.fixture
async def clients() -> AsyncIterator[list[redis.asyncio.Redis]]:
    opened: list[redis.asyncio.Redis] = []
    yield opened
    for client in opened:
        await client.aclose()


def lock_on(
    clients: list[redis.asyncio.Redis],
    server: RedisServer,
    password: str | None,
    on_unavailable: OnUnavailable = "proceed",
) -> RedisSyncLock:
    client = redis_from_url(server.url, Secret(password) if password else None, ttl=3.0)
    clients.append(client)
    return RedisSyncLock(client, KEY, 3.0, on_unavailable, "till-1")


def refusals(logs: Sequence[Mapping[str, object]]) -> list[object]:
    return [line["problem"] for line in logs if line["event"] == "lock.misconfigured"]


async def test_a_wrong_password_never_lets_a_round_run_without_the_lock(
    journal: Journal,
    mock: MockUpstream,
    guarded: RedisServer,
    clients: list[redis.asyncio.Redis],
) -> None:
    await store_fds(journal, range(1, 4))
    lock = lock_on(clients, guarded, "a-typo", on_unavailable="proceed")
    with capture_logs() as logs:
        async with engine_rig(journal, mock.url, lock=lock) as rig:
            reports = [await rig.engine.sync_now() for _ in range(3)]
    assert mock.state.requests == []  # "proceed" did not apply: the lock was refused
    assert [report.status for report in reports] == ["skipped"] * 3
    assert (await journal.counts()).pending == 3
    assert refusals(logs) == ["auth"]  # loud once, not once per round
    assert lock.problem is not None
    assert (lock.problem.kind, lock.problem.skipped_rounds) == ("auth", 3)
    assert "lock.password_file" in lock.problem.next_step
    assert rig.engine.status().lock_problem == lock.problem


async def test_no_password_for_a_redis_that_wants_one_is_refused_not_unreachable(
    guarded: RedisServer, clients: list[redis.asyncio.Redis]
) -> None:
    lock = lock_on(clients, guarded, None, on_unavailable="proceed")
    with pytest.raises(LockMisconfigured, match=r"lock\.password_file"):
        async with lock.hold(FN):
            pytest.fail("ran without the lock")
    assert lock.unavailable_total == 0


async def test_the_password_from_lock_password_file_reaches_redis(
    guarded: RedisServer, clients: list[redis.asyncio.Redis]
) -> None:
    lock = lock_on(clients, guarded, PASSWORD)
    async with lock.hold(FN) as lease:
        assert lease.fence is not None
    assert lock.problem is None


async def test_a_read_only_replica_refuses_the_lock(
    replica: RedisServer, clients: list[redis.asyncio.Redis]
) -> None:
    lock = lock_on(clients, replica, None, on_unavailable="proceed")
    with pytest.raises(LockMisconfigured, match="replica"):
        async with lock.hold(FN):
            pytest.fail("ran without the lock")
    assert lock.problem is not None
    assert lock.problem.kind == "read_only"


async def test_redis_out_of_memory_refuses_the_lock_until_memory_is_back(
    redis_server: RedisServer, clients: list[redis.asyncio.Redis]
) -> None:
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    clients.append(raw)
    lock = lock_on(clients, redis_server, None, on_unavailable="proceed")
    await raw.config_set("maxmemory", "1")  # noeviction (the default): every write is refused
    try:
        with capture_logs() as logs:
            with pytest.raises(LockMisconfigured):
                async with lock.hold(FN):
                    pytest.fail("ran without the lock")
            assert (problem := lock.problem) is not None  # not narrowing lock.problem for later
            assert problem.kind == "out_of_memory"
            await raw.config_set("maxmemory", "0")
            async with lock.hold(FN) as lease:
                assert lease.fence is not None
    finally:
        await raw.config_set("maxmemory", "0")
    assert lock.problem is None
    assert [line["event"] for line in logs if line["event"].startswith("lock.misconfig")] == [
        "lock.misconfigured",
        "lock.misconfiguration_fixed",
    ]


async def test_a_known_refusal_is_not_forgotten_when_redis_goes_quiet(
    redis_server: RedisServer, clients: list[redis.asyncio.Redis]
) -> None:
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    clients.append(raw)
    await raw.config_set("requirepass", PASSWORD)
    lock = lock_on(clients, redis_server, "a-typo", on_unavailable="proceed")
    with pytest.raises(LockMisconfigured):
        async with lock.hold(FN):
            pytest.fail("ran without the lock")
    redis_server.kill()
    # unreachable now, but the last word from Redis was "wrong password": still no round
    with pytest.raises(LockMisconfigured):
        async with lock.hold(FN):
            pytest.fail("ran without the lock")
    assert lock.problem is not None
    assert lock.problem.skipped_rounds == 2
    redis_server.start()  # without the password (CONFIG SET does not outlive a restart)
    async with lock.hold(FN) as lease:
        assert lease.fence is not None
    assert lock.problem is None


class BusyRedis:
    """Redis stuck in a Lua script: every other client is answered BUSY after 50 ms."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.control = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.looping = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.seen_busy = 0  # BUSY replies to our own pings

    def command(self, line: bytes) -> bytes:
        self.control.sendall(line + b"\r\n")
        return self.control.recv(256)

    async def start(self) -> None:
        assert self.command(b"CONFIG SET busy-reply-threshold 50").startswith(b"+OK")
        self.looping.sendall(b'EVAL "while true do end" 0\r\n')
        while not self.command(b"PING").startswith(b"-BUSY"):
            await asyncio.sleep(0.01)
        self.seen_busy += 1

    def end(self) -> None:
        self.command(b"SCRIPT KILL")
        self.looping.close()
        self.control.close()

    async def busy_replies(self) -> int:
        """BUSY replies Redis gave others than us (read once the script is killed)."""
        client = redis.asyncio.Redis.from_url(self.server.url, decode_responses=True)
        try:
            stats = await client.info("errorstats")
        finally:
            await client.aclose()
        return int(stats.get("errorstat_BUSY", {}).get("count", 0)) - self.seen_busy


@pytest.fixture
async def busy(redis_server: RedisServer) -> AsyncIterator[BusyRedis]:
    stuck = BusyRedis(redis_server)
    try:
        await stuck.start()
        yield stuck
    finally:
        if stuck.control.fileno() != -1:
            stuck.end()


@pytest.mark.parametrize("on_unavailable", ["skip", "proceed"])
async def test_a_busy_redis_is_asked_again_then_on_unavailable_decides(
    redis_server: RedisServer,
    clients: list[redis.asyncio.Redis],
    busy: BusyRedis,
    on_unavailable: OnUnavailable,
) -> None:
    lock = lock_on(clients, redis_server, None, on_unavailable=on_unavailable)
    if on_unavailable == "skip":
        with pytest.raises(LockUnavailable) as refused:
            async with lock.hold(FN):
                pytest.fail("skip ran the round")
        assert not isinstance(refused.value, LockMisconfigured)
    else:
        async with lock.hold(FN) as lease:
            assert lease.fence is None  # as for an unreachable Redis: the fallback, counted
    busy.end()
    assert await busy.busy_replies() == 3  # the acquisition asked three times
    assert lock.problem is None
    assert lock.unavailable_total == 1


@pytest.mark.parametrize(
    ("error", "trouble"),
    [
        ("WRONGPASS invalid username-password pair or user is disabled.", "misconfigured"),
        ("NOAUTH Authentication required.", "misconfigured"),
        ("NOPERM this user has no permissions to run the 'evalsha' command", "misconfigured"),
        ("READONLY You can't write against a read only replica.", "misconfigured"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "misconfigured"),
        ("NOSCRIPT No matching script. Please use EVAL.", "misconfigured"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", "misconfigured"),
        ("ERR unknown command 'EVALSHA'", "misconfigured"),
        ("LOADING Redis is loading the dataset in memory", "transient"),
        ("BUSY Redis is busy running a script.", "transient"),
        ("MASTERDOWN Link with MASTER is down", "transient"),
    ],
)
def test_each_redis_error_reply_has_its_class(error: str, trouble: str) -> None:
    # redis-py leaves parse_error unannotated
    assert classify(BaseParser.parse_error(error)) == trouble  # type: ignore[no-untyped-call]


def test_network_trouble_is_unreachable() -> None:
    for exc in (RedisConnectionError("refused"), RedisTimeoutError(), TimeoutError(), OSError()):
        assert classify(exc) == "unreachable"


async def test_health_status_and_status_line_show_a_refused_lock(
    tmp_path: Path, guarded: RedisServer, aiohttp_client: ClientFactory
) -> None:
    async with running_mock() as upstream:
        lock = LockConfig(redis_url=guarded.url, password=Secret("a-typo"), ttl=3.0)
        daemon = await build_daemon(make_config(tmp_path, upstream.url, lock=lock))
        assert daemon.components is not None
        try:
            await journal_fds(daemon, 1, 2)
            client = await aiohttp_client(create_app(daemon.runtime))
            sync = await client.post("/v1/kkt/buffer/sync", headers=auth())
            health = await (await client.get("/v1/health")).json()
            status = await (await client.get("/v1/status", headers=auth())).json()
            metrics = await (await client.get("/metrics")).text()
            line = await status_line(daemon.runtime)
        finally:
            await daemon.components.close()
        assert upstream.state.requests == []
    assert sync.status == web.HTTPServiceUnavailable.status_code
    assert health["status"] == "degraded"
    assert health["components"]["lock"] == "refused: auth"
    problem = status["sync"]["lock"]["problem"]
    assert (problem["kind"], problem["skipped_rounds"]) == ("auth", 1)
    assert "lock.password_file" in problem["next_step"]
    assert "Redis REFUSES the sync lock (auth)" in line
    assert "\nkktd_lock_refused 1.0\n" in metrics
