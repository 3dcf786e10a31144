"""The emulator served on a real TCP port: one connection at a time, vanish, freeze, faults."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator

import pytest

from kktd.kkt.commands import FnStatus, encode_request
from kktd.kkt.handshake import Discarded
from kktd.kkt.tcp import TcpTransport
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.tcp import TcpEmulator

FF01 = bytes.fromhex("02 06 FF 01 1E 00 00 00 E6")
FN_STATUS = encode_request(0xFF01, 30)


@pytest.fixture
async def emulator() -> AsyncIterator[TcpEmulator]:
    async with TcpEmulator(KktDevice(archive=12)) as served:
        yield served


async def client(emulator: TcpEmulator) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", emulator.tcp_port)


async def answer(reader: asyncio.StreamReader, size: int, within: float = 2.0) -> bytes:
    """`size` bytes, or what came before the deadline (b"" for silence)."""
    data = b""
    try:
        async with asyncio.timeout(within):
            while len(data) < size:
                chunk = await reader.read(size - len(data))
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        pass
    return data


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def test_the_port_names_the_address_it_listens_on(emulator: TcpEmulator) -> None:
    assert emulator.tcp_port != 0
    assert emulator.port == f"tcp://127.0.0.1:{emulator.tcp_port}"


async def test_ff01_round_trips_over_tcp(emulator: TcpEmulator) -> None:
    reader, writer = await client(emulator)
    try:
        writer.write(FF01)
        data = await answer(reader, 1 + 36)
    finally:
        await close(writer)
    assert data[:4] == bytes.fromhex("06 02 21 FF")
    assert FnStatus.decode(data[6:-1]).last_fd == 12


async def test_one_connection_at_a_time_the_next_is_served_when_it_ends(
    emulator: TcpEmulator,
) -> None:
    _, first = await client(emulator)
    second_reader, second = await client(emulator)  # the kernel accepts; the KKT does not yet
    try:
        second.write(b"\x05")
        assert await answer(second_reader, 1, within=0.3) == b""
        await close(first)
        assert await answer(second_reader, 1) == b"\x15"
    finally:
        await close(second)
    assert emulator.connections == 2


async def test_vanish_closes_the_connection_and_refuses_new_ones_until_it_returns(
    emulator: TcpEmulator,
) -> None:
    reader, writer = await client(emulator)
    port = emulator.tcp_port
    emulator.vanish()
    assert await reader.read(1) == b""  # the KKT closed the connection
    await close(writer)
    with pytest.raises(ConnectionRefusedError):
        await client(emulator)
    emulator.reappear()
    assert emulator.tcp_port == port
    reader, writer = await client(emulator)
    try:
        writer.write(b"\x05")
        assert await answer(reader, 1) == b"\x15"
    finally:
        await close(writer)


async def test_a_frozen_kkt_keeps_the_connection_and_answers_nothing_until_thawed(
    emulator: TcpEmulator,
) -> None:
    reader, writer = await client(emulator)
    try:
        emulator.freeze()
        writer.write(b"\x05")
        assert await answer(reader, 1, within=0.3) == b""
        assert not reader.at_eof()
        emulator.thaw()
        assert await answer(reader, 1) == b"\x15"
    finally:
        await close(writer)


async def test_periodic_faults_hit_every_nth_host_frame(emulator: TcpEmulator) -> None:
    emulator.busy_every = 4
    emulator.bad_lrc_every = 3
    seen: list[Discarded] = []
    transport = await TcpTransport.open("127.0.0.1", emulator.tcp_port, on_discard=seen.append)
    try:
        errors = [
            (await transport.exchange(FN_STATUS, answer_timeout=3.0)).error for _ in range(12)
        ]
    finally:
        transport.close()
    assert [n for n, error in enumerate(errors, 1) if error] == [4, 8, 12]
    assert {error for error in errors if error} == {0x50}
    garbled = [d.kind for d in seen if d.kind != "stray_ff"]  # an FF follows each ACK on TCP
    assert garbled == ["bad_frame"] * 4  # the answers to frames 3, 6, 9 and 12


async def test_the_command_serves_tcp_and_prints_the_kkt_port() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "kktd.testbed.emulator", "--tcp", "0", "--archive", "3"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10.0)).decode().strip()
        host, _, port = line.removeprefix("tcp://").rpartition(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(FF01)
            data = b""
            while len(data) < 37:
                data += sock.recv(64)
        assert FnStatus.decode(data[6:-1]).last_fd == 3
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10.0) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
