"""What a failed Redis call means for the sync lock: three classes, each with its own answer.

- unreachable (refused, reset, DNS, a timeout): Redis may be fine but we cannot tell;
  `lock.on_unavailable` decides whether the round runs without the lock.
- misconfigured (a wrong password, an ACL without the rights, a read-only replica, Redis out of
  memory, scripts refused even after reloading them, any other refusal): Redis answered and said
  no. Retrying cannot help and proceeding would mean two tills may sync one FN while an operator
  believes they are locked, so the round never runs; one loud line says what to do.
- transient (loading its data after a restart, busy with a script, a failover in progress): Redis
  will answer soon; the call is retried a few times within the acquisition.

`TroubleLog` keeps the current trouble and logs once per change (a line when it starts, one when
it ends with how many rounds it cost).

Only the classifiers know redis-py's exception classes, and they import them when called: a
failed Redis call means the Redis client is loaded already, and `LockProblem` (which status
shows) must not load it for a `kktd run` without Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import structlog

# what to do when Redis cannot be reached (`lock.on_unavailable`; the config takes it from here)
OnUnavailable = Literal["proceed", "skip"]


log = structlog.get_logger(__name__)

Trouble = Literal["unreachable", "misconfigured", "transient"]
ProblemKind = Literal["auth", "permission", "read_only", "out_of_memory", "scripts", "refused"]

# Error replies that mean "ask again in a moment" although redis-py has no class for them.
_BUSY_PREFIXES = ("BUSY ", "LOADING ", "TRYAGAIN ", "MASTERDOWN ")

_NEXT_STEP: dict[ProblemKind, str] = {
    "auth": "Redis refused kktd's password: put the password Redis expects (requirepass or the"
    " ACL user's) in lock.password_file and restart kktd, or fix Redis's password",
    "permission": "the Redis ACL user may not run what the lock needs (EVAL/EVALSHA, SCRIPT LOAD,"
    " GET, SET, INCR, PEXPIRE, DEL on the lock keys): grant it in Redis's ACL",
    "read_only": "lock.redis_url points at a read-only replica: point it at the primary and"
    " restart kktd",
    "out_of_memory": "Redis is out of memory (maxmemory) and refuses writes: free memory or raise"
    " maxmemory on the Redis host",
    "scripts": "Redis refuses or keeps forgetting kktd's Lua scripts even after reloading them:"
    " allow EVAL/EVALSHA and SCRIPT LOAD, and stop whatever flushes the script cache",
    "refused": "Redis refused the lock script: check that lock.key names keys nothing else uses"
    " and that scripting is allowed, then see the error",
}


def classify(exc: BaseException) -> Trouble:
    """The class of a failed call (order matters: some refusals are ConnectionError subclasses)."""
    from redis.exceptions import (  # noqa: PLC0415 - see the module's docstring
        BusyLoadingError,
        ClusterDownError,
        ResponseError,
        TryAgainError,
    )

    if isinstance(exc, BusyLoadingError | TryAgainError | ClusterDownError):
        return "transient"
    if isinstance(exc, ResponseError) and str(exc).startswith(_BUSY_PREFIXES):
        return "transient"
    if _kind(exc) is not None:
        return "misconfigured"
    return "unreachable"


def _kind(exc: BaseException) -> ProblemKind | None:
    from redis.exceptions import (  # noqa: PLC0415 - see the module's docstring
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        AuthorizationError,
        NoPermissionError,
        NoScriptError,
        OutOfMemoryError,
        ReadOnlyError,
        ResponseError,
    )

    kind: ProblemKind | None = None
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        kind = "auth"
    elif isinstance(exc, AuthorizationError | NoPermissionError):
        kind = "permission"
    elif isinstance(exc, ReadOnlyError):
        kind = "read_only"
    elif isinstance(exc, OutOfMemoryError):
        kind = "out_of_memory"
    elif isinstance(exc, NoScriptError):
        kind = "scripts"  # redis-py reloads a missing script once; this is after that
    elif isinstance(exc, ResponseError):
        kind = "refused"  # WRONGTYPE, an unknown (renamed) command, a script error ...
    return kind


@dataclass(frozen=True, slots=True)
class LockProblem:
    """Redis answered and refused the lock; no round runs until an acquisition works again."""

    kind: ProblemKind
    error: str
    next_step: str
    since: float  # wall clock
    skipped_rounds: int = 1


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class TroubleLog:
    """The lock's current trouble with Redis, logged once per change."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.problem: LockProblem | None = None
        self.unavailable_total = 0
        self._unreachable_rounds = 0
        self._unreachable_since: float | None = None

    def unreachable(self, key: str, exc: BaseException, on_unavailable: OnUnavailable) -> None:
        """A round found Redis unreachable (or still busy after the retries)."""
        self.unavailable_total += 1
        self._unreachable_rounds += 1
        if self._unreachable_since is not None:
            return
        self._unreachable_since = self.wall()
        log.warning(
            "lock.unavailable",
            key=key,
            error=describe(exc),
            on_unavailable=on_unavailable,
            action="rounds run without the lock until Redis answers"
            if on_unavailable == "proceed"
            else "rounds are skipped until Redis answers",
        )

    def misconfigured(self, key: str, exc: BaseException) -> LockProblem:
        """Redis refused the lock: a loud line when this problem starts, a count after that."""
        kind = _kind(exc) or "refused"
        if self.problem is not None and self.problem.kind == kind:
            return self.skipped() or self.problem
        self.problem = LockProblem(kind, describe(exc), _NEXT_STEP[kind], self.wall())
        log.error(
            "lock.misconfigured",
            key=key,
            problem=kind,
            error=self.problem.error,
            action=self.problem.next_step,
            effect="no sync round runs without the lock; kktd tries again every round",
        )
        return self.problem

    def skipped(self) -> LockProblem | None:
        """One more round skipped for the known problem (None when there is none)."""
        if self.problem is not None:
            self.problem = replace(self.problem, skipped_rounds=self.problem.skipped_rounds + 1)
        return self.problem

    def answered(self, key: str) -> None:
        """The lock script ran: whatever was wrong is over."""
        now = self.wall()
        if self._unreachable_since is not None:
            log.info(
                "lock.available",
                key=key,
                rounds=self._unreachable_rounds,
                seconds=round(now - self._unreachable_since, 1),
            )
            self._unreachable_since, self._unreachable_rounds = None, 0
        if self.problem is not None:
            log.warning(
                "lock.misconfiguration_fixed",
                key=key,
                problem=self.problem.kind,
                skipped_rounds=self.problem.skipped_rounds,
                seconds=round(now - self.problem.since, 1),
            )
            self.problem = None
