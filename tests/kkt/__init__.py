"""Helpers for the KKT link tests: a scripted device on the master side of a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from pathlib import Path

from kktd.kkt.commands import DeviceType, Request, decode_request, encode_response
from kktd.kkt.frames import ACK, ENQ, NAK, ControlByte, Frame, FrameParser, encode_frame

Handler = Callable[[Request], bytes]  # a request -> the answer's frame body

DEVICE = DeviceType(0, 0, 1, 0, 19, 0, "ШТРИХ-М-01Ф")


def answer_with(data: dict[int, bytes]) -> Handler:
    """Answer each command with fixed data (FC answers a device type by default)."""

    def handle(request: Request) -> bytes:
        if request.cmd == 0xFC and 0xFC not in data:
            return encode_response(0xFC, 0, DEVICE.encode())
        return encode_response(request.cmd, 0, data.get(request.cmd, b""))

    return handle


class Peer:
    """A tiny device on a pty: NAK to ENQ when idle, ACK and answer to frames, resend on ENQ.

    Tests script it with a handler and a few switches; the host under test opens `path` (a
    symlink, so the port can vanish and come back under the same name).
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[Request] = []
        self.received = bytearray()
        self.silent = False  # ignore everything (a KKT switched off at the far end of a cable)
        self.before_answer = b""  # bytes sent just before every answer (line noise)
        self.pending: bytes | None = None  # an answer not yet ACKed by the host
        self._parser = FrameParser()
        self._loop = asyncio.get_running_loop()
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        path.unlink(missing_ok=True)
        path.symlink_to(os.ttyname(self._slave))
        self._reading = False
        self.resume_reading()

    def pause_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.master, self._on_readable)
            self._reading = True

    async def fill_output(self) -> int:
        """Fill the tty's host-to-device queue so the host's next write meets EAGAIN.

        The kernel moves pty data between its buffers in the background, so fill until a round
        finds no room at all.
        """
        fd = os.open(os.ttyname(self._slave), os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        total = 0
        try:
            while True:
                round_total = 0
                with contextlib.suppress(BlockingIOError):
                    while True:
                        round_total += os.write(fd, b"\xee" * 512)
                if not round_total:
                    return total
                total += round_total
                await asyncio.sleep(0.02)
        finally:
            os.close(fd)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def vanish(self) -> None:
        """The USB adapter is pulled: the pty goes away and so does its name."""
        self.pause_reading()
        self.path.unlink(missing_ok=True)
        os.close(self.master)
        os.close(self._slave)

    def close(self) -> None:
        if self._reading:
            self.vanish()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        self.received += data
        if self.silent:
            return
        for event in self._parser.feed(data):
            match event:
                case ControlByte(value) if value == ENQ:
                    if self.pending is None:
                        self.write(bytes([NAK]))
                    else:
                        self.write(bytes([ACK]) + self.pending)
                case ControlByte(value) if value == ACK:
                    self.pending = None
                case Frame(body):
                    request = decode_request(body)
                    self.requests.append(request)
                    self.pending = encode_frame(self.handler(request))
                    self.write(bytes([ACK]) + self.before_answer + self.pending)
                case _:
                    pass
