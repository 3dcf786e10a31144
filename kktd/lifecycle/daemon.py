"""The daemon's lifecycle (the uvicorn shape): run -> startup -> main loop -> shutdown.

Startup opens the journal, builds the components, starts the local API and installs the signal
handlers, then says READY=1 (a missing KKT is a degraded state, not a failed start). The main loop
supervises the components, the watchdog and the STATUS= line until SIGTERM/SIGINT. Shutdown runs in
a fixed order with bounded waits; a second signal forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path

import structlog

from kktd.config import Config, ConfigError, load_config, merge_for_reload
from kktd.control.api.server import ApiServer
from kktd.control.fn_health import FnHealthLog
from kktd.control.runtime import ReloadResult, Runtime
from kktd.control.status import read, status_line
from kktd.lifecycle.components import DEADLINES, DEFAULT_DEADLINE, Components, StartupError
from kktd.lifecycle.log import configure_logging
from kktd.lifecycle.supervisor import Supervisor, watchdog
from kktd.lifecycle.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)

STOP_POLLER_WITHIN = 10.0  # an FD read in progress is allowed to finish
STOP_SYNC_WITHIN = 15.0  # in-flight deliveries are allowed to finish
STATUS_EVERY = 1.0
FORCED_EXIT = 1
START_FAILED = 1


__all__ = ["Daemon", "ReloadResult"]


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        instance: str,
        notifier: Notifier,
        environ: Mapping[str, str],
    ) -> None:
        self.config_path = config_path
        self._config = config
        self.instance = instance
        self.notifier = notifier
        self.environ = environ
        self.started_at = time.time()
        self.supervisor = Supervisor()
        # what the control surface sees, once the components exist (`attach`)
        self._runtime: Runtime | None = None
        self.api: ApiServer | None = None
        self.fn_health_log = FnHealthLog()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_status = ""

    @property
    def config(self) -> Config:
        """The config in force: the one started with, or the last one a reload applied."""
        return self._config if self._runtime is None else self.runtime.config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        if self._runtime is not None:
            self.runtime.config = config

    @property
    def components(self) -> Components | None:
        return None if self._runtime is None else self.runtime.components

    @property
    def last_reload(self) -> ReloadResult | None:
        return None if self._runtime is None else self.runtime.last_reload

    @last_reload.setter
    def last_reload(self, result: ReloadResult | None) -> None:
        self.runtime.last_reload = result

    @property
    def reloads(self) -> dict[str, int]:
        return {"ok": 0, "failed": 0} if self._runtime is None else self.runtime.reloads

    def attach(self, components: Components) -> Runtime:
        """Hand the built components over: from here on the API can be given the runtime."""
        self._runtime = Runtime(
            instance=self.instance,
            config_path=self.config_path,
            config=self._config,
            supervisor=self.supervisor,
            components=components,
            started_at=self.started_at,
        )
        return self._runtime

    @property
    def runtime(self) -> Runtime:
        """What the control surface sees; exists once `attach` has run (startup, or a test)."""
        if self._runtime is None:
            raise RuntimeError("the daemon has no runtime before its components are attached")
        return self._runtime

    async def run(self) -> int:
        try:
            await self.startup()
        except Exception as exc:
            # Never hang half-started: say why, close what was opened, exit non-zero so
            # systemd sees a failed start (and restarts it later, when the cause may be gone).
            log.error(  # noqa: TRY400 - a traceback only for the unexpected, not for a busy port
                "daemon.start_failed",
                error=str(exc),
                exc_info=not isinstance(exc, StartupError | OSError),
            )
            await self.shutdown()
            return START_FAILED
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        started = time.monotonic()
        components = await Components.build(self.config, self.instance)
        runtime = self.attach(components)
        self.api = ApiServer(runtime)
        await self.api.start(self.config.api)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        for name, runner in components.runners().items():
            deadline = DEADLINES.get(name, DEFAULT_DEADLINE)
            self._spawn(name, self.supervisor.supervise(name, runner, deadline=deadline))
        self._spawn("reloader", self._reloader())
        self._spawn("status", self._status_updater())
        interval = watchdog_interval(self.environ)
        if interval is not None:
            self._spawn("watchdog", watchdog(self.supervisor, self.notifier.watchdog, interval))
        line = await self._status()
        self._notify(self.notifier.ready, line)
        self._last_status = line
        log.info(
            "daemon.ready",
            seconds=round(time.monotonic() - started, 3),
            api=self.config.api.listen,
            journal=str(self.config.journal.path),
            instance=self.instance,
        )

    def _spawn(self, name: str, coro: Coroutine[object, object, None]) -> None:
        self._tasks[name] = asyncio.ensure_future(coro)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("daemon.forced_exit", signal=sig.name)
            os._exit(FORCED_EXIT)
        log.info("daemon.stopping", signal=sig.name)
        self._stopping = True
        self._stop.set()

    async def _reloader(self) -> None:
        """SIGHUPs are coalesced: one reload at a time, the latest file wins."""
        while True:
            await self._reload.wait()
            self._reload.clear()
            try:
                await self.reload()
            except Exception:
                # whatever broke, systemd waits for READY=1 after RELOADING=1, and the next
                # SIGHUP must still be heard
                log.exception("config.reload_crashed")
                self._notify(self.notifier.ready, self._last_status)

    async def reload(self) -> ReloadResult:
        self._notify(self.notifier.reloading)
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as err:
            where = err.key if err.key != "-" else f"{err.file.name}:{err.line or '?'}"
            result = ReloadResult(ok=False, at=time.time(), error=str(err), key=where)
            self._count_reload("failed")
            log.exception(
                "config.reload_failed", error=str(err), action="the old config keeps running"
            )
        else:
            result = self._apply(new)
        self.last_reload = result
        line = await self._status()
        self._last_status = line
        self._notify(self.notifier.ready, line)
        return result

    def _apply(self, new: Config) -> ReloadResult:
        """Swap a loaded config in; if a component refuses it, put the old one back."""
        old = self.config
        merged, kept = merge_for_reload(old, new)
        components = self.runtime.components
        try:
            components.reconfigure(merged)
        except Exception as exc:
            components.reconfigure(old)
            self._count_reload("failed")
            log.exception("config.reload_failed", error=str(exc), action="the old config runs")
            return ReloadResult(ok=False, at=time.time(), error=f"{self.config_path}: {exc}")
        for key in kept:
            log.warning("config.restart_required", key=key)
        self.config = merged
        configure_logging(merged.log.level, merged.log.format)
        self._count_reload("ok")
        log.info("config.reloaded", file=str(self.config_path), restart_required=kept)
        return ReloadResult(ok=True, at=time.time())

    def _count_reload(self, result: str) -> None:
        self.runtime.reloads[result] += 1

    async def _status(self) -> str:
        """The STATUS= line of this moment; the FN's health is logged as it changes."""
        readings = await read(self.runtime.components)
        self.fn_health_log.observe(readings.fn)
        return await status_line(self.runtime, readings)

    async def _status_updater(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            try:
                line = await self._status()
            except Exception:
                log.exception("status.failed")
                continue
            if line != self._last_status:
                self._last_status = line
                self._notify(self.notifier.status, line)

    def _notify(self, send: object, *args: str) -> None:
        try:
            send(*args)  # type: ignore[operator]
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))

    async def shutdown(self) -> None:
        """Fixed order, bounded waits: API, poller, sync, housekeeping, then resources."""
        started = time.monotonic()
        self._notify(self.notifier.stopping, "stopping")
        summary: dict[str, str] = {}
        if self.api is not None:
            await self.api.stop()
            summary["api"] = "stopped"
        components = self.components
        if components is not None:
            summary["poller"] = await self._stop_task(
                "poller", components.link.exclusive(), STOP_POLLER_WITHIN
            )
            summary["sync"] = await self._stop_task(
                "sync", components.engine.idle(), STOP_SYNC_WITHIN
            )
        for name in list(self._tasks):
            summary[name] = await self._stop_task(name, None, 0)
        if components is not None:
            await components.close()
        log.info("daemon.stopped", seconds=round(time.monotonic() - started, 3), **summary)

    async def _stop_task(
        self,
        name: str,
        quiet: contextlib.AbstractAsyncContextManager[object] | None,
        within: float,
    ) -> str:
        """Cancel a task once it is between units of work (``quiet`` held), or after ``within``."""
        task = self._tasks.pop(name, None)
        if task is None:
            return "absent"
        outcome = "stopped"
        if quiet is not None:
            try:
                async with asyncio.timeout(within), quiet:
                    task.cancel()
                    await asyncio.wait([task])
            except TimeoutError:
                outcome = f"cancelled after {within:g}s"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return outcome
