"""The sync lock (SPEC section 3): at most one instance syncs a given FN at a time.

This module holds what every lock shares (the `SyncLock` protocol, `Lease`, the exceptions) and
`LocalSyncLock`, the in-process lock used without Redis. The Redis lease with fencing is
`kktd.sync.redis_lock`, imported only when `lock.redis_url` is set, so a `kktd run` without Redis
never loads the Redis client.

A failed Redis call is one of three things (`redis_trouble`): unreachable (`lock.on_unavailable`
decides), misconfigured (the round never runs without the lock) or transient (retried).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from kktd.config import OnUnavailable
from kktd.sync.redis_trouble import LockProblem


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
    """Everything callers need of a lock, whichever it is: no `isinstance` on a lock anywhere.

    `holder_seen` and `last_fence` (and `problem`, `unavailable_total`) are for status.
    """

    holder_seen: str | None
    last_fence: int | None

    @property
    def problem(self) -> LockProblem | None:
        """What Redis refused, while no round can run because of it (None without Redis)."""
        ...

    @property
    def unavailable_total(self) -> int:
        """Rounds that found Redis unreachable, for `kktd_lock_unavailable_total`."""
        ...

    def hold(self, fn: str) -> AbstractAsyncContextManager[Lease]: ...

    def lease_alive(self, lease: Lease) -> bool: ...

    def shuts_others_out(self, lease: Lease) -> bool:
        """Whether holding `lease` keeps every other instance off its FN (batch after batch may
        follow under it); a Redis-unavailable fallback lease does not."""
        ...

    def reconfigure(self, key_template: str, ttl: float, on_unavailable: OnUnavailable) -> None:
        """New settings (SIGHUP), used from the next acquisition on."""
        ...


class Slots:
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
        self._slots = Slots()

    @property
    def problem(self) -> LockProblem | None:
        return None  # nothing outside this process to be misconfigured

    @property
    def unavailable_total(self) -> int:
        return 0  # nothing outside this process to be unreachable

    def shuts_others_out(self, lease: Lease) -> bool:
        return True  # there are no others: this process is the only one syncing its journal

    def reconfigure(self, key_template: str, ttl: float, on_unavailable: OnUnavailable) -> None:
        """Nothing to change: the key, TTL and fallback are Redis settings."""

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
