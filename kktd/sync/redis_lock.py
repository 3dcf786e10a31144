"""The Redis lease with fencing (SPEC section 3), imported only when `lock.redis_url` is set.

A grant is `SET key value NX PX ttl` plus an increment of `<key>:fence` in one Lua script; the
fence goes out as `X-Kktd-Fence` with every request of the round, so the upstream can refuse a
stale holder. While held, a renewal task extends the lease every ttl/3 with a compare-token
script, and a loop timer watches the lease deadline by the monotonic clock. A refused or failed
renewal, or a deadline that passes (Redis hung, loop starved), cancels the task running the body
at once; `async with` then raises `LeaseLost`. Every acquisition gets a fresh token: redis-py's
Lock keeps its token per thread, which lets one task release another's lock, so it is not used.

Fences never go backwards, even across a Redis that lost its data: when the fence counter is new
the script starts it from the Redis clock in milliseconds (which is past any count handed out
before the loss), and each instance also passes the highest fence it has seen for the key as a
floor.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kktd.config import OnUnavailable, Secret
from kktd.sync.lock import (
    Lease,
    LeaseLost,
    LockBusy,
    LockMisconfigured,
    LockUnavailable,
    Slots,
    SyncLock,
)
from kktd.sync.lock_scripts import ACQUIRE, RELEASE, RENEW
from kktd.sync.redis_trouble import LockProblem, TroubleLog, classify, describe

log = structlog.get_logger(__name__)

# What a call to an unreachable, hung or broken Redis raises (asyncio.timeout raises TimeoutError).
_REDIS_TROUBLE = (RedisError, OSError, TimeoutError)
# A transient refusal (Redis loading its data, busy in a script) is asked again this many times.
_TRANSIENT_TRIES = 3
_TRANSIENT_PAUSE = 0.05  # seconds, doubled after each try


@dataclass(frozen=True, slots=True)
class _Settings:
    """One acquisition's settings: a reload (SIGHUP) applies from the next acquisition on."""

    key_template: str
    ttl: float
    on_unavailable: OnUnavailable
    margin: float  # covers Redis's and our clocks drifting apart and a late timer callback
    renew_interval: float
    op_timeout: float  # a call that takes longer is treated as failed: Redis is hung or gone


class _Scripts:
    """The lock's three Lua scripts on one client; each call is bounded by `limit` seconds."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    async def acquire(
        self, key: str, value: str, ttl: float, floor: int, limit: float
    ) -> tuple[int, Any]:
        async with asyncio.timeout(limit):
            granted, detail = await self._acquire(
                keys=[key, f"{key}:fence"], args=[value, round(ttl * 1000), floor]
            )
        return granted, detail

    async def renew(self, key: str, value: str, ttl: float, limit: float) -> bool:
        async with asyncio.timeout(limit):
            return bool(await self._renew(keys=[key], args=[value, round(ttl * 1000)]))

    async def release(self, key: str, value: str, limit: float) -> bool:
        async with asyncio.timeout(limit):
            return bool(await self._release(keys=[key], args=[value]))


class RedisSyncLock(SyncLock):
    """The Redis lease with fencing; one `hold` per round, each with a fresh token."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key_template: str,
        ttl: float,
        on_unavailable: OnUnavailable,
        instance_id: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        margin: float | None = None,
        renew_interval: float | None = None,
        new_token: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.instance_id = instance_id
        self.holder_seen: str | None = None
        self.last_fence: int | None = None
        self._monotonic = monotonic
        self._new_token = new_token
        self._trouble = TroubleLog()
        self._margin = margin
        self._renew_interval = renew_interval
        self._settings = self._settings_for(key_template, ttl, on_unavailable)
        self._scripts = _Scripts(client)
        self._slots = Slots()
        self._live: dict[str, _RedisHold] = {}
        self._highest: dict[str, int] = {}

    def _settings_for(
        self, key_template: str, ttl: float, on_unavailable: OnUnavailable
    ) -> _Settings:
        margin = self._margin if self._margin is not None else ttl / 5
        return _Settings(
            key_template, ttl, on_unavailable, margin, self._renew_interval or ttl / 3, ttl / 6
        )

    def reconfigure(self, key_template: str, ttl: float, on_unavailable: OnUnavailable) -> None:
        """New settings (SIGHUP), used from the next acquisition on."""
        self._settings = self._settings_for(key_template, ttl, on_unavailable)

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]:
        return _RedisHold(self, fn, self._settings, self._new_token())

    @property
    def problem(self) -> LockProblem | None:
        """What Redis refused, while no round can run because of it."""
        return self._trouble.problem

    @property
    def unavailable_total(self) -> int:
        """Rounds that found Redis unreachable, for `kktd_lock_unavailable_total`."""
        return self._trouble.unavailable_total

    def lease_alive(self, lease: Lease) -> bool:
        """No request is written without this: the lease is held, not lost, inside its deadline.

        Asked right before each request's first byte; a lease found past its deadline here is
        lost at once (the round is cancelled), even if the deadline timer has not run yet.
        """
        hold = self._live.get(lease.token)
        return hold is not None and hold.alive()

    def shuts_others_out(self, lease: Lease) -> bool:
        """A fenced lease does; the fallback lease of an unreachable Redis ("proceed") does not."""
        return lease.fence is not None

    # What a hold tells its lock (the lock's bookkeeping stays the lock's own).

    def _take(self, hold: _RedisHold) -> bool:
        return self._slots.take(hold.fn, hold.token)

    def _granted(self, hold: _RedisHold) -> None:
        self._live[hold.token] = hold
        self.holder_seen = self.instance_id

    def _busy(self, holder: str | None) -> None:
        self.holder_seen = holder

    def _floor(self, key: str) -> int:
        return self._highest.get(key, 0)

    def _fenced(self, key: str, fence: int) -> None:
        self._highest[key] = max(fence, self._highest.get(key, 0))
        self.last_fence = fence

    def _give_back(self, hold: _RedisHold) -> None:
        self._slots.give_back(hold.fn, hold.token)

    def _ended(self, hold: _RedisHold) -> None:
        self._live.pop(hold.token, None)
        self._slots.give_back(hold.fn, hold.token)
        if self.holder_seen == self.instance_id:
            self.holder_seen = None


class _RedisHold:
    """One acquisition of a `RedisSyncLock`, as an async context manager (entered once)."""

    def __init__(self, lock: RedisSyncLock, fn: str, settings: _Settings, token: str) -> None:
        self._lock = lock
        self._monotonic = lock._monotonic
        self._scripts = lock._scripts
        self._trouble = lock._trouble
        self._instance = lock.instance_id
        self._settings = settings
        self.fn = fn
        self.token = token
        self.key = settings.key_template.format(fn=fn)
        self.ttl = settings.ttl
        self.value = json.dumps({"instance": self._instance, "token": token})
        self.lease: Lease | None = None
        self.deadline = 0.0
        self.lost: str | None = None
        self.closing = False
        self.cancelled_body = False
        self.task: asyncio.Task[Any] | None = None
        self.renewer: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def alive(self) -> bool:
        if self.lost is not None or self.closing or self.lease is None:
            return False
        if self.lease.fence is None or self._monotonic() < self.deadline:
            return True
        # After a pause (SIGSTOP, a VM paused, swap) the deadline timer is queued behind the
        # very callback asking: end the round here rather than let it send one more request.
        self._lose("deadline_passed")
        return False

    async def __aenter__(self) -> Lease:
        if self.task is not None:
            raise RuntimeError("a lock hold is entered once; call hold() again")
        self.task = asyncio.current_task()
        assert self.task is not None
        if not self._lock._take(self):
            raise LockBusy(self._instance, self.key)
        try:
            self.lease = await self._acquire()
        except BaseException:
            self._lock._give_back(self)
            raise
        self._lock._granted(self)
        if self.lease.fence is not None:
            self._arm()
            self.renewer = asyncio.create_task(self._renew_forever(), name=f"lock-renew {self.key}")
        return self.lease

    async def _acquire(self) -> Lease:
        try:
            sent, (granted, detail) = await self._call_acquire()
        except _REDIS_TROUBLE as exc:
            if classify(exc) == "misconfigured":
                raise LockMisconfigured(self._trouble.misconfigured(self.key, exc)) from exc
            return self._unavailable(exc)
        self._trouble.answered(self.key)
        if not granted:
            holder = _holder_of(detail)
            self._lock._busy(holder)
            log.info("lock.busy", key=self.key, holder=holder)
            raise LockBusy(holder, self.key)
        fence = int(detail)
        self._lock._fenced(self.key, fence)
        # Measured before the request: Redis started the TTL later, so this deadline is early.
        self.deadline = sent + self.ttl - self._settings.margin
        log.debug("lock.acquired", key=self.key, fence=fence, ttl=self.ttl)
        return Lease(key=self.key, token=self.token, fence=fence, instance=self._instance)

    async def _call_acquire(self) -> tuple[float, tuple[int, Any]]:
        """(when it was sent, the script's answer), asking again after a transient refusal."""
        floor = self._lock._floor(self.key)
        tries = 0
        while True:
            sent = self._monotonic()
            try:
                answer = await self._scripts.acquire(
                    self.key, self.value, self.ttl, floor, self._settings.op_timeout
                )
                return sent, answer
            except _REDIS_TROUBLE as exc:
                tries += 1
                if classify(exc) != "transient" or tries == _TRANSIENT_TRIES:
                    raise
            await asyncio.sleep(_TRANSIENT_PAUSE * 2 ** (tries - 1))

    def _unavailable(self, exc: BaseException) -> Lease:
        if (problem := self._trouble.skipped()) is not None:
            # The last thing Redis said is that the setup is wrong; that is not fixed by Redis
            # going quiet, so "proceed" does not apply until an acquisition works again.
            raise LockMisconfigured(problem) from exc
        on_unavailable = self._settings.on_unavailable
        self._trouble.unreachable(self.key, exc, on_unavailable)
        if on_unavailable == "skip":
            raise LockUnavailable(f"redis unreachable for {self.key}: {describe(exc)}") from exc
        return Lease(key=self.key, token=self.token, fence=None, instance=self._instance)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.renew_interval)
            sent = self._monotonic()
            try:
                renewed = await self._scripts.renew(
                    self.key, self.value, self.ttl, self._settings.op_timeout
                )
            except _REDIS_TROUBLE as exc:
                self._lose("renewal_failed", error=describe(exc), trouble=classify(exc))
                return
            if not renewed:
                self._lose("renewal_refused")
                return
            self.deadline = sent + self.ttl - self._settings.margin
            self._arm()

    def _arm(self) -> None:
        """(Re)start the deadline timer; it works whether or not Redis ever answers again."""
        if self.timer is not None:
            self.timer.cancel()
        delay = max(0.0, self.deadline - self._monotonic())
        self.timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self.timer = None
        if self._monotonic() >= self.deadline:
            self._lose("deadline_passed")
        else:
            self._arm()

    def _lose(self, reason: str, **fields: str) -> None:
        if self.lost is not None or self.closing:
            return
        self.lost = reason
        assert self.lease is not None
        log.error("lock.lost", key=self.key, fence=self.lease.fence, reason=reason, **fields)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.renewer is not None and self.renewer is not asyncio.current_task():
            self.renewer.cancel()
        assert self.task is not None
        if not self.task.done():
            self.cancelled_body = True
            self.task.cancel(msg=f"sync lease lost: {reason}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Stop the watch before the first await, so nothing cancels the release below.
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        try:
            await self._stop_renewer()
            if self.lease is not None and self.lease.fence is not None:
                await self._release()
        finally:
            self._lock._ended(self)
        if self.lost is None:
            return
        assert self.task is not None
        if self.cancelled_body and self.task.uncancel() > 0 and exc_type is asyncio.CancelledError:
            return  # someone else cancelled this task too: that cancellation goes on
        if isinstance(exc, asyncio.CancelledError) or exc is None:
            raise LeaseLost(f"sync lease on {self.key} lost: {self.lost}") from None
        raise LeaseLost(f"sync lease on {self.key} lost: {self.lost}") from exc

    async def _stop_renewer(self) -> None:
        renewer = self.renewer
        if renewer is None:
            return
        renewer.cancel()
        await asyncio.wait([renewer])
        if not renewer.cancelled() and (error := renewer.exception()) is not None:
            log.error("lock.renewal_crashed", key=self.key, error=describe(error))

    async def _release(self) -> None:
        try:
            deleted = await self._scripts.release(self.key, self.value, self._settings.op_timeout)
        except _REDIS_TROUBLE as exc:
            log.warning("lock.release_failed", key=self.key, error=describe(exc))
            return
        log.debug("lock.released", key=self.key, was_ours=bool(deleted))


def _holder_of(value: object) -> str | None:
    """The instance id inside a lock value; a value of another format is shown as it is."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict) and isinstance(parsed.get("instance"), str):
        return str(parsed["instance"])
    return value


def redis_from_url(url: str, password: Secret | None, *, ttl: float = 30.0) -> redis.asyncio.Redis:
    """A client for `lock.redis_url` (redis://, rediss:// or unix://) with short timeouts.

    Timeouts are short (connect 2 s, commands ttl/6) so a hung Redis is noticed well before a
    lease ends; one immediate retry covers a pooled connection that a Redis restart broke.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("lock.redis_url must start with redis://, rediss:// or unix://")
    return redis.asyncio.Redis.from_url(
        url,
        password=password.reveal() if password is not None else None,
        socket_connect_timeout=2.0,
        socket_timeout=ttl / 6,
        retry=Retry(NoBackoff(), 1),
    )
