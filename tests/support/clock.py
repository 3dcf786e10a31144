"""The suite's one fake clock: time that moves only when the test (or an injected sleep) moves it.

It serves as a monotonic clock (`monotonic=`), a wall clock (`wall=`)
and a sleep (`sleep=clock.sleep`), which records each pause and moves the time by it, so code
that waits out a backoff runs at once and the test reads what it waited.
"""

from __future__ import annotations

import asyncio

T0 = 1_700_000_000.0  # a wall-clock start (2023-11-14), for clocks that stand for time.time()


class FakeClock:
    """`clock()` reads the time; `advance`/`set` move it; `await clock.sleep(s)` moves it by `s`.

    With `step`, every read moves the time on by `step` first (a clock that ticks as it is read).
    """

    def __init__(self, now: float = 1000.0, *, step: float = 0.0) -> None:
        self.now = now
        self.step = step
        self.slept: list[float] = []  # every pause taken through `sleep`, in order

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now

    async def sleep(self, seconds: float) -> None:
        """An injected `asyncio.sleep`: no real wait, but one turn of the loop for the others."""
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
