"""KktLink on a real pty: requests and errors by name, exclusive sequences, reconnect backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kktd.kkt.commands import Request, encode_response
from kktd.kkt.frames import encode_frame
from kktd.kkt.link import KktError, KktLink
from kktd.kkt.serial_port import SerialTransport
from kktd.kkt.transport import LinkDown
from tests.kkt import DEVICE, Peer, answer_with
from tests.support.clock import FakeClock


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    device = Peer(tmp_path / "kkt0", answer_with({0xFF01: b"\x01"}))
    yield device
    device.close()


@pytest.fixture
async def link(peer: Peer, clock: FakeClock) -> AsyncIterator[KktLink]:
    kkt = KktLink(
        str(peer.path),
        115200,
        password=28,
        control_timeout=0.05,
        monotonic=clock,
        wall=lambda: 1_700_000_000.0,
    )
    yield kkt
    await kkt.close()


async def test_connect_identifies_the_kkt_and_requests_carry_the_password(
    peer: Peer, link: KktLink
) -> None:
    assert await link.connect() == DEVICE
    response = await link.request(0xFF01)
    assert response.data == b"\x01"
    assert peer.requests == [Request(0xFC, None, b""), Request(0xFF01, 28, b"")]
    state = link.state
    assert (state.connected, state.since, state.device, state.last_error) == (
        True,
        1_700_000_000.0,
        DEVICE,
        None,
    )


@pytest.mark.parametrize(
    ("code", "name", "busy"),
    [(0x33, "bad_parameters", False), (0x50, "printing", True), (0x4F, "unknown_0x4f", False)],
)
async def test_an_error_byte_raises_kkt_error_by_name(
    peer: Peer, link: KktLink, code: int, name: str, busy: bool
) -> None:
    peer.handler = lambda request: (
        encode_response(request.cmd, code) if request.cmd == 0xFF3A else answer_with({})(request)
    )
    with pytest.raises(KktError) as failure:
        await link.request(0xFF3A, b"\xa3\x00\x00\x00")
    assert (failure.value.code, failure.value.name, failure.value.busy) == (code, name, busy)
    assert link.connected  # an error answer is a working link


async def test_a_pending_answer_is_drained_before_identifying(peer: Peer, link: KktLink) -> None:
    peer.pending = encode_frame(encode_response(0xFF3B, 0, b"old"))
    with capture_logs() as logs:
        assert await link.connect() == DEVICE
    assert [r.cmd for r in peer.requests] == [0xFC]
    assert [entry["event"] for entry in logs] == ["kkt.stale_answer_drained", "kkt.connected"]


async def test_exclusive_keeps_a_sequence_together_and_does_not_deadlock(
    peer: Peer, link: KktLink
) -> None:
    await link.connect()
    inside = asyncio.Event()

    async def read_document() -> None:
        async with link.exclusive():
            inside.set()
            for _ in range(3):
                await link.request(0xFF3B)
                await asyncio.sleep(0)  # give the other task every chance to cut in

    async with asyncio.timeout(10):
        sequence = asyncio.create_task(read_document())
        await inside.wait()
        await asyncio.gather(link.request(0xFF01), sequence)
    assert [r.cmd for r in peer.requests] == [0xFC, 0xFF3B, 0xFF3B, 0xFF3B, 0xFF01]


async def test_a_vanished_port_reconnects_with_backoff_doubling_to_30_s(
    peer: Peer, clock: FakeClock, tmp_path: Path
) -> None:
    opened: list[str] = []

    async def opener(
        path: str, baud: int, byte_t: float, ctl_t: float, on: object
    ) -> SerialTransport:
        opened.append(path)
        return await SerialTransport.open(path, baud, byte_timeout=byte_t, control_timeout=ctl_t)

    link = KktLink(str(peer.path), 115200, control_timeout=0.05, monotonic=clock, opener=opener)
    try:
        await link.connect()
        peer.vanish()
        with pytest.raises(LinkDown):
            await link.request(0xFF01)
        assert link.state.connected is False
        assert link.state.last_error is not None
        delays = []
        for _ in range(7):
            delays.append(link.state.reconnect_in)
            with pytest.raises(LinkDown, match="reconnecting in"):
                await link.request(0xFF01)  # too early: the port is not even tried
            clock.now += link.state.reconnect_in
            with pytest.raises(LinkDown, match="cannot open"):
                await link.request(0xFF01)
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert len(opened) == 8  # the first connect and one attempt per elapsed delay

        back = Peer(peer.path, answer_with({0xFF01: b"\x02"}))
        try:
            clock.now += link.state.reconnect_in
            assert (await link.request(0xFF01)).data == b"\x02"
            assert link.connected
            back.vanish()
            with pytest.raises(LinkDown):
                await link.request(0xFF01)
            assert link.state.reconnect_in == 1.0  # a good connection reset the backoff
        finally:
            back.close()
    finally:
        await link.close()


async def test_a_kkt_that_stops_answering_is_link_down_and_reconnected(
    peer: Peer, link: KktLink, clock: FakeClock
) -> None:
    await link.connect()
    peer.silent = True
    with pytest.raises(LinkDown, match="stopped answering"):
        await link.request(0xFF01)
    assert not link.connected
    peer.silent = False
    clock.now += 1.0
    assert (await link.request(0xFF01)).data == b"\x01"


async def test_line_noise_is_counted_and_logged_at_its_start_once_a_minute_and_its_end(
    peer: Peer, link: KktLink, clock: FakeClock
) -> None:
    await link.connect()
    peer.before_answer = b"\x41\x42\x43"
    with capture_logs() as logs:
        for _ in range(5):  # noise at 100, 120, 140, 160 and 180 s
            await link.request(0xFF01)
            clock.now += 20.0
        peer.before_answer = b""
        await link.request(0xFF01)  # 20 s after the last noise: not clean yet
        clock.now += 60.0
        await link.request(0xFF01)
        await link.request(0xFF01)
    assert [entry["event"] for entry in logs] == [
        "kkt.line_noise",
        "kkt.line_noise_continues",
        "kkt.line_clean",
    ]
    assert (logs[0]["kind"], logs[0]["sample"]) == ("noise", "41 42 43")
    assert (logs[1]["noise_events"], logs[1]["noise_bytes"], logs[1]["seconds"]) == (3, 9, 60)
    assert (logs[2]["noise_events"], logs[2]["noise_bytes"], logs[2]["lasted"]) == (5, 15, 80.0)
    assert link.noise.totals == {"noise": 5}
