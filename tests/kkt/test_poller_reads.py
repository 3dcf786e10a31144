"""What the poller believes of the KKT (issue 11 items 6, 9): FF3B as a byte stream, the FN
number confirmed, each FD's 1040/1041 checked, and the stuck FD an operator may skip.

Over a real pty against the emulator and a real SQLite journal, like tests/kkt/test_poller.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kktd.journal.skips import Requester, SkipRefused, list_skips
from kktd.kkt.commands import Command, DocumentInfo, ErrorCode, Request
from kktd.kkt.tlv import TAG_REQUISITE, encode_string, encode_tlv, encode_u32, iter_tlv
from kktd.testbed.emulator.device import Ff3bShape, KktDevice, garbled
from kktd.testbed.emulator.documents import DocumentGenerator, EmulatedDocument
from tests.kkt.test_poller import harness

OTHER_FN = "9999078900001111"
OPERATOR = Requester("alice", "uid 1000 (alice)", "api token")


def long_ones(device: KktDevice) -> list[int]:
    """FDs carrying a 1084 requisite longer than one FF3B answer."""
    return [d.fd for d in device.documents if any(t.tag == TAG_REQUISITE for t in iter_tlv(d.raw))]


# --- FF3B as a byte stream (item 6) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "block", "rate"),
    [
        ("tlv", 252, 0.0),  # the old shape: one whole TLV per answer, no long TLVs possible
        ("split", 252, 0.5),  # one TLV per answer, a long one in pieces (Shtrih-M)
        ("blocks", 100, 0.5),  # pieces cut through TLVs wherever they fall
    ],
)
async def test_every_ff3b_shape_is_journaled_byte_for_byte(
    tmp_path: Path, shape: Ff3bShape, block: int, rate: float
) -> None:
    generator = DocumentGenerator(rng=random.Random(4), requisite_rate=rate)
    device = KktDevice(generator, archive=12, strict_output=True, ff3b=shape, ff3b_block=block)
    async with harness(device, tmp_path) as h:
        poller = h.poller("first")
        assert await poller.poll() == 12
        assert await h.journaled() == list(range(1, 13))  # raw and decoded fields, each FD
        assert poller.status().stuck is None
        assert device._output is None  # every read went to its 08
    if rate:
        assert len(long_ones(device)) >= 2


async def test_a_long_tlv_no_longer_stops_every_later_fd(tmp_path: Path) -> None:
    """Issue 11 item 6: a 332-byte 1084 came in two FF3B answers and blocked the till for good."""
    device = KktDevice(archive=3, strict_output=True)
    async with harness(device, tmp_path) as h:
        poller = h.poller("next")
        await poller.poll()
        long = device.issue_receipt(requisite=device.generator.long_requisite())
        device.issue_receipt()
        assert long_ones(device) == [long.fd]
        assert await poller.poll() == 2
        assert await h.journaled() == [long.fd, long.fd + 1]
    assert device.executed[Command.READ_TLV] > sum(1 for _ in iter_tlv(long.raw))


class Miscounting(KktDevice):
    """FF3A announces FD 2 one byte short on the first read: the stream outgrows it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.short_once = True

    def _execute(self, request: Request) -> tuple[int, bytes]:
        error, data = super()._execute(request)
        opened = self._output
        if request.cmd == Command.OPEN_FD_TLV and opened is not None and opened.fd == 2:
            info = DocumentInfo.decode(data)
            short, self.short_once = self.short_once, False
            return error, DocumentInfo(info.doc_type, info.length - short).encode()
        return error, data


async def test_a_stream_longer_than_ff3a_said_is_read_again_from_ff3a(tmp_path: Path) -> None:
    device = Miscounting(archive=3, strict_output=True)
    async with harness(device, tmp_path) as h:
        with capture_logs() as logs:
            assert await h.poller("first").poll() == 3
        assert await h.journaled() == [1, 2, 3]
    [restart] = [e for e in logs if e["event"] == "kkt.document_restarted"]
    assert restart["fd"] == 2
    assert "FF3A said" in restart["error"]


class Truncating(KktDevice):
    """FD 2's stream always ends one piece early: it can never be read whole."""

    def _execute(self, request: Request) -> tuple[int, bytes]:
        output = self._output
        last = output is not None and output.position == len(output.pieces) - 1
        if request.cmd == Command.READ_TLV and output is not None and output.fd == 2 and last:
            self._output = None
            return ErrorCode.NO_DATA, b""
        return super()._execute(request)


class Endless(KktDevice):
    """FD 2's stream repeats its first piece forever: it never says 08 (and its FN does not
    refuse FF01 meanwhile, or nothing could be read from it at all)."""

    def _execute(self, request: Request) -> tuple[int, bytes]:
        output = self._output
        if request.cmd == Command.READ_TLV and output is not None and output.fd == 2:
            output.position = min(output.position, 1)
        return super()._execute(request)


@pytest.mark.parametrize(("device_type", "strict"), [(Truncating, True), (Endless, False)])
async def test_an_fd_never_read_whole_is_never_left_open_and_the_poller_stops_at_it(
    tmp_path: Path, device_type: type[KktDevice], strict: bool
) -> None:
    device = device_type(archive=4, strict_output=strict)
    async with harness(device, tmp_path) as h:
        poller = h.poller("first")
        with capture_logs() as logs:
            await poller.poll()
        assert await h.journaled() == [1]  # nothing after FD 2 is read past it
        stuck = poller.status().stuck
        assert stuck is not None
        assert (stuck.fn, stuck.fd, stuck.polls) == (device.fn, 2, 1)
        assert device._output is None or not strict  # read out to its 08, or as far as it goes
        events = [e["event"] for e in logs]
        assert events.count("kkt.document_restarted") == 5
        assert await poller.poll() == 0  # FF01 is not refused: no document was left open
        status = poller.status().stuck
        assert status is not None
        assert status.polls == 2
        assert status.since == stuck.since


# --- the FN number (item 9) ---------------------------------------------------------------------


async def test_one_garbled_fn_answer_changes_nothing(tmp_path: Path) -> None:
    """Issue 11 item 9: an FF01 answer whose FN digits the LRC missed was a "replaced FN"."""
    device = KktDevice(archive=5, strict_output=True)
    async with harness(device, tmp_path) as h:
        poller = h.poller("next")
        await poller.poll()
        device.issue()
        device.issue()
        device.garble_fn(1)
        with capture_logs() as logs:
            assert await poller.poll() == 2
        assert await h.journal.known_fns() == [device.fn]
        assert await h.journaled() == [6, 7]
        assert poller.status().fn == device.fn
    events = [e["event"] for e in logs]
    assert "kkt.fn_replaced" not in events
    assert [e["answered"] for e in logs if e["event"] == "kkt.fn_garbled"] == [garbled(device.fn)]


async def test_a_garbled_first_answer_after_a_start_is_not_believed(tmp_path: Path) -> None:
    device = KktDevice(archive=5, strict_output=True)
    async with harness(device, tmp_path) as h:
        device.garble_fn(1)
        assert await h.poller("first").poll() == 5
        assert await h.journal.known_fns() == [device.fn]
        assert device.executed[Command.FN_STATUS] == 3  # garbled, true, true again


async def test_a_replaced_fn_is_believed_on_two_answers_in_a_row(tmp_path: Path) -> None:
    device = KktDevice(archive=5, strict_output=True)
    async with harness(device, tmp_path) as h:
        poller = h.poller("next")
        await poller.poll()
        device.replace_fn(OTHER_FN)
        device.issue()
        before = device.executed[Command.FN_STATUS]
        assert await poller.poll() == 1
        assert device.executed[Command.FN_STATUS] - before == 2
        assert await h.journaled(OTHER_FN) == [1]
        assert await h.poller("next").poll() == 0  # a new poller confirms it once more, no more


# --- 1040 and 1041 (item 9) ---------------------------------------------------------------------


async def test_an_answer_for_another_fd_is_read_again_and_never_journaled(tmp_path: Path) -> None:
    device = KktDevice(archive=6, strict_output=True)
    async with harness(device, tmp_path) as h:
        poller = h.poller("next")
        await poller.poll()
        for _ in range(3):
            device.issue()
        device.answer_wrong_fd(2)  # FD 7 and then FD 7 again answered with FD 6's bytes
        with capture_logs() as logs:
            assert await poller.poll() == 3
        assert await h.journaled() == [7, 8, 9]  # each with its own raw bytes and fields
    restarts = [e for e in logs if e["event"] == "kkt.document_restarted"]
    assert [(e["fd"], e["attempt"]) for e in restarts] == [(7, 1), (7, 2)]
    assert "FD 6 of FN" in restarts[0]["error"]


def foreign(fd: int, fn: str) -> EmulatedDocument:
    """An FD whose 1041 names another FN (a KKT that answers from the wrong archive)."""
    raw = encode_tlv(1040, encode_u32(fd)) + encode_tlv(1041, encode_string(fn, 16))
    return EmulatedDocument(fd, 3, raw, {"doc_type": 3, "doc_kind": "receipt"})


async def test_an_fd_naming_another_fn_is_never_journaled(tmp_path: Path) -> None:
    device = KktDevice(archive=3, strict_output=True)
    device.add(foreign(4, OTHER_FN))
    device.issue()
    async with harness(device, tmp_path) as h:
        poller = h.poller("first")
        await poller.poll()
        await poller.poll()
        assert await h.journaled() == [1, 2, 3]
        assert await h.journal.get(OTHER_FN, 4) is None
        assert await h.journal.cursor(device.fn) == 3
        stuck = poller.status().stuck
        assert stuck is not None
        assert stuck.fd == 4
        assert "1041" in stuck.error


# --- the operator's skip ------------------------------------------------------------------------


async def test_only_the_stuck_fd_can_be_skipped_and_the_poller_reads_on(tmp_path: Path) -> None:
    device = KktDevice(archive=3, strict_output=True)
    device.add(foreign(4, OTHER_FN))
    device.issue()
    device.issue()
    async with harness(device, tmp_path) as h:
        poller = h.poller("first")
        with pytest.raises(SkipRefused, match="no FD"):
            await poller.skip(device.fn, 4, "not stuck yet", OPERATOR)
        await poller.poll()
        with pytest.raises(SkipRefused, match="failed in 1 poll so far"):
            await poller.skip(device.fn, 4, "too early", OPERATOR)  # a garbled last FD?
        await poller.poll()
        with pytest.raises(SkipRefused, match="stuck on") as refused:
            await poller.skip(device.fn, 5, "the wrong one", OPERATOR)
        assert refused.value.name == "not_stuck"
        record = await poller.skip(device.fn, 4, "service centre: FD 4 unreadable", OPERATOR)
        assert (record.fn, record.fd, record.operator) == (device.fn, 4, "alice")
        assert record.read_error is not None
        assert "1041" in record.read_error
        assert poller.status().stuck is None
        assert await poller.poll() == 2
        assert await h.journaled() == [1, 2, 3, 5, 6]
        assert await h.journal.get(device.fn, 4) is None  # skipped, not journaled
        assert await list_skips(h.journal) == [record]
        with pytest.raises(SkipRefused):
            await poller.skip(device.fn, 4, "again", OPERATOR)
