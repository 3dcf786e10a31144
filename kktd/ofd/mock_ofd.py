"""A mock OFD: a TCP server that receipts FN messages, with fault switches (SPEC sections 8, 9).

Each connection carries one exchange: the server reads a session header and the body it
announces, and answers with a well-formed session message for the same FN. Faults, for the
next connections or until cleared: `refuse` (the port is closed), `reset` (half an answer, then
a TCP reset), `slow` (the answer after a delay), `garbage` (bytes without a session header),
`silence` (the message is read, nothing is ever answered). Run it alone with
`python -m kktd.ofd.mock_ofd --port 7777`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, Self

import structlog

from kktd.kkt.ofd_protocol import HEADER_SIZE, SessionError, SessionHeader, session_message
from kktd.lifecycle.log import configure_logging
from kktd.testbed.tools import stop_on_signals

log = structlog.get_logger(__name__)

Fault = Literal["refuse", "reset", "slow", "garbage", "silence"]
FAULTS: tuple[Fault, ...] = ("refuse", "reset", "slow", "garbage", "silence")
GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def receipt_for(message: bytes) -> bytes:
    """The default answer: a session message for the sender's FN, its body tied to `message`.

    288 bytes, so writing it back takes more than one FF33 block of 240.
    """
    header = SessionHeader.decode(message)
    return session_message(header.fn, b"\x01" + hashlib.sha256(message).digest() * 8 + b"\x00")


class MockOfd:
    """`async with MockOfd() as ofd:` then connect to `ofd.port` on 127.0.0.1."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        answer: Callable[[bytes], bytes] = receipt_for,
        slow_seconds: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port  # 0: a free port, fixed at the first start and kept across restarts
        self.answer = answer
        self.slow_seconds = slow_seconds
        self.messages: list[bytes] = []  # every whole message received, in order
        self.answers: list[bytes] = []  # every whole answer sent, in order
        self.connections = 0
        self.bad_messages = 0  # connections whose bytes were not a session message
        self._fault: Fault | None = None
        self._times: int | None = None  # connections the fault still applies to (None: all)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.received = asyncio.Event()  # set at each whole message; tests clear it

    @property
    def fault(self) -> Fault | None:
        return self._fault

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mock_ofd.listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        await self._close_listener()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def set_fault(self, fault: Fault | None, *, times: int | None = None) -> None:
        """Apply `fault` to the next `times` connections (None: until cleared); None clears.

        `refuse` closes the listening port until the fault is cleared, so `times` does not
        apply to it.
        """
        if fault == "refuse" and times is not None:
            raise ValueError("refuse lasts until cleared")
        self._fault, self._times = fault, times
        if fault == "refuse":
            await self._close_listener()
        elif self._server is None:
            await self.start()
        log.info("mock_ofd.fault", fault=fault, times=times)

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _take_fault(self) -> Fault | None:
        fault = self._fault
        if fault is not None and self._times is not None:
            self._times -= 1
            if self._times <= 0:
                self._fault, self._times = None, None
        return fault

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            message = await _read_message(reader)
            if message is None:
                self.bad_messages += 1
                return
            self.messages.append(message)
            self.received.set()
            await self._answer(message, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the relay gave up on us: its business
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _answer(
        self, message: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        fault = self._take_fault()
        answer = self.answer(message)
        if fault == "silence":
            await reader.read()  # until the relay hangs up
            return
        if fault == "garbage":
            writer.write(GARBAGE)
            await writer.drain()
            return
        if fault == "reset":
            writer.write(answer[: len(answer) // 2])
            await writer.drain()
            _reset(writer)
            return
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        writer.write(answer)
        await writer.drain()
        self.answers.append(answer)


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readexactly(HEADER_SIZE)
    try:
        header = SessionHeader.decode(head)
    except SessionError:
        return None
    return head + await reader.readexactly(header.body_length)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN: linger on, timeout zero."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kktd.ofd.mock_ofd",
        description="A mock OFD for kktd's relay mode: receipts every FN message it gets.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=7777, help="TCP port (default 7777)")
    parser.add_argument("--fault", choices=FAULTS, help="misbehave on every connection")
    parser.add_argument("--slow", type=float, default=2.0, help="seconds of the slow fault")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    ofd = MockOfd(args.host, args.port, slow_seconds=args.slow)
    await ofd.start()
    if args.fault:
        await ofd.set_fault(args.fault)
    print(f"mock OFD on {args.host}:{ofd.port}", flush=True)
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await ofd.stop()
        print(f"mock OFD: {len(ofd.messages)} messages, {len(ofd.answers)} answers", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
