"""The mock OFD: faults last as long as asked, the port survives a refusal, it runs alone."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from kktd.kkt.ofd_protocol import session_message, split_session
from kktd.ofd.client import OfdError, exchange
from kktd.ofd.mock_ofd import MockOfd, receipt_for

FN = "9999078900005488"
MESSAGE = session_message(FN, b"message")


async def outcome(ofd: MockOfd) -> str:
    try:
        await exchange("127.0.0.1", ofd.port, MESSAGE, timeout=0.5)
    except OfdError as exc:
        return exc.failure
    return "answered"


def test_the_receipt_is_a_session_message_for_the_senders_fn() -> None:
    header, body = split_session(receipt_for(MESSAGE))
    assert header.fn == FN
    assert len(body) > 240  # written back in more than one FF33 block
    assert receipt_for(MESSAGE) != receipt_for(session_message(FN, b"other"))


async def test_a_counted_fault_runs_out() -> None:
    async with MockOfd() as ofd:
        await ofd.set_fault("garbage", times=2)
        assert [await outcome(ofd) for _ in range(3)] == ["malformed", "malformed", "answered"]
        assert ofd.fault is None
        assert (ofd.connections, len(ofd.messages), len(ofd.answers)) == (3, 3, 1)


async def test_refuse_closes_the_port_and_clearing_reopens_the_same_port() -> None:
    async with MockOfd() as ofd:
        port = ofd.port
        await ofd.set_fault("refuse")
        assert await outcome(ofd) == "unreachable"
        await ofd.set_fault(None)
        assert ofd.port == port
        assert await outcome(ofd) == "answered"
        with pytest.raises(ValueError):
            await ofd.set_fault("refuse", times=1)


async def test_bytes_that_are_not_a_session_message_are_counted_and_dropped() -> None:
    async with MockOfd() as ofd:
        reader, writer = await asyncio.open_connection("127.0.0.1", ofd.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: ofd.example\r\n\r\n")  # 37 bytes
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        assert (ofd.bad_messages, ofd.messages) == (1, [])


async def test_it_runs_alone_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kktd.ofd.mock_ofd",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        port = int(line.decode().rsplit(":", 1)[1])
        assert await exchange("127.0.0.1", port, MESSAGE, timeout=5) == receipt_for(MESSAGE)
    finally:
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), 30)
    assert await process.wait() == 0
    assert b"1 messages, 1 answers" in rest
