"""Supervision of long-running components and the watchdog's notion of progress.

Each component runs as ``run(beat)`` and calls ``beat()`` while it is healthy. The watchdog pings
systemd only while every component has beaten within its deadline, so a wedged loop (or a blocked
event loop, which stops the watchdog task itself) leads systemd to restart us. A component that
crashes is logged and restarted with backoff: an outage outside kktd is never a reason to exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

Beat = Callable[[], None]
Runner = Callable[[Beat], Awaitable[None]]

RESTART_FIRST = 1.0
RESTART_MAX = 30.0


@dataclass(slots=True)
class _Component:
    deadline: float
    last_beat: float
    restarts: int = 0


class Supervisor:
    """Keeps each component's last beat and restarts components that crash."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._components: dict[str, _Component] = {}

    def register(self, name: str, deadline: float) -> Beat:
        """A component that must beat at least every ``deadline`` seconds; returns its beat."""
        component = _Component(deadline=deadline, last_beat=self._clock())
        self._components[name] = component

        def beat() -> None:
            component.last_beat = self._clock()

        return beat

    def stale(self) -> list[str]:
        """Components that have not beaten within their deadline."""
        now = self._clock()
        return [name for name, c in self._components.items() if now - c.last_beat > c.deadline]

    def restarts(self, name: str) -> int:
        return self._components[name].restarts

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
        delay = RESTART_FIRST
        while True:
            try:
                await run(beat)
                log.warning("supervisor.returned", component=name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor.crashed", component=name, restart_in=delay)
            self._components[name].restarts += 1
            await sleep(delay)
            beat()
            delay = min(delay * 2, RESTART_MAX)


async def watchdog(
    supervisor: Supervisor,
    ping: Callable[[], None],
    interval: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Ping every ``interval`` seconds while no component is stale."""
    withheld: tuple[str, ...] = ()
    while True:
        stale = tuple(supervisor.stale())
        if stale:
            if stale != withheld:
                log.error("watchdog.withheld", stale=list(stale))
        else:
            if withheld:
                log.info("watchdog.resumed")
            try:
                ping()
            except OSError as exc:
                log.warning("watchdog.ping_failed", error=str(exc))
        withheld = stale
        await sleep(interval)


async def sliced_sleep(
    seconds: float,
    beat: Beat,
    *,
    slice_seconds: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Sleep while beating: an idle component is a healthy one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        beat()
        await sleep(min(left, slice_seconds))
    beat()
