"""Supervision of long-running components and the watchdog's notion of progress.

Each component runs as ``run(beat)`` and calls ``beat()`` while it is healthy. The watchdog pings
systemd only while every component has beaten within its deadline, so a wedged loop (or a blocked
event loop, which stops the watchdog task itself) leads systemd to restart us. A component that
crashes is logged and restarted with backoff: an outage outside kktd is never a reason to exit.
One that keeps crashing, though, is a crash loop: it stops counting as alive, and the watchdog
then lets systemd restart the whole process (a fresh start runs the start-up checks again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from kktd.sync.backoff import Backoff

log = structlog.get_logger(__name__)

Beat = Callable[[], None]
Runner = Callable[[Beat], Awaitable[None]]

RESTART_FIRST = 1.0
RESTART_MAX = 30.0
CRASH_LOOP = 5  # crashes in a row that make a component count as dead
HEALTHY_STRETCH = 60.0  # seconds a run must last to end a series of crashes


@dataclass(slots=True)
class _Component:
    deadline: float
    last_beat: float
    restarts: int = 0
    crashes: int = 0  # in a row, each run shorter than the healthy stretch
    running_since: float | None = None
    last_error: str | None = None


class Supervisor:
    """Keeps each component's last beat and restarts components that crash.

    A component that crashes `crash_loop` times in a row, no run lasting `healthy_stretch`, is
    in a crash loop: it counts as dead, so the watchdog is withheld and systemd restarts the
    process. It is still restarted meanwhile, and a run that lasts the stretch ends the loop.
    """

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        crash_loop: int = CRASH_LOOP,
        healthy_stretch: float = HEALTHY_STRETCH,
    ) -> None:
        self._monotonic = monotonic
        self._crash_loop = crash_loop
        self._healthy_stretch = healthy_stretch
        self._components: dict[str, _Component] = {}

    def register(self, name: str, deadline: float) -> Beat:
        """A component that must beat at least every ``deadline`` seconds; returns its beat."""
        component = _Component(deadline=deadline, last_beat=self._monotonic())
        self._components[name] = component

        def beat() -> None:
            now = component.last_beat = self._monotonic()
            if component.crashes and self._healthy(component, now):
                if component.crashes >= self._crash_loop:
                    log.info("supervisor.crash_loop_ended", component=name)
                component.crashes = 0

        return beat

    def stale(self) -> list[str]:
        """Components that have not beaten within their deadline."""
        now = self._monotonic()
        return [name for name, c in self._components.items() if now - c.last_beat > c.deadline]

    def crash_loops(self) -> dict[str, str]:
        """Components in a crash loop, each with what it last died of."""
        return {
            name: f"{c.crashes} crashes in a row, last: {c.last_error}"
            for name, c in self._components.items()
            if c.crashes >= self._crash_loop and not self._healthy(c, self._monotonic())
        }

    def dead(self) -> list[str]:
        """Components that do not count as alive: stale, or in a crash loop."""
        return sorted({*self.stale(), *self.crash_loops()})

    def restarts(self, name: str) -> int:
        return self._components[name].restarts

    def all_restarts(self) -> dict[str, int]:
        """Restarts by component since start, for ``kktd_component_restarts_total``."""
        return {name: c.restarts for name, c in self._components.items()}

    def _healthy(self, component: _Component, now: float) -> bool:
        since = component.running_since
        return since is not None and now - since >= self._healthy_stretch

    async def supervise(
        self,
        name: str,
        run: Runner,
        *,
        deadline: float = 120.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Run ``run(beat)`` until cancelled, restarting it with backoff when it fails."""
        beat = self.register(name, deadline)
        component = self._components[name]
        # 1, 2, 4 ... 30 s after crashes in a row; the same restarts for every kktd, no jitter
        backoff = Backoff(RESTART_FIRST, RESTART_MAX, "none")
        while True:
            component.running_since = self._monotonic()
            try:
                await run(beat)
                delay = self._restart_delay(component, backoff)
                log.warning("supervisor.returned", component=name, restart_in=delay)
                error = "returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._restart_delay(component, backoff)
                log.exception("supervisor.crashed", component=name, restart_in=delay)
                error = f"{type(exc).__name__}: {exc}"
            component.running_since = None
            component.restarts += 1
            component.crashes += 1
            component.last_error = error
            if component.crashes == self._crash_loop:
                log.error(
                    "supervisor.crash_loop",
                    component=name,
                    crashes=component.crashes,
                    error=error,
                    action="the watchdog is withheld: systemd restarts kktd",
                )
            await sleep(delay)
            beat()

    def _restart_delay(self, component: _Component, backoff: Backoff) -> float:
        """The wait before the next run; a run that lasted the healthy stretch starts afresh."""
        if self._healthy(component, self._monotonic()):
            component.crashes = 0  # it had been fine for a while
            backoff.record_success()
        return backoff.record_failure()


async def watchdog(
    supervisor: Supervisor,
    ping: Callable[[], None],
    interval: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Ping every ``interval`` seconds while every component is alive (fresh, not looping)."""
    withheld: tuple[str, ...] = ()
    while True:
        dead = tuple(supervisor.dead())
        if dead:
            if dead != withheld:
                log.error("watchdog.withheld", stale=list(dead))
        else:
            if withheld:
                log.info("watchdog.resumed")
            try:
                ping()
            except OSError as exc:
                log.warning("watchdog.ping_failed", error=str(exc))
        withheld = dead
        await sleep(interval)


class Wake:
    """A wake-up call for a loop that sleeps with `sleep_beating`: `set()` ends the sleep under
    way, or the next one, early; the loop `clear()`s it once it has looked."""

    def __init__(self) -> None:
        self._set = False
        self._sleepers: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        self._set = True
        for sleeper in self._sleepers:
            _resolve(sleeper)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


async def sleep_beating(
    seconds: float,
    beat: Beat,
    *,
    wake: Wake | None = None,
    monotonic: Callable[[], float] | None = None,
    slice_seconds: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """Sleep `seconds`, beating at least every `slice_seconds`: an idle component is a healthy
    one. A `wake` that is set (before or during the sleep) ends it early.

    Each slice is a plain future and a timer, so nothing in the task plays with cancellation:
    `asyncio.timeout` cancels and uncancels the task, and on Python 3.11 a stop request that
    lands in the same loop iteration as its expiry can be lost, so the loop never ends.
    A `sleep` given with its `monotonic` (a test's fake clock) takes each slice instead; a wake
    then ends the sleep at the next slice.
    """
    loop = asyncio.get_running_loop()
    now = monotonic or loop.time
    deadline = now() + seconds
    while (left := deadline - now()) > 0:
        beat()
        if wake is not None and wake.is_set():
            return
        if sleep is not None:
            await sleep(min(left, slice_seconds))
            continue
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(min(left, slice_seconds), _resolve, sleeper)
        if wake is not None:
            wake._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            if wake is not None:
                wake._sleepers.discard(sleeper)
    beat()


def _resolve(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
