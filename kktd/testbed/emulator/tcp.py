"""Serving an emulated KKT over TCP, as a Shtrih-M with Ethernet, Wi-Fi or RNDIS does (SPEC 1, 8).

The KKT serves one connection at a time: it accepts the next only when the current one ends;
until then a second client's connection waits in the listen backlog and its ENQs go unanswered,
which is what a second kktd pointed at the same KKT would see. `vanish()` closes the connection
and the listening socket (connections are refused until `reappear()` listens again on the same
port); `freeze()` keeps everything open and answers nothing, like a KKT that hung. Like a real
KKT over RNDIS/TCP it sends a stray FF after each of the host's ACKs (`ff_after_ack`).
"""

from __future__ import annotations

import asyncio
import socket

import structlog

from kktd.kkt.address import TcpAddress
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.serving import Serving

log = structlog.get_logger(__name__)

BACKLOG = 8
# The host waits this long inside a frame over TCP (kktd.kkt.tcp.TCP_BYTE_TIMEOUT is 0.5 s): the
# pause before an answer that follows injected garbage must be longer.
TCP_PAUSE = 0.6


class TcpEmulator(Serving):
    """A `KktDevice` on a TCP port: `await start()`, set `kkt.port = emulator.port`, `stop()`.

    `port=0` picks a free port at the first start and keeps it for every `reappear()`.
    """

    def __init__(
        self,
        device: KktDevice | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        baud: int | None = None,
        rate_per_second: float = 0.0,
        pause: float = TCP_PAUSE,
        byte_timeout: float = 0.1,
    ) -> None:
        super().__init__(
            device,
            baud=baud,
            rate_per_second=rate_per_second,
            pause=pause,
            byte_timeout=byte_timeout,
        )
        self.host = host
        self.tcp_port = port
        self.ff_after_ack = True  # what a Shtrih-M on RNDIS/TCP does
        self.connections = 0  # accepted so far, for tests
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None

    @property
    def port(self) -> str:
        return str(TcpAddress(self.host, self.tcp_port))

    @property
    def serving(self) -> bool:
        return self._listener is not None

    def freeze(self) -> None:
        super().freeze()
        self._stop_accepting()

    def thaw(self) -> None:
        super().thaw()
        self._accept_next()

    def _open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            # the port comes back at once after vanish(), whatever TIME_WAIT is left of it
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.tcp_port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self.tcp_port = listener.getsockname()[1]
        self._listener = listener
        self._accept_next()

    def _close(self) -> None:
        self._drop_connection()
        if self._listener is not None:
            self._stop_accepting()
            self._listener.close()
            self._listener = None

    def _accept_next(self) -> None:
        if self._listener is not None and self._conn is None and not self.frozen:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._stop_accepting()  # one connection at a time
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = conn
        self.connections += 1
        self._attach(conn.fileno())
        log.debug("emulator.connected", peer=str(peer[0]), port=peer[1])

    def _hung_up(self, line: int, why: str) -> None:
        if self._conn is None or self._conn.fileno() != line:
            return  # a connection already dropped
        log.debug("emulator.disconnected", reason=why)
        self._drop_connection()
        self._accept_next()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._detach()
            self._conn.close()
            self._conn = None
