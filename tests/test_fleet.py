"""The fleet heartbeat against a real redis-server: TTL'd records, SCAN, outages."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from redis import Redis
from structlog.testing import capture_logs

from kktd.control.fleet import TTL_MS, Heartbeat, heartbeat_key, read_fleet
from kktd.sync.redis_lock import redis_from_url
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until_blocking


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis_from_url(redis_server.url, None, ttl=6.0)
    yield connection
    await connection.aclose()


def record(instance: str, **extra: Any) -> dict[str, Any]:
    return {"instance": instance, "pending": 3, **extra}


def status_of(instance: str) -> Any:
    async def status() -> dict[str, Any]:
        return record(instance)

    return status


async def test_a_beat_writes_the_status_json_with_a_45_s_ttl(
    client: redis.asyncio.Redis,
) -> None:
    assert await Heartbeat(client, "till-1", status_of("till-1")).beat_once()
    key = heartbeat_key("till-1")
    assert key == "kktd:heartbeat:till-1"
    stored = await client.get(key)
    assert stored is not None
    assert json.loads(stored) == record("till-1")
    assert TTL_MS - 5000 < await client.pttl(key) <= TTL_MS


async def test_the_fleet_lists_every_live_instance_in_order_and_skips_garbage(
    client: redis.asyncio.Redis,
) -> None:
    for name in ("till-3", "till-1", "till-2"):
        await Heartbeat(client, name, status_of(name)).beat_once()
    await client.set(heartbeat_key("broken"), b"{not json", px=TTL_MS)
    await client.set("kktd:sync:9999", "someone")  # not a heartbeat
    beats = await read_fleet(client)
    assert [beat["instance"] for beat in beats] == ["till-1", "till-2", "till-3"]


async def test_an_instance_that_stops_beating_drops_off(client: redis.asyncio.Redis) -> None:
    await Heartbeat(client, "gone", status_of("gone"), ttl_ms=100).beat_once()
    assert [b["instance"] for b in await read_fleet(client)] == ["gone"]
    for _ in range(100):  # Redis expires keys lazily and in a 10 Hz sweep
        if await read_fleet(client) == []:
            break
        await asyncio.sleep(0.05)
    assert await read_fleet(client) == []


async def test_the_fleet_of_an_empty_redis_is_empty(client: redis.asyncio.Redis) -> None:
    assert await read_fleet(client) == []


async def test_a_redis_outage_is_logged_once_and_the_beats_resume(
    client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    heartbeat = Heartbeat(client, "till-1", status_of("till-1"))
    redis_server.kill()
    with capture_logs() as logs:
        assert not await heartbeat.beat_once()
        assert not await heartbeat.beat_once()
        redis_server.start()
        assert await heartbeat.beat_once()
    assert [entry["event"] for entry in logs] == [
        "fleet.heartbeat_failed",
        "fleet.heartbeat_resumed",
    ]
    assert await client.exists(heartbeat_key("till-1"))


async def test_the_runner_beats_until_cancelled_then_deletes_its_record(
    client: redis.asyncio.Redis,
) -> None:
    beats = 0

    def beat() -> None:
        nonlocal beats
        beats += 1

    runner = asyncio.create_task(
        Heartbeat(client, "till-1", status_of("till-1"), every=0.05).run(beat)
    )
    try:
        for _ in range(200):
            if beats >= 3 and await client.exists(heartbeat_key("till-1")):
                break
            await asyncio.sleep(0.02)
        assert beats >= 3
        assert await client.exists(heartbeat_key("till-1"))
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert runner.cancelled()
    assert not await client.exists(heartbeat_key("till-1"))  # a stopped till is not live


async def test_a_stop_with_redis_gone_leaves_the_record_to_expire_and_says_so(
    client: redis.asyncio.Redis, redis_server: RedisServer
) -> None:
    heartbeat = Heartbeat(client, "till-1", status_of("till-1"))
    assert await heartbeat.beat_once()
    redis_server.kill()
    with capture_logs() as logs:
        assert not await heartbeat.clear()
    assert [(e["event"], e["expires_in"]) for e in logs] == [("fleet.heartbeat_left", 45)]


def test_a_clean_stop_of_kktd_run_takes_its_heartbeat_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGTERM to a real `kktd run`: `kktd fleet` must not list it as live for 45 s more."""
    config = write_config(tmp_path, extra=f'\n[lock]\nredis_url = "{redis_server.url}"\n')
    daemon = KktdProcess(config, env={"KKTD_INSTANCE_ID": "till-7"})
    reader = Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5)
    try:
        daemon.wait_ready()
        wait_until_blocking(
            lambda: reader.exists(heartbeat_key("till-7")),
            timeout=15,
            what="the heartbeat",
            detail=daemon.log,
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0, daemon.log()
        assert not reader.exists(heartbeat_key("till-7")), daemon.log()
    finally:
        reader.close()
        daemon.close()
