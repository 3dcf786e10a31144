"""The serial port to a Shtrih-M (USB CDC, RS-232 or a USB-serial adapter), on `FdTransport`.

pyserial opens and configures the port (8N1, raw mode) and we claim it exclusively (flock and
TIOCEXCL, see `_claim`); everything else is the fd driver's (`transport.py`), as for TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import termios
from collections.abc import Callable

import serial

from kktd.kkt.handshake import Discarded
from kktd.kkt.transport import BYTE_TIMEOUT, CONTROL_TIMEOUT, FdTransport, LinkDown

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit


class SerialTransport(FdTransport):
    """One serial port (USB CDC, RS-232 or a USB-serial adapter), claimed exclusively."""

    def __init__(
        self,
        port: serial.Serial,
        *,
        byte_timeout: float = BYTE_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> None:
        self._port = port
        super().__init__(
            port.fileno(),
            byte_time=BITS_PER_BYTE / port.baudrate,
            byte_timeout=byte_timeout,
            control_timeout=control_timeout,
            on_discard=on_discard,
        )

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

    def _release(self) -> None:
        # The last close of a real port drops TIOCEXCL, but a pty whose other side keeps its
        # slave open (the emulator) would stay exclusive, and our own reconnect would then fail
        # with EBUSY. A port already gone has nothing left to release.
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._fd, termios.TIOCNXCL)
        self._port.close()


def _claim(fd: int) -> None:
    """Make the tty refuse every further open(2) while we hold it (EBUSY).

    pyserial's `exclusive=True` is only flock(2), which binds nobody who does not flock too:
    ModemManager probing the port, or another POS driver doing a plain open(), would still get
    in and interleave bytes with ours. TIOCEXCL is enforced by the kernel on every open. Both
    stay: flock also covers the instant between open and this ioctl. Root (CAP_SYS_ADMIN)
    bypasses TIOCEXCL, so a second kktd running as root is stopped by the flock alone.
    """
    fcntl.ioctl(fd, termios.TIOCEXCL)
