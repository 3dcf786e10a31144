"""The TCP transport against a real listening socket: options, timeouts, a peer gone or hung."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kktd.kkt import tcp
from kktd.kkt.commands import FnStatus, encode_request
from kktd.kkt.handshake import Discarded
from kktd.kkt.link import KktLink
from kktd.kkt.tcp import TcpTransport
from kktd.kkt.transport import ExchangeError, LinkDown
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.tcp import TcpEmulator
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess
from tests.support.wait import wait_until_blocking

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


def test_kktd_run_reads_a_kkt_over_tcp_and_warns_of_a_baud_rate_that_does_not_apply(
    tmp_path: Path,
) -> None:
    """The whole daemon, a real process, against the emulator serving TCP in its own process."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "kktd.testbed.emulator", "--tcp", "0", "--archive", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    daemon: KktdProcess | None = None
    try:
        assert emulator.stdout is not None
        port = emulator.stdout.readline().decode().strip()
        config = write_config(tmp_path, kkt_port=port)
        text = config.read_text(encoding="utf-8").replace(
            'poll_interval = "200ms"',
            'poll_interval = "200ms"\nstart_fd = "first"\nbaudrate = 9600',
        )
        config.write_text(text, encoding="utf-8")
        daemon = KktdProcess(config)
        daemon.wait_ready()

        def stored_five() -> bool:
            assert daemon is not None
            assert daemon.alive, daemon.log()
            return daemon.log().count('"journal.stored"') >= 5

        wait_until_blocking(stored_five, timeout=20, what="5 FDs stored", detail=daemon.log)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit() == 0
        events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    finally:
        if daemon is not None:
            daemon.close()
        emulator.terminate()
        emulator.wait(10)
        assert emulator.stdout is not None
        emulator.stdout.close()
    (warning,) = [e for e in events if e["event"] == "config.warning"]
    assert warning["detail"].startswith(f"{config}:5: kkt.baudrate: ignored: ")
    (connected,) = [e for e in events if e["event"] == "kkt.connected"]
    assert (connected["transport"], connected["port"]) == ("tcp", port)


async def test_the_ff_a_kkt_sends_after_each_of_our_acks_over_tcp_is_skipped_not_counted(
    emulator: TcpEmulator,
) -> None:
    seen: list[Discarded] = []
    transport = await TcpTransport.open("127.0.0.1", emulator.tcp_port, on_discard=seen.append)
    try:
        for _ in range(5):
            assert (await transport.exchange(FN_STATUS, answer_timeout=3.0)).error == 0
    finally:
        transport.close()
    assert len(seen) >= 4  # each after our ACK, found at the start of the next exchange
    assert {d.kind for d in seen} == {"stray_ff"}
    link = KktLink(emulator.port, 115200)
    try:
        with capture_logs() as logs:
            for _ in range(5):
                await link.request(0xFF01)
    finally:
        await link.close()
    assert not link.noise.totals
    assert "kkt.line_noise" not in [e["event"] for e in logs]
