"""The KKT over TCP (Ethernet, Wi-Fi, USB-RNDIS): one connection, the same v1 frames (SPEC 1).

The connected socket is just another non-blocking fd for `FdTransport`, which drives the same
`handshake.Exchange` as on a serial port: ENQ first, the stray FF the KKT sends after our ACK
skipped by the protocol core. What differs is only here: connecting (3 s, every address the name
resolves to in turn), the socket options that keep one long-lived connection honest, and the
timeouts a network needs (a byte can be held back by a retransmission, never lost).

A peer that dies without a FIN or RST is found two ways: by the protocol (an ENQ unanswered for
three control timeouts is "no link", and the link reconnects with its backoff) and, while idle
between polls, by TCP keepalive probes (idle 20 s, then 4 probes 5 s apart: gone within 40 s);
TCP_USER_TIMEOUT bounds data left unacknowledged the same way. Shtrih-M's own drivers also keep
one connection with TCP_NODELAY; the KKT serves one connection at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from kktd.kkt.handshake import Discarded
from kktd.kkt.transport import FdTransport, LinkDown

CONNECT_TIMEOUT = 3.0
# A frame is one small write from the KKT; a gap inside one means a retransmission (TCP's minimum
# RTO on Linux is 200 ms), not a lost byte, so wait past it before calling a frame cut short.
TCP_BYTE_TIMEOUT = 0.5
TCP_CONTROL_TIMEOUT = 1.0
KEEPALIVE_IDLE = 20  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 4
USER_TIMEOUT_MS = 40_000  # unacknowledged data: give up as keepalive would


class TcpTransport(FdTransport):
    """One TCP connection to a KKT."""

    hung_up = "the KKT closed the connection"

    def __init__(
        self,
        sock: socket.socket,
        *,
        byte_timeout: float = TCP_BYTE_TIMEOUT,
        control_timeout: float = TCP_CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> None:
        self._socket = sock
        super().__init__(
            sock.fileno(),
            byte_timeout=byte_timeout,
            control_timeout=control_timeout,
            on_discard=on_discard,
        )

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        byte_timeout: float = TCP_BYTE_TIMEOUT,
        control_timeout: float = TCP_CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> TcpTransport:
        """Connect to `host`:`port`; `LinkDown` when no address answers within the timeout."""
        sock = await connect(host, port, connect_timeout)
        return cls(
            sock, byte_timeout=byte_timeout, control_timeout=control_timeout, on_discard=on_discard
        )

    def _release(self) -> None:
        self._socket.close()


async def connect(host: str, port: int, within: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, tuned, non-blocking socket; each address resolved gets `within` s in turn."""
    loop = asyncio.get_running_loop()
    where = f"{host} port {port}"
    try:
        async with asyncio.timeout(within):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise LinkDown(f"cannot resolve {host}: {_reason(exc, within)}") from exc
    errors: list[str] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(within):
                await loop.sock_connect(sock, address)
            tune(sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            errors.append(f"{address[0]}: {_reason(exc, within)}")
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(errors) == 1:  # the usual case: no need to name the one address
        errors = [errors[0].partition(": ")[2]]
    raise LinkDown(f"cannot connect to {where}: {'; '.join(errors) or 'no address'}")


def _reason(exc: OSError, within: float) -> str:
    """ "Connection refused" rather than asyncio's "[Errno 111] Connect call failed (...)"."""
    if isinstance(exc, TimeoutError) and not exc.args:
        return f"no answer in {within:g} s"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)  # the resolver's own words ("Name or service not known")
    return os.strerror(exc.errno)


def tune(sock: socket.socket) -> None:
    """No Nagle delay on our small frames; keepalive to find a peer that vanished silently."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    # Linux only (kktd's platform); elsewhere keepalive alone has to do
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
