"""The suite's one way to wait for a condition: poll it until it holds, fail at a deadline.

`wait_until` is for coroutines (the predicate may be sync or async); `wait_until_blocking` is the
same loop for plain functions and threads. Both return the predicate's first truthy value and
raise `WaitTimeoutError` (an AssertionError, so pytest shows it as a failed check) naming what
was awaited and, when given, `detail()` (a log tail, the last state) read at the moment of
failure. Options: `timeout` (s, 15 by default), `interval` (s between polls, 0.02), `what`,
`detail`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, TypeVar, Unpack, overload

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """The condition did not hold before the deadline."""


class Options(TypedDict, total=False):
    timeout: float
    interval: float
    what: str
    detail: Callable[[], object] | None


class _Deadline:
    def __init__(
        self,
        predicate: Callable[..., object],
        *,
        timeout: float = 15.0,
        interval: float = 0.02,
        what: str = "",
        detail: Callable[[], object] | None = None,
    ) -> None:
        self.timeout = timeout
        self.interval = interval
        self.what = what or getattr(predicate, "__qualname__", repr(predicate))
        self.detail = detail
        self.at = time.monotonic() + timeout

    def passed(self) -> None:
        """Raise WaitTimeoutError once the deadline has passed."""
        if time.monotonic() <= self.at:
            return
        message = f"not true within {self.timeout:g} s: {self.what}"
        if self.detail is not None:
            message += f"\n{self.detail()}"
        raise WaitTimeoutError(message)


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T | None]], **options: Unpack[Options]
) -> T: ...
@overload
async def wait_until(predicate: Callable[[], T | None], **options: Unpack[Options]) -> T: ...
async def wait_until(predicate: Callable[[], Any], **options: Unpack[Options]) -> Any:
    """Poll `predicate` every `interval` s until it returns something truthy; return that."""
    deadline = _Deadline(predicate, **options)
    while True:
        result = predicate()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        deadline.passed()
        await asyncio.sleep(deadline.interval)


def wait_until_blocking(predicate: Callable[[], T | None], **options: Unpack[Options]) -> T:
    """`wait_until` for code that is not on an event loop: the same loop, blocking."""
    deadline = _Deadline(predicate, **options)
    while not (value := predicate()):
        deadline.passed()
        time.sleep(deadline.interval)
    return value
