"""The emulator served on a real pty: a host opens the port path and talks Shtrih-M to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kktd.kkt.commands import Command, ErrorCode, FnStatus, Response, encode_request, fd_request
from kktd.kkt.handshake import ArmTimeout, Done, Exchange, Failed, Send
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.emulator.pty import PtyEmulator
from tests.support.wait import WaitTimeoutError, wait_until

PWD = 30


class HostPort:
    """The host end: the pty slave opened by path, read through the event loop."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buffer = bytearray()
        self.hangup = False
        self.arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF or EIO: the other side of the pty is gone
            self.hangup = True
            asyncio.get_running_loop().remove_reader(self.fd)
        self.buffer += data
        self.arrived.set()

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read(self, timeout: float) -> bytes:
        """Whatever has arrived, waiting up to `timeout` for something; b"" when nothing."""
        if not self.buffer and not self.hangup:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except TimeoutError:
                return b""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def read_exactly(self, size: int, timeout: float = 2.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        data = b""
        while len(data) < size and loop.time() < deadline and not self.hangup:
            data += await self.read(deadline - loop.time())
        return data

    def close(self) -> None:
        if not self.hangup:
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)

    async def command(self, cmd: int, data: bytes = b"") -> Response:
        """One command through the host's handshake state machine, with real timeouts."""
        self.buffer.clear()
        host = Exchange(
            encode_request(cmd, None if cmd == Command.DEVICE_TYPE else PWD, data),
            answer_timeout=3.0,
        )
        actions = host.start()
        armed = 0.5
        for _ in range(100):
            for action in actions:
                if isinstance(action, Send):
                    self.write(action.data)
                elif isinstance(action, ArmTimeout):
                    armed = action.seconds
                elif isinstance(action, Done):
                    return action.response
                elif isinstance(action, Failed):
                    raise AssertionError(action)
            received = await self.read(armed)
            actions = host.receive(received) if received else host.timeout()
        raise AssertionError("the exchange did not finish")

    async def read_fd(self, fd: int) -> bytes:
        assert (await self.command(Command.OPEN_FD_TLV, fd_request(fd))).error == ErrorCode.OK
        raw = b""
        while (answer := await self.command(Command.READ_TLV)).error == ErrorCode.OK:
            raw += answer.data
        assert answer.error == ErrorCode.NO_DATA
        return raw


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[PtyEmulator]:
    device = KktDevice(DocumentGenerator(rng=random.Random(11)), archive=12)
    async with PtyEmulator(device, link=tmp_path / "kkt0", byte_timeout=0.05) as served:
        yield served


@pytest.fixture
async def port(emulator: PtyEmulator) -> AsyncIterator[HostPort]:
    host = HostPort(emulator.path)
    yield host
    host.close()


async def test_the_link_points_at_the_pty(emulator: PtyEmulator, tmp_path: Path) -> None:
    assert emulator.path == tmp_path / "kkt0"
    assert str(emulator.path.readlink()) == emulator.pty_name


async def test_enq_is_answered_nak_over_the_pty(port: HostPort) -> None:
    port.write(b"\x05")
    assert await port.read_exactly(1) == b"\x15"


async def test_ff01_round_trips_over_the_pty(port: HostPort) -> None:
    port.write(bytes.fromhex("02 06 FF 01 1E 00 00 00 E6"))
    answer = await port.read_exactly(1 + 36)
    assert answer[:4] == bytes.fromhex("06 02 21 FF")
    status = FnStatus.decode(answer[6:-1])
    assert (status.fn, status.last_fd) == ("9999078900005488", 12)


async def test_every_fd_is_read_byte_for_byte_through_faults(
    emulator: PtyEmulator, port: HostPort
) -> None:
    device = emulator.device
    device.corrupt_lrc(2)
    device.stray_ff(3)
    device.lose_acks(1)
    device.busy(1)
    device.inject_garbage(bytes.fromhex("02 FF"))
    for document in device.documents[:6]:
        response = await port.command(Command.FIND_FD, fd_request(document.fd))
        while response.error == ErrorCode.PRINTING:
            response = await port.command(Command.FIND_FD, fd_request(document.fd))
        assert await port.read_fd(document.fd) == document.raw
    assert device.stats["resent"] >= 3


async def test_a_host_frame_cut_short_is_forgotten_after_the_byte_timeout(
    emulator: PtyEmulator, port: HostPort
) -> None:
    port.write(bytes.fromhex("02 06 FF 01"))
    with contextlib.suppress(WaitTimeoutError):  # it may have come and gone between two looks
        await wait_until(lambda: emulator.device.receiving, timeout=1.0, interval=0.01)
    await wait_until(
        lambda: not emulator.device.receiving, timeout=2.0, interval=0.01, what="frame forgotten"
    )
    assert not emulator.device.receiving
    assert (await port.command(Command.FN_STATUS)).error == ErrorCode.OK


async def test_the_port_vanishes_and_returns_under_the_same_path(
    emulator: PtyEmulator, port: HostPort
) -> None:
    emulator.vanish()
    assert not emulator.path.exists()
    assert await port.read_exactly(1) == b""
    assert port.hangup

    emulator.reappear()
    assert str(emulator.path.readlink()) == emulator.pty_name
    again = HostPort(emulator.path)
    try:
        status = FnStatus.decode((await again.command(Command.FN_STATUS)).data)
    finally:
        again.close()
    assert status.last_fd == 12  # the KKT kept its FN while the port was gone


async def test_a_throttled_line_takes_ten_bits_per_byte(
    emulator: PtyEmulator, port: HostPort
) -> None:
    emulator.baud = 2400  # 37 bytes of ACK + FF01 answer: about 154 ms
    loop = asyncio.get_running_loop()
    started = loop.time()
    port.write(bytes.fromhex("02 06 FF 01 1E 00 00 00 E6"))
    assert len(await port.read_exactly(37)) == 37
    assert loop.time() - started >= 0.12


async def test_fds_are_issued_at_a_rate_in_the_background(emulator: PtyEmulator) -> None:
    await asyncio.wait_for(emulator.issue_at_rate(500.0, count=25), 5.0)
    assert emulator.device.last_fd == 37
    assert [d.fd for d in emulator.device.documents] == list(range(1, 38))


async def test_stop_removes_the_link(tmp_path: Path) -> None:
    emulator = PtyEmulator(link=tmp_path / "kkt1", rate_per_second=1000.0)
    await emulator.start()
    assert emulator.path.is_symlink()
    await emulator.stop()
    assert not emulator.path.exists()
    assert not emulator.serving


async def test_the_command_prints_the_path_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    link = tmp_path / "kkt0"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kktd.testbed.emulator",
        "--link",
        str(link),
        "--archive",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10.0)
        assert line.decode().strip() == str(link)
        host = HostPort(link)
        try:
            status = FnStatus.decode((await host.command(Command.FN_STATUS)).data)
        finally:
            host.close()
        assert status.last_fd == 3
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10.0) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not link.exists()
