"""The emulated KKT answers like the vectors of shtrih.txt; each fault switch does what it says."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from kktd.kkt.commands import (
    BUSY_ERRORS,
    Command,
    DeviceType,
    DocumentInfo,
    ErrorCode,
    FnStatus,
    FoundDocument,
    OfdStatus,
    Response,
    decode_response,
    encode_request,
    fd_request,
)
from kktd.kkt.frames import ACK, ENQ, NAK, encode_frame
from kktd.kkt.handshake import ArmTimeout, Done, Exchange, Failed, Send
from kktd.kkt.tlv import decode_document, encode_tlv, iter_tlv
from kktd.testbed.emulator.device import MAX_PIECE, WRONG_PASSWORD, Faults, KktDevice, garbled
from kktd.testbed.emulator.documents import DocumentGenerator, EmulatedDocument
from tests.kkt.test_tlv import RECEIPT_163

PWD = 30
AT_163 = datetime(2017, 3, 24, 20, 53)
GAP = 0.2  # the pause the pty layer leaves between chunks


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def vector_device(*, strict_output: bool = False) -> KktDevice:
    """FN 9999078900005488 holding FDs 161-163 like the vectors, FD 163 being their receipt."""
    generator = DocumentGenerator(wall=lambda: AT_163, next_fd=161, shift=12)
    generator.shift_open = True
    device = KktDevice(generator, strict_output=strict_output)
    for fd, minute in ((161, 41), (162, 47)):
        report = EmulatedDocument(fd, 2, b"", {"issued_at": f"2017-03-24T20:{minute}:00"})
        device.add(report)
    record = decode_document(3, RECEIPT_163).to_fields()
    device.add(EmulatedDocument(163, 3, RECEIPT_163, record))
    device.confirm_ofd()
    return device


def request(cmd: int, data: bytes = b"", password: int | None = PWD) -> bytes:
    return encode_frame(encode_request(cmd, password, data))


def ask(device: KktDevice, cmd: int, data: bytes = b"", password: int | None = PWD) -> Response:
    """Send one command by hand (no faults): expect ACK + answer, ACK it, decode it."""
    out = b"".join(device.feed(request(cmd, data, password)))
    assert out[:1] == bytes([ACK]), out.hex(" ")
    assert device.feed(bytes([ACK])) == []
    return decode_response(out[3:-1])


class Line:
    """The host's real handshake state machine against the device; timeouts simulated.

    Chunks the device wrote after a pause reach the host only once its timer ran out.
    """

    def __init__(self, device: KktDevice) -> None:
        self.device = device
        self.inbox: list[tuple[bool, bytes]] = []  # (after a pause, bytes) written by the device

    def exchange(self, body: bytes) -> Done | Failed:
        # Like Shtrih-M drivers, the host drops unread input before its ENQ: a stale answer
        # resent after garbage would otherwise leave NAKs queued that trigger double sends.
        self.inbox.clear()
        host = Exchange(body, answer_timeout=3.0)
        actions = host.start()
        armed = 0.0
        for _ in range(200):
            for action in actions:
                if isinstance(action, Send):
                    chunks = self.device.feed(action.data)
                    self.inbox += [(i > 0, chunk) for i, chunk in enumerate(chunks)]
                elif isinstance(action, ArmTimeout):
                    armed = action.seconds
                elif isinstance(action, Done | Failed):
                    return action
            paused = bool(self.inbox) and self.inbox[0][0] and armed < GAP
            if self.inbox and not paused:
                actions = host.receive(self.inbox.pop(0)[1])
                continue
            if paused:  # the pause before this chunk outlasts the host's timer
                self.inbox[0] = (False, self.inbox[0][1])
            if self.device.receiving:
                self.device.byte_timeout()
            actions = host.timeout()
        raise AssertionError("the exchange did not finish")

    def command(self, cmd: int, data: bytes = b"") -> Response:
        """One command; busy answers are retried, as the poller does."""
        for _ in range(10):
            result = self.exchange(encode_request(cmd, PWD, data))
            assert isinstance(result, Done), result
            if result.response.error not in BUSY_ERRORS:
                return result.response
        raise AssertionError("still busy")

    def read_fd(self, fd: int) -> tuple[int, bytes]:
        """FF3A then FF3B until 08: (doc type, raw TLV bytes)."""
        opened = self.command(Command.OPEN_FD_TLV, fd_request(fd))
        assert opened.error == ErrorCode.OK
        info = DocumentInfo.decode(opened.data)
        raw = b""
        while (answer := self.command(Command.READ_TLV)).error == ErrorCode.OK:
            raw += answer.data
        assert answer.error == ErrorCode.NO_DATA
        assert len(raw) == info.length
        return info.doc_type, raw


# --- the handshake -----------------------------------------------------------------------------


def test_enq_on_an_idle_kkt_is_answered_nak() -> None:
    assert KktDevice().feed(h("05")) == [h("15")]


def test_ff39_with_nothing_queued_answers_the_captured_bytes() -> None:
    device = KktDevice()
    assert device.feed(h("02 06 FF 39 1E 00 00 00 DE")) == [
        h("06") + h("02 10 FF 39 00 00 00 00 00 00 00 00 00 00 00 00 00 00 D6")
    ]


def test_an_unacknowledged_answer_is_resent_on_enq_and_forgotten_after_ack() -> None:
    device = KktDevice()
    [first] = device.feed(request(Command.FN_STATUS))
    answer = first[1:]
    assert device.feed(bytes([NAK])) == []  # the KKT resends on the ENQ, not on the NAK
    assert device.feed(bytes([ENQ])) == [bytes([ACK]) + answer]
    assert device.feed(bytes([ACK, ENQ])) == [bytes([NAK])]
    assert device.executed[Command.FN_STATUS] == 1


def test_a_frame_with_a_bad_lrc_is_refused_and_not_executed() -> None:
    device = KktDevice()
    frame = request(Command.FN_STATUS)
    assert device.feed(frame[:-1] + bytes([frame[-1] ^ 1])) == [bytes([NAK])]
    assert device.executed.total() == 0
    assert device.feed(bytes([ENQ])) == [bytes([NAK])]


def test_a_frame_cut_short_is_dropped_on_the_byte_timeout() -> None:
    device = KktDevice()
    assert device.feed(request(Command.FN_STATUS)[:4]) == []
    assert device.receiving
    device.byte_timeout()
    assert ask(device, Command.FN_STATUS).error == ErrorCode.OK


# --- the commands --------------------------------------------------------------------------------


def test_fc_names_the_device() -> None:
    answer = ask(KktDevice(), Command.DEVICE_TYPE, password=None)
    assert answer.error == ErrorCode.OK
    assert "ШТРИХ" in DeviceType.decode(answer.data).name


def test_ff01_answers_the_vector_for_fd_163() -> None:
    out = b"".join(vector_device().feed(h("02 06 FF 01 1E 00 00 00 E6")))
    assert out == h("06") + h(
        "02 21 FF 01 00 03 00 00 01 00 11 03 18 14 35 39 39 39 39 30 37 38 39 30 30 30 30 35 34"
        " 38 38 A3 00 00 00 52"
    )


def test_ff39_reports_the_fns_backlog_toward_the_ofd() -> None:
    device = vector_device()
    device.confirm_ofd(160)
    out = b"".join(device.feed(h("02 06 FF 39 1E 00 00 00 DE")))
    assert out == h("06 02 10 FF 39 00 02 00 03 00 A1 00 00 00 11 03 18 14 29 41")
    device.confirm_ofd()
    status = OfdStatus.decode(ask(device, Command.OFD_STATUS).data)
    assert (status.unsent_count, status.first_unsent_at) == (0, None)


def test_ff3a_then_ff3b_answer_the_vectors_until_08() -> None:
    device = vector_device()
    assert b"".join(device.feed(h("02 0A FF 3A 1E 00 00 00 A3 00 00 00 72"))) == h(
        "06 02 07 FF 3A 00 03 00 88 00 49"
    )
    read_tlv = h("06 02 06 FF 3B 1E 00 00 00 DC")  # ACK of the last answer, then FF3B
    answers = [b"".join(device.feed(read_tlv)) for _ in range(14)]
    assert answers[:3] == [
        h("06 02 0F FF 3B 00 18 04 08 00 8E 8E 8E 20 92 85 91 92 65"),
        h("06 02 13 FF 3B 00 FA 03 0C 00 37 37 30 32 32 30 33 32 37 36 20 20 22"),
        h("06 02 0B FF 3B 00 F4 03 04 00 2C 87 D5 58 1A"),
    ]
    assert b"".join(a[6:-1] for a in answers[:13]) == RECEIPT_163
    assert answers[13] == h("06 02 03 FF 3B 08 CF")


def test_a_new_ff3a_restarts_the_document() -> None:
    device = vector_device()
    ask(device, Command.OPEN_FD_TLV, fd_request(163))
    ask(device, Command.READ_TLV)
    ask(device, Command.OPEN_FD_TLV, fd_request(163))
    assert ask(device, Command.READ_TLV).data == RECEIPT_163[:12]


def test_ff0a_finds_an_fd_with_its_ofd_confirmation() -> None:
    device = vector_device()
    device.confirm_ofd(162)
    found = FoundDocument.decode(ask(device, Command.FIND_FD, fd_request(163)).data)
    assert (found.doc_type, found.ofd_confirmed) == (3, False)
    assert found.data[:5] == h("11 03 18 14 35")
    assert int.from_bytes(found.data[5:9], "little") == 163
    assert int.from_bytes(found.data[9:13], "little") == 2853205313


@pytest.mark.parametrize(
    ("cmd", "data", "password", "error"),
    [
        (0x10, b"", PWD, ErrorCode.NOT_SUPPORTED),  # short status: not emulated
        (0xFF0C, b"", PWD, ErrorCode.NOT_SUPPORTED),
        (Command.OPEN_FD_TLV, b"\xa3\x00\x00", PWD, ErrorCode.BAD_PARAMETERS),
        (Command.OPEN_FD_TLV, fd_request(999), PWD, ErrorCode.NO_DATA),
        (Command.FIND_FD, fd_request(0), PWD, ErrorCode.NO_DATA),
        (Command.FN_STATUS, b"\x00", PWD, ErrorCode.BAD_PARAMETERS),
        (Command.READ_TLV, b"", PWD, ErrorCode.WRONG_FN_STATE),  # no FF3A before
        (Command.FN_STATUS, b"", 29, WRONG_PASSWORD),
    ],
)
def test_bad_requests_get_their_error_byte_and_no_data(
    cmd: int, data: bytes, password: int, error: int
) -> None:
    answer = ask(vector_device(), cmd, data, password)
    assert (answer.cmd, answer.error, answer.data) == (cmd, error, b"")


def test_a_request_without_its_password_is_bad_parameters() -> None:
    out = b"".join(KktDevice().feed(encode_frame(h("FF 01 1E"))))
    assert out == h("06 02 03 FF 01 33 CE")


def test_strict_output_refuses_fn_queries_until_the_document_is_read() -> None:
    device = vector_device(strict_output=True)
    ask(device, Command.OPEN_FD_TLV, fd_request(163))
    assert ask(device, Command.FN_STATUS).error == ErrorCode.WRONG_FN_STATE
    while ask(device, Command.READ_TLV).error == ErrorCode.OK:
        pass
    assert ask(device, Command.FN_STATUS).error == ErrorCode.OK


# --- the archive -------------------------------------------------------------------------------


def test_the_host_reads_every_fd_byte_for_byte_as_recorded() -> None:
    device = KktDevice(DocumentGenerator(rng=random.Random(3)), archive=40)
    line = Line(device)
    status = FnStatus.decode(line.command(Command.FN_STATUS).data)
    assert (status.fn, status.last_fd) == ("9999078900005488", 40)
    for document in device.documents:
        doc_type, raw = line.read_fd(document.fd)
        assert (doc_type, raw) == (document.doc_type, document.raw)
        assert decode_document(doc_type, raw).to_fields() == document.record


def test_issuing_at_runtime_grows_the_archive_and_the_ofd_queue() -> None:
    device = KktDevice(archive=3)
    receipt = device.issue_receipt()
    assert receipt.doc_type == 3
    assert device.last_fd == receipt.fd
    status = OfdStatus.decode(ask(device, Command.OFD_STATUS).data)
    assert (status.unsent_count, status.first_unsent_fd) == (1, receipt.fd)


def test_a_closed_shift_is_opened_before_a_receipt() -> None:
    device = KktDevice()
    receipt = device.issue_receipt(operation=2)
    assert [d.doc_type for d in device.documents] == [2, 3]
    assert receipt.record["operation"] == 2


def test_a_replaced_fn_starts_again_from_fd_1() -> None:
    device = KktDevice(archive=5)
    device.replace_fn("9999078900009999")
    assert FnStatus.decode(ask(device, Command.FN_STATUS).data).last_fd == 0
    assert device.issue().fd == 1
    assert decode_document(2, device.documents[0].raw).fn == "9999078900009999"


def test_added_fds_must_follow_the_archive() -> None:
    device = KktDevice(archive=2)
    with pytest.raises(ValueError, match="does not follow"):
        device.add(EmulatedDocument(2, 3, b"", {}))


def read_pieces(device: KktDevice, fd: int) -> list[bytes]:
    """FF3A, then the data of every FF3B answer until 08."""
    ask(device, Command.OPEN_FD_TLV, fd_request(fd))
    pieces = []
    while (answer := ask(device, Command.READ_TLV)).error == ErrorCode.OK:
        pieces.append(answer.data)
    assert answer.error == ErrorCode.NO_DATA
    return pieces


LONG = encode_tlv(1048, bytes(248)), encode_tlv(1084, bytes(328)), encode_tlv(1209, b"\x02")


def test_a_tlv_longer_than_an_answer_comes_in_pieces_of_at_most_252_bytes() -> None:
    device = KktDevice(archive=2)
    device.add(EmulatedDocument(3, 3, b"".join(LONG), {}))
    pieces = read_pieces(device, 3)
    assert pieces == [LONG[0], LONG[1][:252], LONG[1][252:], LONG[2]]
    assert len(LONG[0]) == len(LONG[1][:252]) == MAX_PIECE == 252


def test_the_old_shape_is_one_whole_tlv_per_answer_and_refuses_a_longer_one() -> None:
    device = KktDevice(archive=2, ff3b="tlv")
    device.add(EmulatedDocument(3, 3, LONG[0] + LONG[2], {}))
    assert read_pieces(device, 3) == [LONG[0], LONG[2]]
    with pytest.raises(ValueError, match="longer"):
        device.add(EmulatedDocument(4, 3, b"".join(LONG), {}))


def test_blocks_cut_the_stream_wherever_they_fall() -> None:
    device = KktDevice(archive=2, ff3b="blocks", ff3b_block=100)
    raw = b"".join(LONG)
    device.add(EmulatedDocument(3, 3, raw, {}))
    pieces = read_pieces(device, 3)
    assert [len(piece) for piece in pieces] == [100] * 5 + [len(raw) - 500]
    assert b"".join(pieces) == raw
    with pytest.raises(ValueError, match="ff3b_block"):
        KktDevice(ff3b="blocks", ff3b_block=253)


def test_receipts_with_a_long_requisite_are_issued_at_the_rate_asked() -> None:
    generator = DocumentGenerator(rng=random.Random(3), requisite_rate=0.5)
    device = KktDevice(generator, archive=60)
    long_ones = [d for d in device.documents if any(t.tag == 1084 for t in iter_tlv(d.raw))]
    assert 10 < len(long_ones) < 50
    for document in long_ones:
        [requisite] = [t for t in iter_tlv(document.raw) if t.tag == 1084]
        assert 4 + len(requisite.value) == 332  # 64-byte name, 256-byte value
        assert b"".join(read_pieces(device, document.fd)) == document.raw
        assert decode_document(3, document.raw).to_fields() == document.record


# --- fault switches ----------------------------------------------------------------------------


def test_bad_lrc_on_the_next_answers_makes_the_host_nak_and_enq_until_good() -> None:
    device = vector_device()
    device.corrupt_lrc(2)
    answer = Line(device).command(Command.FN_STATUS)
    assert FnStatus.decode(answer.data).last_fd == 163
    assert (device.stats["nak"], device.stats["resent"]) == (2, 2)
    assert device.executed[Command.FN_STATUS] == 1
    assert device.faults.bad_lrc == 0


def test_a_lost_ack_holds_the_answer_until_the_host_enqs() -> None:
    device = vector_device()
    ask(device, Command.OPEN_FD_TLV, fd_request(163))
    device.lose_acks(1)
    assert device.feed(request(Command.READ_TLV)) == []
    out = b"".join(device.feed(bytes([ENQ])))
    assert out[:1] == bytes([ACK])
    assert decode_response(out[3:-1]).data == RECEIPT_163[:12]
    assert device.executed[Command.READ_TLV] == 1  # executed once: no TLV skipped


def test_a_lost_ack_still_lets_the_host_read_the_whole_fd() -> None:
    device = vector_device()
    device.lose_acks(3)
    assert Line(device).read_fd(163) == (3, RECEIPT_163)


def test_a_stray_ff_comes_before_the_next_control_bytes() -> None:
    device = KktDevice()
    device.stray_ff(2)
    assert device.feed(h("05")) == [h("FF 15")]
    [out] = device.feed(request(Command.FN_STATUS))
    assert out[:2] == h("FF 06")
    assert device.feed(h("06 05")) == [h("15")]
    device.stray_ff(5)
    assert Line(device).command(Command.FN_STATUS).error == ErrorCode.OK


def test_busy_answers_0x50_for_the_next_commands_without_executing_them() -> None:
    device = KktDevice()
    device.busy(2)
    errors = [ask(device, Command.FN_STATUS).error for _ in range(3)]
    assert errors == [ErrorCode.PRINTING, ErrorCode.PRINTING, ErrorCode.OK]
    assert device.executed[Command.FN_STATUS] == 1


def test_busy_for_a_while_follows_the_injected_clock() -> None:
    now = [100.0]
    device = KktDevice(monotonic=lambda: now[0])
    device.busy_for(5.0)
    assert ask(device, Command.FN_STATUS).error == ErrorCode.PRINTING
    now[0] = 104.9
    assert ask(device, Command.DEVICE_TYPE, password=None).error == ErrorCode.PRINTING
    now[0] = 105.0
    assert ask(device, Command.FN_STATUS).error == ErrorCode.OK


def test_garbage_is_written_between_the_ack_and_the_answer_after_a_pause() -> None:
    device = KktDevice()
    device.inject_garbage(h("02 FF"))  # a frame with LEN 255 and nothing after it
    chunks = device.feed(request(Command.FN_STATUS))
    assert chunks[0] == h("06 02 FF")
    assert decode_response(chunks[1][2:-1]).cmd == Command.FN_STATUS
    device.feed(bytes([ACK]))
    device.inject_garbage(h("02 FF 13 37"))
    device.inject_garbage(bytes(range(7, 40)))
    line = Line(device)
    for _ in range(3):
        assert FnStatus.decode(line.command(Command.FN_STATUS).data).last_fd == 0
    assert device.faults.garbage == []


def test_a_garbled_fn_keeps_16_digits_and_the_lrc_of_the_true_answer() -> None:
    device = vector_device()
    honest = b"".join(device.feed(request(Command.FN_STATUS)))
    device.feed(bytes([ACK]))
    device.garble_fn(1)
    out = b"".join(device.feed(request(Command.FN_STATUS)))
    device.feed(bytes([ACK]))
    assert out != honest
    assert out[-1] == honest[-1]  # other bytes, the same XOR LRC
    status = FnStatus.decode(decode_response(out[3:-1]).data)  # still a well-formed answer
    assert status.fn == garbled(device.fn) != device.fn
    assert FnStatus.decode(ask(device, Command.FN_STATUS).data).fn == device.fn  # just once
    assert device.faults.garbled_fn == 0


def test_a_wrong_fd_read_serves_the_neighbouring_document_once() -> None:
    device = KktDevice(archive=5)
    device.answer_wrong_fd(1)
    assert b"".join(read_pieces(device, 3)) == device.documents[1].raw  # FD 2's bytes
    assert b"".join(read_pieces(device, 3)) == device.documents[2].raw
    assert device.faults.wrong_fd == 0


def test_all_faults_at_once_still_end_in_a_complete_read() -> None:
    device = KktDevice(DocumentGenerator(rng=random.Random(5)), archive=8)
    line = Line(device)
    device.corrupt_lrc(3)
    device.lose_acks(2)
    device.stray_ff(4)
    device.busy(2)
    device.inject_garbage(h("02 FF 00 13"))
    for document in device.documents:
        assert line.read_fd(document.fd) == (document.doc_type, document.raw)
    assert device.faults == Faults()
