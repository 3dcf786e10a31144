"""The fleet heartbeat (SPEC section 6): each instance keeps a short status record in Redis.

Every 15 s `SET kktd:heartbeat:<instance> <status json> PX 45000`: a record outlives two missed
beats, so an instance that stops beating drops off `kktd fleet` within 45 s by itself. A clean
stop deletes the record at once: a till that was stopped must not be listed as live. The
reader walks the keys with SCAN (never KEYS, which blocks a shared Redis on a big keyspace).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
import structlog
from redis.exceptions import RedisError

from kktd.lifecycle.supervisor import Beat, sleep_beating

log = structlog.get_logger(__name__)

KEY_PREFIX = "kktd:heartbeat:"
EVERY = 15.0
TTL_MS = 45_000
CALL_TIMEOUT = 5.0  # a hung Redis must not hold the runner past a few of its beats
CLEAR_TIMEOUT = 2.0  # a hung Redis must not hold up a stop: the record then expires by itself
SCAN_COUNT = 200

_TROUBLE = (RedisError, OSError, TimeoutError)


def heartbeat_key(instance: str) -> str:
    return KEY_PREFIX + instance


class Heartbeat:
    """The supervised runner that keeps this instance's heartbeat fresh."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        instance: str,
        status: Callable[[], Awaitable[dict[str, Any]]],
        *,
        every: float = EVERY,
        ttl_ms: int = TTL_MS,
    ) -> None:
        self._redis = client
        self._key = heartbeat_key(instance)
        self._status = status
        self._every = every
        self._ttl_ms = ttl_ms
        self._failing = False

    async def beat_once(self) -> bool:
        """Write the record once; False (logged once per outage) when Redis is in trouble."""
        payload = json.dumps(await self._status(), ensure_ascii=False)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._redis.set(self._key, payload, px=self._ttl_ms)
        except _TROUBLE as exc:
            if not self._failing:
                log.warning("fleet.heartbeat_failed", key=self._key, error=_describe(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("fleet.heartbeat_resumed", key=self._key)
        self._failing = False
        return True

    async def clear(self) -> bool:
        """Delete the record; False (logged) when Redis is in trouble: it expires by itself."""
        try:
            async with asyncio.timeout(CLEAR_TIMEOUT):
                await self._redis.delete(self._key)
        except _TROUBLE as exc:
            log.warning(
                "fleet.heartbeat_left",
                key=self._key,
                error=_describe(exc),
                expires_in=round(self._ttl_ms / 1000),
            )
            return False
        return True

    async def run(self, beat: Beat) -> None:
        """Beat until cancelled; being cancelled is the daemon stopping: the record goes too."""
        try:
            while True:
                await self.beat_once()
                await sleep_beating(self._every, beat)
        except asyncio.CancelledError:
            await self.clear()
            raise


async def read_fleet(client: redis.asyncio.Redis) -> list[dict[str, Any]]:
    """Every live instance's record, by instance name. Unreadable records are skipped."""
    keys = [key async for key in client.scan_iter(match=KEY_PREFIX + "*", count=SCAN_COUNT)]
    if not keys:
        return []
    records = []
    for key, value in zip(keys, await client.mget(keys), strict=True):
        if value is None:
            continue  # expired between SCAN and MGET
        try:
            record = json.loads(value)
        except ValueError:
            log.warning("fleet.unreadable_heartbeat", key=str(key))
            continue
        if isinstance(record, dict):
            records.append(record)
    return sorted(records, key=lambda r: str(r.get("instance", "")))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
