"""The local API (aiohttp on loopback or a unix socket). kktd owns the signals: an AppRunner.

Every error leaves as JSON ``{"error", "detail"}``. A request from a web browser (a foreign
`Host`, an `Origin`) is refused before anything else (`kktd.control.api.access`); POSTs and reads of
receipts want the API token when `api.token_file` is set (read live from the daemon's config,
so a SIGHUP can rotate it).
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from kktd.control.api import routes
from kktd.control.api.access import needs_token, refusal
from kktd.control.api.common import (
    METRICS_KEY,
    REFUSED_KEY,
    RUNTIME_KEY,
    ParameterError,
    error,
)
from kktd.control.api.metrics import Metrics
from kktd.journal import JournalError

if TYPE_CHECKING:
    from kktd.config import ApiConfig
    from kktd.control.runtime import Runtime

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o660  # the daemon's user and group (an operator group) may talk to it
REFUSALS_LOGGED = 100  # distinct refusals logged; a page retrying in a loop must not flood the log

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def browser_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for a request a web page made (SPEC section 6): it never reaches a handler."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    why = refusal(request.headers, sockname)
    if why is None:
        return await handler(request)
    seen = request.app[REFUSED_KEY]
    if why not in seen and len(seen) < REFUSALS_LOGGED:
        seen.add(why)
        log.warning("api.refused", reason=why, path=request.path)
    return error(403, "forbidden", f"{why}: kktd's API is for this till's own tools only")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad parameters, a journal that cannot answer (503), and aiohttp's own errors (404 for an
    unknown path, 405 …), as JSON."""
    try:
        return await handler(request)
    except ParameterError as exc:
        return error(400, "bad_parameter", str(exc))
    except JournalError as exc:  # full, damaged, being reopened, busy: say which, and why
        return error(503, "journal_unavailable", str(exc), cause=exc.kind)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = exc.reason.lower().replace(" ", "_")
        return error(exc.status, name, f"{request.method} {request.path}: {exc.reason}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """POSTs and receipt reads need ``Authorization: Bearer <api token>`` when one is configured."""
    token = request.app[RUNTIME_KEY].config.api.token
    if token is not None and needs_token(request.method, _route(request)):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        expected = token.reveal().encode("utf-8")
        # compare_digest: the time taken must not tell how much of a guess was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), expected
        ):
            log.warning("api.unauthorized", path=request.path, remote=request.remote)
            return error(
                401, "unauthorized", "this request needs 'Authorization: Bearer <api token>'"
            )
    return await handler(request)


def _route(request: web.Request) -> str:
    """The path as the route was declared: no spelling of a URL slips past `needs_token`."""
    resource = request.match_info.route.resource
    return request.path if resource is None else resource.canonical


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[browser_middleware, error_middleware, auth_middleware])
    app[RUNTIME_KEY] = runtime
    app[REFUSED_KEY] = set()
    app[METRICS_KEY] = Metrics(runtime)
    app.add_routes(routes.table)
    return app


def _remove_stale(path: Path) -> None:
    """A socket file left by a killed daemon would make the bind fail; a live one is another
    process's API, which must not be taken over."""
    if path.is_socket():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                pass
            else:
                raise OSError(f"another process answers on the API socket {path}")
    path.unlink(missing_ok=True)


def _restrict(path: Path) -> None:
    path.chmod(SOCKET_MODE)


class ApiServer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._runner: web.AppRunner | None = None

    async def start(self, cfg: ApiConfig) -> None:
        runner = web.AppRunner(
            create_app(self.runtime), handle_signals=False, access_log=None, shutdown_timeout=5.0
        )
        await runner.setup()
        site: web.BaseSite
        try:
            if cfg.listen.startswith("unix:"):
                path = Path(cfg.listen.removeprefix("unix:"))
                _remove_stale(path)
                site = web.UnixSite(runner, str(path))
                await site.start()
                _restrict(path)
            else:
                host, _, port = cfg.listen.rpartition(":")
                site = web.TCPSite(runner, host.strip("[]"), int(port))
                await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("api.listening", listen=cfg.listen, token=cfg.token is not None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
