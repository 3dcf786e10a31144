"""A minimal collector for B2, in a process of its own: no kktd code, only aiohttp and json.

It stands in for the upstream the way a real one sits on another host: its work does not share
the sender's interpreter, so a sender is measured by what it costs itself, not by how it shares
one GIL with the server. Per SPEC section 4 it takes `POST /v1/receipts`, parses the JSON body,
answers 201 to a new Idempotency-Key and 409 to one it has, and 400 to a body that is not JSON.
`GET /_count` gives the accepted and duplicate counts; `POST /_reset` forgets everything.

    python -m benchmarks.collector        # prints "port <n>" once it listens on 127.0.0.1
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket

from aiohttp import web

PATH = "/v1/receipts"


class Collector:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.duplicates = 0

    async def receive(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        try:
            document = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "body is not JSON", "key": key}, status=400)
        if f"{document.get('fn')}-{document.get('fd')}" != key:
            return web.json_response(
                {"error": "key does not name the body", "key": key}, status=400
            )
        if key in self.keys:
            self.duplicates += 1
            return web.json_response({"status": "duplicate"}, status=409)
        self.keys.add(key)
        return web.json_response({"status": "accepted"}, status=201)

    async def count(self, _: web.Request) -> web.Response:
        return web.json_response({"accepted": len(self.keys), "duplicates": self.duplicates})

    async def reset(self, _: web.Request) -> web.Response:
        self.keys.clear()
        self.duplicates = 0
        return web.json_response({"accepted": 0, "duplicates": 0})


async def serve() -> None:
    collector = Collector()
    app = web.Application()
    app.router.add_post(PATH, collector.receive)
    app.router.add_get("/_count", collector.count)
    app.router.add_post("/_reset", collector.reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))  # bound here: the port is known at once
    await web.SockSite(runner, sock).start()
    print(f"port {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
