"""The OFD leg on a real loopback socket: the answer read by its header, every failure named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kktd.kkt.ofd_protocol import HEADER_SIZE, SessionHeader, session_message
from kktd.ofd.client import OfdError, exchange
from kktd.ofd.mock_ofd import MockOfd, receipt_for

FN = "9999078900005488"
MESSAGE = session_message(FN, b"\x05" * 500)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def ofd() -> AsyncIterator[MockOfd]:
    async with MockOfd() as server:
        yield server


async def raw_server(handler: Handler) -> asyncio.Server:
    """A scripted OFD: `handler` gets the connection after the whole message was read."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(MESSAGE))
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_the_message_goes_out_unchanged_and_the_whole_answer_comes_back(
    ofd: MockOfd,
) -> None:
    answer = await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=5)
    assert ofd.messages == [MESSAGE]
    assert answer == receipt_for(MESSAGE) == ofd.answers[0]
    assert SessionHeader.decode(answer).body_length == len(answer) - HEADER_SIZE


async def test_bytes_after_the_announced_body_are_not_part_of_the_answer() -> None:
    answer = session_message(FN, b"ok")

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer + b"trailing")
        await writer.drain()
        await reader.read()

    async with await raw_server(chatty) as server:
        assert await exchange("127.0.0.1", port_of(server), MESSAGE, timeout=5) == answer


async def test_a_closed_port_is_unreachable(ofd: MockOfd) -> None:
    await ofd.set_fault("refuse")
    with pytest.raises(OfdError) as failure:
        await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=5)
    assert failure.value.failure == "unreachable"


async def test_an_unknown_host_is_unreachable() -> None:
    with pytest.raises(OfdError) as failure:
        await exchange("ofd.invalid", 7777, MESSAGE, timeout=5)
    assert failure.value.failure == "unreachable"


async def test_a_reset_mid_answer_is_a_reset(ofd: MockOfd) -> None:
    await ofd.set_fault("reset")
    with pytest.raises(OfdError) as failure:
        await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=5)
    assert failure.value.failure == "reset"
    assert ofd.answers == []


async def test_a_connection_closed_after_the_header_is_a_reset() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(session_message(FN, b"0123456789")[:35])
        await writer.drain()

    async with await raw_server(cut) as server:
        with pytest.raises(OfdError, match="after 35 bytes") as failure:
            await exchange("127.0.0.1", port_of(server), MESSAGE, timeout=5)
    assert failure.value.failure == "reset"


async def test_garbage_is_malformed(ofd: MockOfd) -> None:
    await ofd.set_fault("garbage")
    with pytest.raises(OfdError, match="signature") as failure:
        await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=5)
    assert failure.value.failure == "malformed"


async def test_an_answer_too_long_for_the_fn_is_malformed() -> None:
    huge = session_message(FN, b"")[:24] + b"\xff\xff" + bytes(4)

    async def boast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(huge)
        await writer.drain()
        await reader.read()

    async with await raw_server(boast) as server:
        with pytest.raises(OfdError, match="cannot be written") as failure:
            await exchange("127.0.0.1", port_of(server), MESSAGE, timeout=5)
    assert failure.value.failure == "malformed"


async def test_silence_times_out_and_hangs_up(ofd: MockOfd) -> None:
    await ofd.set_fault("silence")
    with pytest.raises(OfdError) as failure:
        await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=0.3)
    assert failure.value.failure == "timeout"
    await ofd.set_fault(None)
    assert await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=5) == receipt_for(MESSAGE)


async def test_a_slow_answer_within_the_timeout_is_taken(ofd: MockOfd) -> None:
    ofd.slow_seconds = 0.2
    await ofd.set_fault("slow")
    assert await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=10) == receipt_for(MESSAGE)
