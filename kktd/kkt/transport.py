"""The serial port on the event loop, driving the pure handshake of `protocol.py`.

pyserial opens and configures the port (8N1, raw mode) and we claim it exclusively (flock and
TIOCEXCL, see `_claim`); after that the port is just a non-blocking file descriptor: reads come
through `loop.add_reader`, writes go straight to the fd (frames are at most 258 bytes; EAGAIN
waits on `loop.add_writer`). No thread per byte, and no pyserial-asyncio, which is unmaintained.
Everything the protocol decides (what to send, how long to wait) comes from `protocol.Exchange`;
this module only moves bytes and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import termios
from collections.abc import Callable

import serial

from kktd.kkt.protocol import (
    ArmTimeout,
    Discarded,
    Done,
    Exchange,
    Failed,
    FailReason,
    Response,
    Send,
)

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
BYTE_TIMEOUT = 0.1
CONTROL_TIMEOUT = 0.5
WRITE_STALL = 2.0  # no flow control on the line: output that cannot drain means no port
MAX_BUFFERED = 4096  # unread input kept; more than this between exchanges is noise anyway


class LinkError(Exception):
    """The link could not carry an exchange (the caller decides whether to reconnect)."""


class LinkDown(LinkError):  # noqa: N818 - the name the team codes against (issue 3)
    """The port is gone, cannot be opened, or failed an I/O call."""


class ExchangeError(LinkError):
    """The handshake gave up (see `protocol.Failed` for the reasons)."""

    def __init__(self, reason: FailReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailReason = reason
        self.detail = detail


class SerialTransport:
    """One open serial port. Runs one `Exchange` at a time; the link serializes callers."""

    def __init__(
        self,
        port: serial.Serial,
        *,
        byte_timeout: float = BYTE_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> None:
        self._port = port
        self._fd = port.fileno()
        self._loop = asyncio.get_running_loop()
        self.byte_timeout = byte_timeout
        self.control_timeout = control_timeout
        self._on_discard = on_discard
        self._input = bytearray()
        self._arrived = asyncio.Event()
        self._error: LinkDown | None = None
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    @classmethod
    async def open(
        cls,
        path: str,
        baudrate: int,
        *,
        byte_timeout: float = BYTE_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> SerialTransport:
        """Open `path` exclusively (a second opener fails instead of interleaving bytes)."""
        try:
            port = await asyncio.to_thread(
                serial.Serial, path, baudrate, timeout=0, write_timeout=0, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkDown(f"cannot open {path}: {exc}") from exc
        try:
            _claim(port.fileno())
        except OSError as exc:
            port.close()
            raise LinkDown(f"cannot open {path} exclusively: {exc}") from exc
        return cls(
            port, byte_timeout=byte_timeout, control_timeout=control_timeout, on_discard=on_discard
        )

    @property
    def closed(self) -> bool:
        return not self._port.is_open

    def close(self) -> None:
        if self._port.is_open:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            # The last close of a real port drops TIOCEXCL, but a pty whose other side keeps
            # its slave open (the emulator) would stay exclusive, and our own reconnect would
            # then fail with EBUSY. A port already gone has nothing left to release.
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._fd, termios.TIOCNXCL)
            self._port.close()

    async def exchange(self, body: bytes, *, answer_timeout: float) -> Response:
        """Send one request body and return its answer, whatever the error byte says."""
        self._check()
        machine = Exchange(
            body,
            answer_timeout=answer_timeout,
            control_timeout=self.control_timeout,
            byte_timeout=self.byte_timeout,
        )
        self._drop_stale_input()
        actions = machine.start()
        deadline = self._loop.time()
        while True:
            on_the_wire = 0.0  # the KKT answers after our bytes have crossed a slow line
            for action in actions:
                match action:
                    case Send(data):
                        await self._write(data)
                        on_the_wire += len(data) * BITS_PER_BYTE / self._port.baudrate
                    case ArmTimeout(seconds):
                        deadline = self._loop.time() + seconds + on_the_wire
                    case Done(response):
                        return response
                    case Failed(reason, detail):
                        raise ExchangeError(reason, detail)
                    case Discarded():
                        self._discarded(action)
            data = await self._read(deadline)
            actions = machine.receive(data) if data else machine.timeout()

    # --- reading ---

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(LinkDown(f"read failed: {exc}"))
            return
        if not data:  # readable yet empty: the other end hung up
            self._fail(LinkDown("the port hung up"))
            return
        self._input += data
        if len(self._input) > MAX_BUFFERED:
            del self._input[:-MAX_BUFFERED]
        self._arrived.set()

    def _fail(self, error: LinkDown) -> None:
        self._error = error
        self._loop.remove_reader(self._fd)
        self._arrived.set()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise LinkDown("the port is closed")

    async def _read(self, deadline: float) -> bytes:
        """Bytes that arrived, or b"" once the deadline passes with nothing."""
        while not self._input:
            self._check()
            left = deadline - self._loop.time()
            if left <= 0:
                return b""
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return b""
        self._check()
        data = bytes(self._input)
        self._input.clear()
        return data

    def _drop_stale_input(self) -> None:
        """Bytes left from before this exchange belong to nobody; the ENQ recovers any answer."""
        if self._input:
            self._discarded(Discarded("noise", bytes(self._input)))
            self._input.clear()

    def _discarded(self, what: Discarded) -> None:
        if self._on_discard is not None:
            self._on_discard(what)

    # --- writing ---

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._check()
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as exc:
                error = LinkDown(f"write failed: {exc}")
                self._fail(error)
                raise error from exc
            view = view[written:]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, ready)
        try:
            async with asyncio.timeout(WRITE_STALL):
                await ready
        except TimeoutError:
            raise LinkDown(f"the port took no output for {WRITE_STALL} s") from None
        finally:
            self._loop.remove_writer(self._fd)


def _claim(fd: int) -> None:
    """Make the tty refuse every further open(2) while we hold it (EBUSY).

    pyserial's `exclusive=True` is only flock(2), which binds nobody who does not flock too:
    ModemManager probing the port, or another POS driver doing a plain open(), would still get
    in and interleave bytes with ours. TIOCEXCL is enforced by the kernel on every open. Both
    stay: flock also covers the instant between open and this ioctl. Root (CAP_SYS_ADMIN)
    bypasses TIOCEXCL, so a second kktd running as root is stopped by the flock alone.
    """
    fcntl.ioctl(fd, termios.TIOCEXCL)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
