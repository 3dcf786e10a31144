"""The serial transport on a real pty: exclusive open, timeouts, EAGAIN, a port that vanishes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kktd.kkt.commands import Request, Response, encode_request
from kktd.kkt.frames import encode_frame
from kktd.kkt.handshake import Discarded
from kktd.kkt.serial_port import SerialTransport
from kktd.kkt.transport import ExchangeError, LinkDown
from tests.kkt import Peer, answer_with
from tests.support.wait import wait_until

FN_STATUS = encode_request(0xFF01, 30)
FRAME = encode_frame(FN_STATUS)
# Linux's _IOR('T', 0x40, int): reads a tty's TIOCEXCL flag; Python's termios does not export it
TIOCGEXCL = 0x80045440
CAP_SYS_ADMIN = 21  # the capability that bypasses TIOCEXCL (bit number in CapEff)
PLAIN_OPEN = """\
import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY))
except OSError as exc:
    print(exc.errno)
else:
    print(0)
"""


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    device = Peer(tmp_path / "kkt0", answer_with({0xFF01: b"\x01\x02\x03"}))
    yield device
    device.close()


@pytest.fixture
async def transport(peer: Peer) -> AsyncIterator[SerialTransport]:
    opened = await SerialTransport.open(
        str(peer.path), 115200, control_timeout=0.1, byte_timeout=0.05
    )
    yield opened
    opened.close()


async def test_an_exchange_on_a_real_pty_returns_the_answer(
    peer: Peer, transport: SerialTransport
) -> None:
    response = await transport.exchange(FN_STATUS, answer_timeout=3.0)
    assert response == Response(0xFF01, 0, b"\x01\x02\x03")
    assert peer.received.startswith(b"\x05\x02\x06\xff\x01")
    await _until(lambda: peer.pending is None)  # the host ACKed the answer


async def test_a_second_opener_of_the_port_fails(peer: Peer, transport: SerialTransport) -> None:
    with pytest.raises(LinkDown, match="cannot open"):
        await SerialTransport.open(str(peer.path), 115200)
    assert (await transport.exchange(FN_STATUS, answer_timeout=3.0)).error == 0


async def test_the_port_is_marked_exclusive_for_the_kernel_while_open(
    peer: Peer, transport: SerialTransport
) -> None:
    assert _exclusive(transport._fd) == 1
    transport.close()
    # the emulator keeps the pty open, so only our release lets kktd (or anyone) open it again
    fd = os.open(peer.path, os.O_RDWR | os.O_NOCTTY)
    try:
        assert _exclusive(fd) == 0
    finally:
        os.close(fd)


async def test_a_plain_open_that_does_not_flock_is_refused_with_ebusy(
    peer: Peer, transport: SerialTransport
) -> None:
    """What ModemManager or another POS driver does: open(2) without flock(2)."""
    tty = os.path.realpath(peer.path)
    if not _can_bypass_tiocexcl():
        assert _plain_open_errno([], tty) == errno.EBUSY
        return
    # root with CAP_SYS_ADMIN (as in CI) bypasses TIOCEXCL: try from a child that lacks it
    if shutil.which("setpriv") is None:
        pytest.skip("CAP_SYS_ADMIN bypasses TIOCEXCL and setpriv is not here to drop it")
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    assert _plain_open_errno(drop, tty) == errno.EBUSY


def _exclusive(fd: int) -> int:
    flag: int = struct.unpack("i", fcntl.ioctl(fd, TIOCGEXCL, bytes(4)))[0]
    return flag


def _can_bypass_tiocexcl() -> bool:
    status = Path("/proc/self/status").read_text(encoding="ascii")
    caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(caps, 16) >> CAP_SYS_ADMIN & 1)


def _plain_open_errno(prefix: list[str], path: str) -> int:
    """errno of a plain open of `path` by another process (0 if it got in)."""
    child = subprocess.run(
        [*prefix, sys.executable, "-c", PLAIN_OPEN, path],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(child.stdout)


async def test_a_missing_port_is_link_down(tmp_path: Path) -> None:
    with pytest.raises(LinkDown, match="cannot open"):
        await SerialTransport.open(str(tmp_path / "nothing"), 115200)


async def test_a_silent_line_fails_with_no_link_after_the_enq_retries(
    peer: Peer, transport: SerialTransport
) -> None:
    peer.silent = True
    started = time.monotonic()
    with pytest.raises(ExchangeError) as failure:
        await transport.exchange(FN_STATUS, answer_timeout=3.0)
    assert failure.value.reason == "no_link"
    assert peer.received == b"\x05\x05\x05"
    assert time.monotonic() - started < 2.0


async def test_a_port_vanishing_mid_exchange_is_link_down_at_once(
    peer: Peer, transport: SerialTransport
) -> None:
    peer.silent = True
    waiting = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=30.0))
    await asyncio.sleep(0.02)  # let it send its ENQ and start waiting
    started = time.monotonic()
    peer.vanish()
    with pytest.raises(LinkDown):
        await waiting
    assert time.monotonic() - started < 1.0
    with pytest.raises(LinkDown):
        await transport.exchange(FN_STATUS, answer_timeout=3.0)


async def test_a_frame_cut_short_is_dropped_by_the_byte_timeout_and_asked_again(
    peer: Peer,
) -> None:
    seen: list[Discarded] = []
    transport = await SerialTransport.open(
        str(peer.path), 115200, byte_timeout=0.05, control_timeout=0.5, on_discard=seen.append
    )
    try:
        peer.before_answer = b"\x02\xff"  # LEN 255 and then the real answer: swallowed
        started = time.monotonic()
        task = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=3.0))
        await _until(lambda: bool(peer.requests))
        peer.before_answer = b""
        response = await task
    finally:
        transport.close()
    assert response.data == b"\x01\x02\x03"
    assert len(peer.requests) == 1  # the answer was asked again with ENQ, not the command
    assert [d.kind for d in seen] == ["bad_frame"]
    assert time.monotonic() - started < 2.0


async def test_stale_input_before_an_exchange_is_reported_and_dropped(
    peer: Peer,
) -> None:
    seen: list[Discarded] = []
    transport = await SerialTransport.open(str(peer.path), 115200, on_discard=seen.append)
    try:
        peer.write(b"\x41\x42")
        await asyncio.sleep(0.05)  # the bytes must reach the host before the exchange starts
        response = await transport.exchange(FN_STATUS, answer_timeout=3.0)
    finally:
        transport.close()
    assert response.error == 0
    assert seen == [Discarded("noise", b"\x41\x42")]


async def test_a_full_output_queue_waits_for_the_line_instead_of_failing(
    peer: Peer, transport: SerialTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    waited_on: list[int] = []
    add_writer = loop.add_writer

    def spy(fd: int, callback: Callable[..., object], *args: object) -> None:
        waited_on.append(fd)
        add_writer(fd, callback, *args)

    monkeypatch.setattr(loop, "add_writer", spy)
    peer.pause_reading()
    assert await peer.fill_output() > 0
    task = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=3.0))
    await _until(lambda: bool(waited_on))  # the ENQ met EAGAIN: the transport waits to write
    assert not task.done()
    peer.resume_reading()
    assert (await task).data == b"\x01\x02\x03"
    assert peer.received.lstrip(b"\xee").startswith(b"\x05")


async def test_a_deadline_moved_later_is_kept_not_cut_to_the_first_one(tmp_path: Path) -> None:
    """ACK to the frame, then silence: the answer timeout runs, not the shorter ENQ timeout."""
    master, slave = os.openpty()
    tty_path = tmp_path / "kkt0"
    tty_path.symlink_to(os.ttyname(slave))
    os.set_blocking(master, False)
    transport = await SerialTransport.open(
        str(tty_path), 115200, control_timeout=0.1, byte_timeout=0.05
    )
    task = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=0.6))
    try:
        assert await _read_from(master, 1) == b"\x05"
        os.write(master, b"\x15")  # NAK: idle, send the frame
        assert await _read_from(master, len(FRAME)) == FRAME
        os.write(master, b"\x06")  # ACK: the answer is being prepared ... and never comes
        accepted = time.monotonic()
        assert await _read_from(master, 1, within=3.0) == b"\x05"  # asked again with ENQ
        assert time.monotonic() - accepted >= 0.5  # not after the 0.1 s control timeout
        assert not task.done()
    finally:
        task.cancel()
        transport.close()
        os.close(master)
        os.close(slave)


async def test_closing_the_port_mid_exchange_fails_the_exchange_at_once(
    peer: Peer, transport: SerialTransport
) -> None:
    peer.silent = True
    waiting = asyncio.create_task(transport.exchange(FN_STATUS, answer_timeout=30.0))
    await _until(lambda: bool(peer.received))  # the ENQ went out
    transport.close()
    with pytest.raises(LinkDown, match="closed"):
        await asyncio.wait_for(waiting, 1.0)


async def _read_from(fd: int, size: int, within: float = 2.0) -> bytes:
    """Exactly `size` bytes from a non-blocking fd, polling with a deadline."""
    data = b""

    def read_all() -> bool:
        nonlocal data
        with contextlib.suppress(BlockingIOError):
            data += os.read(fd, size - len(data))
        return len(data) >= size

    await wait_until(
        read_all, timeout=within, interval=0.005, what=f"{size} bytes", detail=lambda: data
    )
    return data


async def _until(condition: Callable[[], bool], within: float = 2.0) -> None:
    await wait_until(condition, timeout=within, interval=0.005)


# --- a run of the same request (FF3B until 08) inside the transport ---------------------------

READ_TLV = encode_request(0xFF3B, 30)


def counting_answers(pieces: list[bytes]) -> Callable[[object], bytes]:
    """FF3B answers: each piece in turn, then error 08 (no more data)."""
    left = list(pieces)

    def handle(_: object) -> bytes:
        if not left:
            return b"\xff\x3b\x08"
        return b"\xff\x3b\x00" + left.pop(0)

    return handle


async def test_a_run_of_exchanges_returns_every_answer_and_stops_where_again_says(
    tmp_path: Path,
) -> None:
    pieces = [bytes([n]) * (40 + n) for n in range(5)]
    peer = Peer(tmp_path / "kkt9", counting_answers(pieces))
    transport = await SerialTransport.open(str(peer.path), 115200, control_timeout=0.2)
    try:
        answers = await transport.exchanges(
            READ_TLV, answer_timeout=3.0, again=lambda answer: answer.error == 0
        )
        assert [a.data for a in answers] == [*pieces, b""]
        assert answers[-1].error == 0x08
        assert len(peer.requests) == 6  # each answer its own whole exchange
        # every exchange starts with ENQ, and the ACK of one answer goes out before the next ENQ
        expected = (b"\x05" + encode_frame(READ_TLV) + b"\x06") * 6
        # the last ACK may still be on its way to the peer
        await _until(lambda: len(peer.received) >= len(expected), within=5)
        assert bytes(peer.received) == expected
        assert peer.pending is None  # the last answer was ACKed too
        # a single exchange afterwards works as before
        assert (await transport.exchange(READ_TLV, answer_timeout=3.0)).error == 0x08
    finally:
        transport.close()
        peer.close()


async def test_a_run_survives_noise_between_its_answers(tmp_path: Path) -> None:
    peer = Peer(tmp_path / "kkt9", counting_answers([b"a" * 200, b"b" * 10, b"c"]))
    peer.before_answer = b"\xfe\x01"  # garbage between the ACK and every answer frame
    seen: list[Discarded] = []
    transport = await SerialTransport.open(
        str(peer.path), 115200, control_timeout=0.2, on_discard=seen.append
    )
    try:
        answers = await transport.exchanges(
            READ_TLV, answer_timeout=3.0, again=lambda answer: answer.error == 0
        )
        assert [a.data for a in answers] == [b"a" * 200, b"b" * 10, b"c", b""]
        assert [d.data for d in seen] == [b"\xfe\x01"] * 4
    finally:
        transport.close()
        peer.close()


async def test_a_run_that_loses_the_line_fails_whole(tmp_path: Path) -> None:
    calls = 0

    def handle(_: object) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            kkt.silent = True  # the KKT stops answering in the middle of the run
        return b"\xff\x3b\x00" + b"x"

    kkt = Peer(tmp_path / "kkt9", handle)
    transport = await SerialTransport.open(str(kkt.path), 115200, control_timeout=0.05)
    try:
        with pytest.raises(ExchangeError) as failed:
            await transport.exchanges(READ_TLV, answer_timeout=0.2, again=lambda _: True)
        assert failed.value.reason == "no_link"
    finally:
        transport.close()
        kkt.close()


async def test_a_run_can_open_with_another_request_each_exchange_still_whole(
    tmp_path: Path,
) -> None:
    """FF3A, then FF3B in the same run (`then`): the bytes of separate exchanges, in order."""
    open_fd = encode_request(0xFF3A, 30, struct.pack("<I", 7))
    tlvs = counting_answers([b"t" * 30, b"u" * 12])

    def handle(request: Request) -> bytes:
        if request.cmd == 0xFF3A:
            return b"\xff\x3a\x00" + struct.pack("<HH", 3, 42)
        return tlvs(request)

    peer = Peer(tmp_path / "kkt9", handle)
    transport = await SerialTransport.open(str(peer.path), 115200, control_timeout=0.2)
    try:
        answers = await transport.exchanges(
            open_fd, answer_timeout=3.0, again=lambda answer: answer.error == 0, then=READ_TLV
        )
        assert [(a.cmd, a.error, a.data) for a in answers] == [
            (0xFF3A, 0, struct.pack("<HH", 3, 42)),
            (0xFF3B, 0, b"t" * 30),
            (0xFF3B, 0, b"u" * 12),
            (0xFF3B, 0x08, b""),
        ]
        expected = b"\x05" + encode_frame(open_fd) + b"\x06"
        expected += (b"\x05" + encode_frame(READ_TLV) + b"\x06") * 3
        await _until(lambda: len(peer.received) >= len(expected), within=5)
        assert bytes(peer.received) == expected
        assert [r.cmd for r in peer.requests] == [0xFF3A, 0xFF3B, 0xFF3B, 0xFF3B]
    finally:
        transport.close()
        peer.close()
