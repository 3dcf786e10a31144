"""The local API (aiohttp on loopback or a unix socket); kktd owns the signals, so an AppRunner."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from kktd.config import ApiConfig

if TYPE_CHECKING:
    from kktd.daemon import Daemon

log = structlog.get_logger(__name__)

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")


def create_app(daemon: Daemon) -> web.Application:
    from kktd.api import routes  # noqa: PLC0415 - routes import the daemon's modules

    app = web.Application(middlewares=[routes.error_middleware])
    app[DAEMON_KEY] = daemon
    app.add_routes(routes.table)
    return app


class ApiServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._runner: web.AppRunner | None = None

    async def start(self, cfg: ApiConfig) -> None:
        runner = web.AppRunner(create_app(self.daemon), handle_signals=False, access_log=None)
        await runner.setup()
        site: web.BaseSite
        if cfg.listen.startswith("unix:"):
            path = Path(cfg.listen.removeprefix("unix:"))
            # A stale socket from a killed predecessor would make bind fail; it is tiny and local.
            path.unlink(missing_ok=True)  # noqa: ASYNC240
            site = web.UnixSite(runner, str(path))
        else:
            host, _, port = cfg.listen.rpartition(":")
            site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        self._runner = runner
        log.info("api.listening", listen=cfg.listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
