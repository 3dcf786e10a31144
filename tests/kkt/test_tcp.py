"""The TCP transport against a real listening socket: options, timeouts, a peer gone or hung."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from kktd.emulator.device import KktDevice
from kktd.emulator.tcp import TcpEmulator
from kktd.kkt import tcp
from kktd.kkt.link import KktLink
from kktd.kkt.protocol import FnStatus, encode_request
from kktd.kkt.tcp import TcpTransport
from kktd.kkt.transport import ExchangeError, LinkDown

FN_STATUS = encode_request(0xFF01, 30)


@pytest.fixture
async def emulator() -> AsyncIterator[TcpEmulator]:
    async with TcpEmulator(KktDevice(archive=5)) as served:
        yield served


@pytest.fixture
async def transport(emulator: TcpEmulator) -> AsyncIterator[TcpTransport]:
    opened = await TcpTransport.open("127.0.0.1", emulator.tcp_port, control_timeout=0.1)
    yield opened
    opened.close()


@contextlib.contextmanager
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: a further connect gets no SYN-ACK, only a timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            yield port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_an_exchange_over_tcp_returns_the_answer(
    emulator: TcpEmulator, transport: TcpTransport
) -> None:
    response = await transport.exchange(FN_STATUS, answer_timeout=3.0)
    assert FnStatus.decode(response.data).last_fd == 5


async def test_the_connection_has_no_nagle_delay_and_finds_a_dead_peer_within_a_minute(
    transport: TcpTransport,
) -> None:
    sock = transport._socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
    count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
    assert idle + interval * count <= 60
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) <= 60_000


async def test_a_host_name_and_an_ipv6_literal_reach_the_kkt() -> None:
    async with TcpEmulator(KktDevice(archive=2), host="::1") as v6:
        link = KktLink(v6.port, 115200)
        try:
            assert v6.port.startswith("tcp://[::1]:")
            assert FnStatus.decode((await link.request(0xFF01)).data).last_fd == 2
        finally:
            await link.close()
    async with TcpEmulator(KktDevice(archive=3)) as v4:
        link = KktLink(f"tcp://localhost:{v4.tcp_port}", 115200)
        try:
            assert FnStatus.decode((await link.request(0xFF01)).data).last_fd == 3
        finally:
            await link.close()


async def test_a_refused_connection_is_link_down() -> None:
    with pytest.raises(
        LinkDown, match=r"cannot connect to 127\.0\.0\.1 port \d+: Connection refused$"
    ):
        await TcpTransport.open("127.0.0.1", free_port())


async def test_a_connect_that_gets_no_answer_gives_up_at_the_connect_timeout() -> None:
    with full_listener() as port:
        started = time.monotonic()
        with pytest.raises(LinkDown, match=r"no answer in 0\.3 s"):
            await TcpTransport.open("127.0.0.1", port, connect_timeout=0.3)
    assert time.monotonic() - started < 2.0


async def test_the_default_connect_timeout_is_3_s() -> None:
    assert tcp.CONNECT_TIMEOUT == 3.0


async def test_a_name_that_does_not_resolve_is_link_down() -> None:
    with pytest.raises(LinkDown, match=r"cannot resolve no-such-kkt\.invalid"):
        await TcpTransport.open("no-such-kkt.invalid", 7778, connect_timeout=2.0)


async def test_the_kkt_closing_the_connection_mid_exchange_is_link_down_at_once(
    emulator: TcpEmulator, transport: TcpTransport
) -> None:
    emulator.freeze()
    waiting = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=30.0))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    emulator.vanish()
    with pytest.raises(LinkDown, match=r"closed the connection|reset by peer"):
        await waiting
    assert time.monotonic() - started < 1.0


async def test_a_peer_that_stops_answering_without_closing_fails_with_no_link(
    emulator: TcpEmulator, transport: TcpTransport
) -> None:
    emulator.freeze()
    with pytest.raises(ExchangeError) as failure:
        await transport.exchange(FN_STATUS, answer_timeout=3.0)
    assert failure.value.reason == "no_link"


async def test_over_tcp_the_link_waits_longer_for_bytes_than_on_a_serial_line(
    emulator: TcpEmulator,
) -> None:
    link = KktLink(emulator.port, 115200)
    assert link.transport_kind == "tcp"
    assert (link._byte_timeout, link._control_timeout) == (
        tcp.TCP_BYTE_TIMEOUT,
        tcp.TCP_CONTROL_TIMEOUT,
    )
    assert tcp.TCP_BYTE_TIMEOUT > 0.2  # past Linux's minimum retransmission timeout
