"""The mock upstream's aiohttp server: the receipt endpoint, the control endpoints, down and up.

`go_down` closes the listener and every open connection, so a client truly sees "connection
refused"; `come_back` listens again on the same port. Requests left hanging by the `hang_rate`
fault, and delayed ones, are let go (their connections aborted) when the mock goes down or stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from kktd.testbed.mock_upstream.state import (
    RECEIPTS_PATH,
    Answer,
    Faults,
    Incoming,
    MockState,
    fn_of_key,
    parse_fence,
)

log = structlog.get_logger(__name__)

# Handlers are let go before shutdown; this only bounds a handler that ignores that.
_SHUTDOWN_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """A delivery request whose headers have arrived (its body may still be on its way)."""

    fn: str
    instance: str | None
    fence: int | None


class MockUpstream:
    """An upstream receipt collector for tests, benchmarks and the demo.

    `on_arrival`, when set, is called as each delivery's headers arrive, before its body is
    read: the chaos harness times requests against its own pauses of kktd with it.
    """

    def __init__(
        self,
        *,
        rng: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.state = MockState(rng=rng, wall=wall)
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._released = asyncio.Event()
        self._outage: asyncio.Task[None] | None = None
        self.on_arrival: Callable[[Arrival], None] | None = None

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}{RECEIPTS_PATH}"

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    def set_faults(self, **changes: Any) -> None:
        """In-process fault switches, the same names as `POST /_mock/faults`."""
        self.state.faults.update(changes)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = a free port, kept for `come_back`)."""
        self._host = host
        self._port = port
        await self._listen()
        log.info("mock_upstream.listening", url=self.url)

    async def stop(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage
            self._outage = None
        await self._close()

    async def go_down(self) -> None:
        """Stop listening and drop every connection: clients now see connection refused."""
        await self._close()
        log.info("mock_upstream.down", port=self._port)

    async def come_back(self) -> None:
        """Listen again on the same port."""
        if self._runner is None:
            await self._listen()
            log.info("mock_upstream.up", url=self.url)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post(RECEIPTS_PATH, self._receive)
        app.router.add_post("/_mock/faults", self._set_faults)
        app.router.add_get("/_mock/stats", self._stats)
        app.router.add_post("/_mock/reset", self._reset)
        app.router.add_post("/_mock/down", self._down)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self._port == 0:
            # aiohttp exposes the bound port only on the private asyncio server
            server = site._server
            assert isinstance(server, asyncio.Server)
            self._port = int(server.sockets[0].getsockname()[1])
        self._released = asyncio.Event()
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        self._released.set()
        if runner is not None:
            await runner.cleanup()

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        fn = fn_of_key(request.headers.get("Idempotency-Key"))
        instance = request.headers.get("X-Kktd-Instance")
        if self.on_arrival is not None:
            self.on_arrival(Arrival(fn, instance, parse_fence(request.headers.get("X-Kktd-Fence"))))
        self.state.enter(fn, instance)
        try:
            return await self._answer(request)
        finally:
            self.state.leave(fn, instance)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        incoming = Incoming(
            body=await request.read(),
            idempotency_key=request.headers.get("Idempotency-Key"),
            fence=parse_fence(request.headers.get("X-Kktd-Fence")),
            instance=request.headers.get("X-Kktd-Instance"),
            host=request.host,
        )
        answer = self.state.decide(incoming)
        released = self._released
        if answer.action == "hang":
            await released.wait()
            return _abort(request)
        if answer.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), answer.delay)
            if released.is_set():
                return _abort(request)
        if answer.action == "reset":
            return _abort(request)
        return _respond(answer)

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.state.faults.update(await request.json())
        except ValueError as exc:  # bad JSON or a FaultError
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.state.faults.to_json())

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.state.stats())

    async def _reset(self, _: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response(self.state.stats())

    async def _down(self, request: web.Request) -> web.Response:
        """Go down for `seconds` (JSON), then come back: "down entirely" over HTTP."""
        try:
            seconds = float((await request.json())["seconds"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"seconds": <number>}'}, status=400)
        if self._outage is not None and not self._outage.done():
            return web.json_response({"error": "already going down"}, status=409)
        self._outage = asyncio.create_task(self._outage_for(seconds))
        return web.json_response({"down_for": seconds}, status=202)

    async def _outage_for(self, seconds: float) -> None:
        await asyncio.sleep(0.05)  # let the 202 reach the caller before its connection drops
        await self.go_down()
        await asyncio.sleep(seconds)
        await self.come_back()


def _respond(answer: Answer) -> web.Response:
    assert answer.status is not None
    if answer.page is not None:
        return web.Response(
            status=answer.status, text=answer.page, content_type="text/html", headers=answer.headers
        )
    return web.Response(
        status=answer.status,
        text=json.dumps(answer.body, ensure_ascii=False),
        content_type="application/json",
        headers=answer.headers,
    )


def _abort(request: web.Request) -> web.Response:
    """Reset the connection (RST, no answer); the response returned goes nowhere."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)
