"""Endpoints of the local API (SPEC section 6). Errors are JSON ``{"error", "detail"}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from kktd.api.server import DAEMON_KEY
from kktd.status import snapshot

table = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        return web.json_response({"error": exc.reason, "detail": exc.text or ""}, status=exc.status)


@table.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    components = daemon.components
    assert components is not None
    kkt = components.poller.status()
    sync = components.engine.status()
    parts = {
        "journal": "ok",
        "kkt": "ok" if kkt.connected else "offline",
        "upstream": "ok" if sync.breaker_state == "closed" else str(sync.breaker_state),
        "supervisor": "ok" if not daemon.supervisor.stale() else "stale",
    }
    status = "ok" if all(v == "ok" for v in parts.values()) else "degraded"
    return web.json_response({"status": status, "components": parts})


@table.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    return web.json_response(await snapshot(request.app[DAEMON_KEY]))
