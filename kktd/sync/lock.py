"""The sync lock with fencing (SPEC section 3): at most one instance syncs a given FN at a time.

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

A failed Redis call is one of three things (`redis_trouble`): unreachable (`lock.on_unavailable`
decides), misconfigured (the round never runs without the lock) or transient (retried).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kktd.config import OnUnavailable, Secret
from kktd.sync.lock_scripts import ACQUIRE, RELEASE, RENEW
from kktd.sync.redis_trouble import LockProblem, TroubleLog, classify, describe

log = structlog.get_logger(__name__)

# What a call to an unreachable, hung or broken Redis raises (asyncio.timeout raises TimeoutError).
_REDIS_TROUBLE = (RedisError, OSError, TimeoutError)
# A transient refusal (Redis loading its data, busy in a script) is asked again this many times.
_TRANSIENT_TRIES = 3
_TRANSIENT_PAUSE = 0.05  # seconds, doubled after each try


@dataclass(frozen=True, slots=True)
class Lease:
    """One acquisition. `fence` is None for an in-process lock or the Redis-unavailable fallback."""

    key: str
    token: str
    fence: int | None
    instance: str


class LockBusy(Exception):  # noqa: N818 - a pinned name: the engine and API code against it
    """Another holder has the lock; `holder` is its instance id when known."""

    def __init__(self, holder: str | None, key: str = "") -> None:
        super().__init__(f"sync lock {key} is held by {holder or 'an unknown holder'}")
        self.holder = holder
        self.key = key


class LockUnavailable(Exception):  # noqa: N818 - a pinned name, as LockBusy
    """Redis could not be reached and `lock.on_unavailable` is "skip"."""


class LockMisconfigured(LockUnavailable):
    """Redis answered and refused the lock (password, replica, memory, scripts): never proceed."""

    def __init__(self, problem: LockProblem) -> None:
        super().__init__(f"{problem.error}; {problem.next_step}")
        self.problem = problem


class LeaseLost(Exception):  # noqa: N818 - a pinned name, as LockBusy
    """The lease failed to renew or passed its deadline: the body was cancelled."""


class SyncLock(Protocol):
    """What the sync engine needs of a lock; `holder_seen`, `last_fence`, `problem` for status."""

    holder_seen: str | None
    last_fence: int | None

    @property
    def problem(self) -> LockProblem | None: ...

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]: ...

    def lease_alive(self, lease: Lease) -> bool: ...


class _Slots:
    """In-process exclusion per FN, without waiting: the second taker is told it is busy."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def take(self, fn: str, token: str) -> bool:
        if fn in self._tokens:
            return False
        self._tokens[fn] = token
        return True

    def give_back(self, fn: str, token: str) -> None:
        if self._tokens.get(fn) == token:
            del self._tokens[fn]

    def holds(self, fn: str, token: str) -> bool:
        return self._tokens.get(fn) == token


class LocalSyncLock(SyncLock):
    """In-process lock only (no Redis configured): one holder per FN inside this process."""

    def __init__(self, instance_id: str = "local") -> None:
        self.instance_id = instance_id
        self.holder_seen: str | None = None
        self.last_fence: int | None = None
        self._slots = _Slots()

    @property
    def problem(self) -> LockProblem | None:
        return None  # nothing outside this process to be misconfigured

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]:
        return self._hold(fn)

    @asynccontextmanager
    async def _hold(self, fn: str) -> AsyncIterator[Lease]:
        token = secrets.token_hex(16)
        if not self._slots.take(fn, token):
            raise LockBusy(self.instance_id, fn)
        self.holder_seen = self.instance_id
        try:
            yield Lease(key=fn, token=token, fence=None, instance=self.instance_id)
        finally:
            self._slots.give_back(fn, token)
            self.holder_seen = None

    def lease_alive(self, lease: Lease) -> bool:
        return self._slots.holds(lease.key, lease.token)


class RedisSyncLock(SyncLock):
    """The Redis lease with fencing; one `hold` per round, each with a fresh token."""

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        key_template: str,
        ttl: float,
        on_unavailable: OnUnavailable,
        instance_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float | None = None,
        renew_interval: float | None = None,
        new_token: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.instance_id = instance_id
        self.clock = clock
        self.new_token = new_token
        self.holder_seen: str | None = None
        self.last_fence: int | None = None
        self.trouble = TroubleLog()
        self._margin = margin
        self._renew_interval = renew_interval
        self.reconfigure(key_template, ttl, on_unavailable)
        self.acquire_script = redis.register_script(ACQUIRE)
        self.renew_script = redis.register_script(RENEW)
        self.release_script = redis.register_script(RELEASE)
        self.slots = _Slots()
        self.live: dict[str, _RedisHold] = {}
        self._highest: dict[str, int] = {}

    def reconfigure(self, key_template: str, ttl: float, on_unavailable: OnUnavailable) -> None:
        """New settings (SIGHUP), used from the next acquisition on."""
        self.key_template = key_template
        self.ttl = ttl
        self.on_unavailable: OnUnavailable = on_unavailable
        # The margin covers Redis's and our clocks drifting apart and a late timer callback.
        self.margin = self._margin if self._margin is not None else ttl / 5
        self.renew_interval = self._renew_interval or ttl / 3
        # A renewal that takes longer than this is treated as failed: Redis is hung or gone.
        self.op_timeout = ttl / 6

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]:
        return _RedisHold(self, fn)

    @property
    def problem(self) -> LockProblem | None:
        """What Redis refused, while no round can run because of it."""
        return self.trouble.problem

    @property
    def unavailable_total(self) -> int:
        """Rounds that found Redis unreachable, for `kktd_lock_unavailable_total`."""
        return self.trouble.unavailable_total

    def lease_alive(self, lease: Lease) -> bool:
        """No request is written without this: the lease is held, not lost, inside its deadline.

        Asked right before each request's first byte; a lease found past its deadline here is
        lost at once (the round is cancelled), even if the deadline timer has not run yet.
        """
        hold = self.live.get(lease.token)
        return hold is not None and hold.alive()

    def floor(self, key: str) -> int:
        return self._highest.get(key, 0)

    def saw_fence(self, key: str, fence: int) -> None:
        self._highest[key] = max(fence, self._highest.get(key, 0))
        self.last_fence = fence


class _RedisHold:
    """One acquisition of a `RedisSyncLock`, as an async context manager (entered once)."""

    def __init__(self, owner: RedisSyncLock, fn: str) -> None:
        self.owner = owner
        self.fn = fn
        self.key = owner.key_template.format(fn=fn)
        self.ttl = owner.ttl
        self.token = owner.new_token()
        self.value = json.dumps({"instance": owner.instance_id, "token": self.token})
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
        if self.lease.fence is None or self.owner.clock() < self.deadline:
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
        if not self.owner.slots.take(self.fn, self.token):
            raise LockBusy(self.owner.instance_id, self.key)
        try:
            self.lease = await self._acquire()
        except BaseException:
            self.owner.slots.give_back(self.fn, self.token)
            raise
        self.owner.live[self.token] = self
        self.owner.holder_seen = self.owner.instance_id
        if self.lease.fence is not None:
            self._arm()
            self.renewer = asyncio.create_task(self._renew_forever(), name=f"lock-renew {self.key}")
        return self.lease

    async def _acquire(self) -> Lease:
        owner = self.owner
        try:
            sent, (granted, detail) = await self._call_acquire()
        except _REDIS_TROUBLE as exc:
            if classify(exc) == "misconfigured":
                raise LockMisconfigured(owner.trouble.misconfigured(self.key, exc)) from exc
            return self._unavailable(exc)
        owner.trouble.answered(self.key)
        if not granted:
            holder = _holder_of(detail)
            owner.holder_seen = holder
            log.info("lock.busy", key=self.key, holder=holder)
            raise LockBusy(holder, self.key)
        fence = int(detail)
        owner.saw_fence(self.key, fence)
        # Measured before the request: Redis started the TTL later, so this deadline is early.
        self.deadline = sent + self.ttl - owner.margin
        log.debug("lock.acquired", key=self.key, fence=fence, ttl=self.ttl)
        return Lease(key=self.key, token=self.token, fence=fence, instance=owner.instance_id)

    async def _call_acquire(self) -> tuple[float, tuple[int, Any]]:
        """(when it was sent, the script's answer), asking again after a transient refusal."""
        owner = self.owner
        tries = 0
        while True:
            sent = owner.clock()
            try:
                async with asyncio.timeout(owner.op_timeout):
                    answer = await owner.acquire_script(
                        keys=[self.key, f"{self.key}:fence"],
                        args=[self.value, round(self.ttl * 1000), owner.floor(self.key)],
                    )
                return sent, answer
            except _REDIS_TROUBLE as exc:
                tries += 1
                if classify(exc) != "transient" or tries == _TRANSIENT_TRIES:
                    raise
            await asyncio.sleep(_TRANSIENT_PAUSE * 2 ** (tries - 1))

    def _unavailable(self, exc: BaseException) -> Lease:
        owner = self.owner
        if (problem := owner.trouble.skipped()) is not None:
            # The last thing Redis said is that the setup is wrong; that is not fixed by Redis
            # going quiet, so "proceed" does not apply until an acquisition works again.
            raise LockMisconfigured(problem) from exc
        owner.trouble.unreachable(self.key, exc, owner.on_unavailable)
        if owner.on_unavailable == "skip":
            raise LockUnavailable(f"redis unreachable for {self.key}: {describe(exc)}") from exc
        return Lease(key=self.key, token=self.token, fence=None, instance=owner.instance_id)

    async def _renew_forever(self) -> None:
        owner = self.owner
        while True:
            await asyncio.sleep(owner.renew_interval)
            sent = owner.clock()
            try:
                async with asyncio.timeout(owner.op_timeout):
                    renewed = await owner.renew_script(
                        keys=[self.key], args=[self.value, round(self.ttl * 1000)]
                    )
            except _REDIS_TROUBLE as exc:
                self._lose("renewal_failed", error=describe(exc), trouble=classify(exc))
                return
            if not renewed:
                self._lose("renewal_refused")
                return
            self.deadline = sent + self.ttl - owner.margin
            self._arm()

    def _arm(self) -> None:
        """(Re)start the deadline timer; it works whether or not Redis ever answers again."""
        if self.timer is not None:
            self.timer.cancel()
        delay = max(0.0, self.deadline - self.owner.clock())
        self.timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self.timer = None
        if self.owner.clock() >= self.deadline:
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
            self.owner.live.pop(self.token, None)
            self.owner.slots.give_back(self.fn, self.token)
            if self.owner.holder_seen == self.owner.instance_id:
                self.owner.holder_seen = None
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
            async with asyncio.timeout(self.owner.op_timeout):
                deleted = await self.owner.release_script(keys=[self.key], args=[self.value])
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
