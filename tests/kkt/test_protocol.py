"""The pure Shtrih-M core: every vector of vectors/shtrih.txt, the handshake, and fuzzing."""

# The vectors below are kept verbatim, long lines included, so they can be diffed against the
# contract file: hence no line-length rule in this module.

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kktd.kkt.commands import (
    NO_DATE,
    Command,
    DeviceType,
    DocumentInfo,
    ErrorCode,
    FnStatus,
    FoundDocument,
    OfdStatus,
    PayloadError,
    Request,
    Response,
    answer_timeout,
    command_bytes,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_name,
    fd_request,
)
from kktd.kkt.frames import (
    ACK,
    ENQ,
    MAX_FRAME,
    NAK,
    STX,
    BadFrame,
    ControlByte,
    Event,
    Frame,
    FrameError,
    FrameParser,
    Noise,
    ProtocolError,
    encode_frame,
    lrc,
)
from kktd.kkt.handshake import Action, ArmTimeout, Discarded, Done, Exchange, Failed, Send, leftover
from tests.kkt.vectors import ALL_VECTORS, Vector

BY_LABEL = {v.label: v for v in ALL_VECTORS}


def body_of(frame: bytes) -> bytes:
    events = FrameParser().feed(frame)
    assert len(events) == 1, events
    assert isinstance(events[0], Frame), events
    return events[0].body


def test_the_transcription_holds_every_vector_of_the_file() -> None:
    assert len(ALL_VECTORS) == 21
    assert sum(len(v.lines) for v in ALL_VECTORS) == 31


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=[v.label for v in ALL_VECTORS])
def test_vector_frames_parse_and_reencode_byte_for_byte(vector: Vector) -> None:
    for _, raw in vector.lines:
        if raw[0] == STX:
            assert encode_frame(body_of(raw)) == raw
        else:
            assert all(b in (ENQ, ACK, NAK, 0xFF) for b in raw)


# --- one semantic check per vector, named by its label ----------------------------------------


def check_enq_on_idle(v: Vector) -> None:
    exchange = Exchange(encode_request(Command.FN_STATUS, 30), answer_timeout=3.0)
    assert sends(exchange.start()) == [v.lines[0][1]]
    assert sends(exchange.receive(v.lines[1][1])) == [encode_frame(encode_request(0xFF01, 30))]


def check_ff39_request(v: Vector) -> None:
    (frame,) = v.frames("->")
    assert encode_frame(encode_request(Command.OFD_STATUS, 30)) == frame
    assert decode_request(body_of(frame)) == Request(0xFF39, 30, b"")


def check_ff39_nothing_queued(v: Vector) -> None:
    (frame,) = v.frames("<-")
    response = decode_response(body_of(frame))
    assert (response.cmd, response.error) == (0xFF39, 0)
    assert OfdStatus.decode(response.data) == OfdStatus(0, False, 0, 0, None)


def check_short_status(v: Vector) -> None:
    (request,) = v.frames("->")
    assert encode_frame(encode_request(0x10, 28)) == request
    exchange = Exchange(body_of(request), answer_timeout=3.0)
    exchange.start()
    exchange.receive(bytes([NAK]))
    exchange.receive(v.lines[1][1])  # the ACK
    actions = exchange.receive(v.frames("<-")[0])
    assert actions == [
        Send(bytes([ACK])),
        Done(Response(0x10, 0, bytes.fromhex("1C 90 02 02 00 00 9D D7 D3 01 00 A0 02 00"))),
    ]


def check_ff32_start(v: Vector) -> None:
    (frame,) = v.frames("->")
    assert encode_frame(encode_request(0xFF32, 30, struct.pack("<H", 121))) == frame
    exchange = Exchange(body_of(frame), answer_timeout=30.0)
    exchange.start()
    exchange.receive(bytes([NAK]))
    assert exchange.receive(v.lines[1][1]) == [ArmTimeout(30.0)]
    assert exchange.state == "answer"


def check_error_answer(v: Vector) -> None:
    (frame,) = v.frames("<-")
    response = decode_response(body_of(frame))
    assert response == Response(0xFF0C, 0x33, b"")
    assert error_name(response.error) == "bad_parameters"
    assert encode_frame(encode_response(0xFF0C, ErrorCode.BAD_PARAMETERS)) == frame


def check_stray_ff(v: Vector) -> None:
    exchange = Exchange(encode_request(Command.FN_STATUS, 30), answer_timeout=3.0)
    assert sends(exchange.start()) == [v.lines[0][1]]
    assert exchange.receive(v.lines[1][1]) == [Discarded("stray_ff", b"\xff")]
    assert sends(exchange.receive(v.lines[2][1])) == [encode_frame(b"\xff\x01\x1e\x00\x00\x00")]


def check_fc_request(v: Vector) -> None:
    (frame,) = v.frames("->")
    assert encode_frame(encode_request(Command.DEVICE_TYPE, None)) == frame
    assert decode_request(body_of(frame)) == Request(0xFC, None, b"")


def check_ff01_request(v: Vector) -> None:
    (frame,) = v.frames("->")
    assert encode_frame(encode_request(Command.FN_STATUS, 30)) == frame


def check_ff01_response(v: Vector) -> None:
    response = decode_response(body_of(v.frames("<-")[0]))
    status = FnStatus.decode(response.data)
    assert status == FnStatus(
        phase=3,
        current_doc=0,
        doc_data=0,
        shift_open=True,
        warning_flags=0,
        at=datetime(2017, 3, 24, 20, 53),
        fn="9999078900005488",
        last_fd=163,
    )
    assert encode_frame(encode_response(0xFF01, 0, status.encode())) == v.frames("<-")[0]


def check_ff39_pending(v: Vector) -> None:
    response = decode_response(body_of(v.frames("<-")[0]))
    status = OfdStatus.decode(response.data)
    assert status == OfdStatus(2, False, 3, 161, datetime(2017, 3, 24, 20, 41))
    assert status.encode() == response.data


def check_ff3a_request(v: Vector) -> None:
    (frame,) = v.frames("->")
    assert encode_frame(encode_request(Command.OPEN_FD_TLV, 30, fd_request(163))) == frame
    assert decode_request(body_of(frame)) == Request(0xFF3A, 30, b"\xa3\x00\x00\x00")


def check_ff3a_response(v: Vector) -> None:
    response = decode_response(body_of(v.frames("<-")[0]))
    assert DocumentInfo.decode(response.data) == DocumentInfo(doc_type=3, length=136)


def check_ff3b_request(v: Vector) -> None:
    assert encode_frame(encode_request(Command.READ_TLV, 30)) == v.frames("->")[0]


def check_ff3b_responses(v: Vector) -> None:
    tlvs = []
    for frame in v.frames("<-"):
        response = decode_response(body_of(frame))
        assert (response.cmd, response.error) == (0xFF3B, 0)
        tag, length = struct.unpack_from("<HH", response.data)
        assert len(response.data) == 4 + length  # one whole TLV per answer
        tlvs.append((tag, response.data[4:]))
    assert tlvs == [
        (1048, "ООО ТЕСТ".encode("cp866")),
        (1018, b"7702203276  "),
        (1012, struct.pack("<I", 1490388780)),
    ]


def check_ff3b_end(v: Vector) -> None:
    response = decode_response(body_of(v.frames("<-")[0]))
    assert response == Response(0xFF3B, ErrorCode.NO_DATA, b"")
    assert error_name(response.error) == "no_data"


def check_ff30(v: Vector) -> None:
    assert encode_frame(encode_request(0xFF30, 30)) == v.frames("->")[0]
    response = decode_response(body_of(v.frames("<-")[0]))
    assert struct.unpack("<HB", response.data) == (334, 240)


def check_ff31(v: Vector) -> None:
    request = decode_request(body_of(v.frames("->")[0]))
    assert request == Request(0xFF31, 30, struct.pack("<HB", 0, 240))


def check_ff32_answer(v: Vector) -> None:
    assert decode_response(body_of(v.frames("<-")[0])) == Response(0xFF32, 0, b"\xf0")


def check_ff33(v: Vector) -> None:
    request = decode_request(body_of(v.frames("->")[0]))
    assert request == Request(0xFF33, 30, b"\x00\x00\x03\x2a\x08\x41")
    assert encode_frame(encode_response(0xFF33, 0)) == v.frames("<-")[0]


def check_table_read(v: Vector) -> None:
    data = struct.pack("<BHB", 19, 1, 1)
    assert encode_frame(encode_request(0x1F, 30, data)) == v.frames("->")[0]


CHECKS: dict[str, Callable[[Vector], None]] = {
    "ENQ on an idle KKT": check_enq_on_idle,
    "FF39 request, password 30": check_ff39_request,
    "FF39 response, nothing queued for the OFD": check_ff39_nothing_queued,
    "10h short status, password 28, and its answer": check_short_status,
    "FF32 start writing a 121-byte OFD answer": check_ff32_start,
    "error answer: FF0C failed with 33h (bad parameters)": check_error_answer,
    "ENQ answered with a stray FF before the control byte (USB/RNDIS)": check_stray_ff,
    "FC device type request (no password)": check_fc_request,
    "FF01 FN status request": check_ff01_request,
    "FF01 response: phase 03, no open document, shift open, 2017-03-24 20:53, FN "
    "9999078900005488, last FD 163": check_ff01_response,
    "FF39 response: message pending, 3 queued for the OFD, first unsent FD 161, "
    "2017-03-24 20:41": check_ff39_pending,
    "FF3A open FD 163 as TLV": check_ff3a_request,
    "FF3A response: type 3 (receipt), 136 bytes": check_ff3a_response,
    "FF3B read next TLV": check_ff3b_request,
    'FF3B responses, one TLV each: 1048 "ООО ТЕСТ" (cp866), 1018 INN, 1012 = 1490388780': (
        check_ff3b_responses
    ),
    "FF3B end of document (error 08)": check_ff3b_end,
    "FF30 OFD read-buffer status request, and answer: 334 bytes pending, block 240": check_ff30,
    "FF31 read block at offset 0, 240 bytes": check_ff31,
    "FF32 answer: block size 240": check_ff32_answer,
    "FF33 write 3 bytes at offset 0, and its answer": check_ff33,
    "1Fh read table 19 row 1 field 1": check_table_read,
}


def test_every_vector_has_a_semantic_check() -> None:
    assert set(CHECKS) == set(BY_LABEL)


@pytest.mark.parametrize("label", list(CHECKS))
def test_vector_means_what_its_label_says(label: str) -> None:
    CHECKS[label](BY_LABEL[label])


# --- codecs -----------------------------------------------------------------------------------


def test_lrc_is_the_xor_of_len_and_body() -> None:
    assert lrc(b"\x06\xff\x39\x1e\x00\x00\x00") == 0xDE
    assert lrc(b"") == 0


@pytest.mark.parametrize("size", [0, 256])
def test_frame_body_outside_1_to_255_bytes_is_refused(size: int) -> None:
    with pytest.raises(FrameError):
        encode_frame(bytes(size))


def test_command_bytes_put_fn_commands_high_byte_first() -> None:
    assert command_bytes(0xFC) == b"\xfc"
    assert command_bytes(0xFF01) == b"\xff\x01"
    for bad in (0xFF, 0x100, 0x1FF01, -1):
        with pytest.raises(FrameError):
            command_bytes(bad)


def test_error_names_known_and_unknown() -> None:
    assert error_name(0x50) == "printing"
    assert error_name(0x58) == "printing_continues"
    assert error_name(0x14) == "ofd_storage_exhausted"
    assert error_name(0x4F) == "unknown_0x4f"


def test_answer_timeouts_are_short_for_status_commands_only() -> None:
    assert [answer_timeout(c) for c in (0xFC, 0xFF01, 0xFF39, 0xFF0A)] == [3.0] * 4
    assert answer_timeout(0xFF3B) == answer_timeout(0xFF3A) == 30.0


@pytest.mark.parametrize(
    "body", [b"", b"\xff", b"\xff\x3a\x1e\x00"], ids=["empty", "ff-only", "short-password"]
)
def test_malformed_request_bodies_raise_frame_errors(body: bytes) -> None:
    with pytest.raises(FrameError):
        decode_request(body)


def test_an_error_answer_refuses_data_and_a_bare_command_is_no_answer() -> None:
    with pytest.raises(FrameError):
        encode_response(0xFF3B, 0x08, b"x")
    with pytest.raises(FrameError):
        decode_response(b"\xff\x3b")


def test_short_payloads_and_impossible_dates_raise_payload_errors() -> None:
    decoders: list[tuple[Callable[[bytes], object], bytes]] = [
        (DeviceType.decode, b"\x00" * 5),
        (FnStatus.decode, b"\x00" * 29),
        (OfdStatus.decode, b"\x00" * 12),
        (DocumentInfo.decode, b"\x00" * 3),
        (FoundDocument.decode, b"\x00"),
    ]
    for decode, data in decoders:
        with pytest.raises(PayloadError):
            decode(data)
    with pytest.raises(PayloadError):
        OfdStatus.decode(bytes([0, 0, 1, 0, 1, 0, 0, 0, 17, 13, 40, 0, 0]))


def test_fn_status_with_an_all_zero_date_decodes_to_no_date() -> None:
    status = FnStatus(1, 0, 0, False, 0, NO_DATE, "9999078900005488", 0)
    data = bytearray(status.encode())
    data[5:10] = bytes(5)
    assert FnStatus.decode(bytes(data)) == status


def test_parser_reports_bad_lrc_zero_length_and_noise() -> None:
    parser = FrameParser()
    good = encode_frame(b"\xff\x3b\x08")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    events = parser.feed(b"\x01\xff" + bad + b"\x02\x00\x00" + b"\x06" + good)
    assert events == [
        Noise(b"\x01\xff"),
        BadFrame(b"\xff\x3b\x08", "bad_lrc"),
        BadFrame(b"", "zero_length"),
        Noise(b"\x00"),
        ControlByte(ACK),
        Frame(b"\xff\x3b\x08"),
    ]


def test_parser_reset_drops_a_frame_cut_short() -> None:
    parser = FrameParser()
    assert parser.feed(b"\x02\xff\x01\x02") == []
    assert parser.busy
    assert parser.buffered == 4
    parser.reset()
    assert (parser.busy, parser.buffered) == (False, 0)
    assert parser.feed(encode_frame(b"\xfc")) == [Frame(b"\xfc")]


# --- the host-side handshake ------------------------------------------------------------------

FN_STATUS_BODY = encode_request(Command.FN_STATUS, 30)
FN_STATUS_FRAME = encode_frame(FN_STATUS_BODY)
ANSWER = encode_frame(encode_response(0xFF01, 0, b"\x01\x02"))
ANSWER_DONE = Done(Response(0xFF01, 0, b"\x01\x02"))
BAD_ANSWER = ANSWER[:-1] + bytes([ANSWER[-1] ^ 0x55])
ENQ_B, ACK_B, NAK_B = bytes([ENQ]), bytes([ACK]), bytes([NAK])


def sends(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Send)]


def new_exchange(**kwargs: float) -> Exchange:
    return Exchange(FN_STATUS_BODY, answer_timeout=3.0, **kwargs)  # type: ignore[arg-type]


def idle_and_sent(exchange: Exchange) -> None:
    exchange.start()
    assert sends(exchange.receive(NAK_B)) == [FN_STATUS_FRAME]


def test_idle_kkt_command_is_sent_acked_and_answered() -> None:
    exchange = new_exchange(control_timeout=0.5)
    assert exchange.start() == [Send(ENQ_B), ArmTimeout(0.5)]
    assert exchange.receive(NAK_B) == [Send(FN_STATUS_FRAME), ArmTimeout(0.5)]
    assert exchange.receive(ACK_B) == [ArmTimeout(3.0)]
    assert exchange.receive(ANSWER) == [Send(ACK_B), ANSWER_DONE]
    assert exchange.finished
    assert exchange.receive(b"\x15") == []
    assert exchange.timeout() == []


def test_pending_answer_is_drained_acked_and_enq_repeated_before_sending() -> None:
    stale = encode_frame(encode_response(0xFF3B, 0, b"old"))
    exchange = new_exchange()
    exchange.start()
    assert exchange.receive(ACK_B) == [ArmTimeout(3.0)]
    actions = exchange.receive(stale)
    assert actions[:2] == [Send(ACK_B), Discarded("stale_answer", stale[2:-1])]
    assert sends(actions) == [ACK_B, ENQ_B]
    assert sends(exchange.receive(NAK_B)) == [FN_STATUS_FRAME]
    exchange.receive(ACK_B)
    assert exchange.receive(ANSWER)[-1] == ANSWER_DONE


def test_nak_on_the_frame_resends_at_most_ten_times() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    for _ in range(9):
        assert sends(exchange.receive(NAK_B)) == [FN_STATUS_FRAME]
    assert exchange.receive(NAK_B) == [Failed("rejected", "frame refused 10 times")]


def test_bad_lrc_answer_is_naked_then_enq_and_the_resent_answer_taken() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    actions = exchange.receive(BAD_ANSWER)
    assert sends(actions) == [bytes([NAK, ENQ])]
    assert exchange.receive(ACK_B) == [ArmTimeout(3.0)]
    assert exchange.receive(ANSWER)[-1] == ANSWER_DONE


def test_eleven_bad_answers_give_up() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    for _ in range(10):
        assert sends(exchange.receive(BAD_ANSWER)) == [bytes([NAK, ENQ])]
        exchange.receive(ACK_B)
    failed = exchange.receive(BAD_ANSWER)[-1]
    assert isinstance(failed, Failed)
    assert failed.reason == "bad_answer"


def test_lost_ack_is_asked_with_enq_and_the_answer_not_requested_twice() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    assert sends(exchange.timeout()) == [ENQ_B]
    exchange.receive(ACK_B)  # "preparing the answer": the frame did arrive
    assert exchange.receive(ANSWER)[-1] == ANSWER_DONE


def test_lost_frame_is_resent_when_the_kkt_says_idle() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.timeout()
    assert sends(exchange.receive(NAK_B)) == [FN_STATUS_FRAME]


def test_answer_arriving_without_its_ack_is_taken() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    assert exchange.receive(ANSWER) == [Send(ACK_B), ANSWER_DONE]


def test_three_unanswered_enqs_mean_no_link() -> None:
    exchange = new_exchange()
    exchange.start()
    assert sends(exchange.timeout()) == [ENQ_B]
    assert sends(exchange.timeout()) == [ENQ_B]
    assert exchange.timeout() == [Failed("no_link", "no answer to 3 ENQs")]


def test_frame_cut_short_is_caught_by_the_byte_timeout_and_asked_again() -> None:
    exchange = new_exchange(byte_timeout=0.1)
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    assert exchange.receive(b"\x02\xff") == [ArmTimeout(0.1)]  # LEN 255 and nothing after
    assert exchange.receive(b"\xff\x01") == [ArmTimeout(0.1)]
    actions = exchange.timeout()
    assert actions[0] == Discarded("bad_frame", b"")
    assert sends(actions) == [bytes([NAK, ENQ])]
    exchange.receive(ACK_B)
    assert exchange.receive(ANSWER)[-1] == ANSWER_DONE


def test_answer_to_another_command_fails_the_exchange() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    actions = exchange.receive(encode_frame(encode_response(0xFF3B, 8)))
    assert actions[0] == Send(ACK_B)
    assert isinstance(actions[-1], Failed)
    assert actions[-1].reason == "wrong_answer"


def test_accepted_command_whose_answer_never_comes_is_reported_lost() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    assert sends(exchange.timeout()) == [ENQ_B]
    failed = exchange.receive(NAK_B)[-1]
    assert isinstance(failed, Failed)
    assert failed.reason == "answer_lost"


def test_noise_while_waiting_does_not_extend_the_wait() -> None:
    exchange = new_exchange()
    idle_and_sent(exchange)
    exchange.receive(ACK_B)
    assert exchange.receive(b"\x41\x42\xff") == [Discarded("noise", b"\x41\x42\xff")]


# --- properties -------------------------------------------------------------------------------

bodies = st.binary(min_size=1, max_size=255)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def event_size(event: Event) -> int:
    match event:
        case ControlByte():
            return 1
        case Noise(data):
            return len(data)
        case Frame(body) | BadFrame(body, "bad_lrc"):
            return len(body) + 3
        case BadFrame():
            return 2


@given(bodies, st.lists(st.integers(0, 300), max_size=8))
def test_frames_round_trip_whatever_the_chunking(body: bytes, cuts: list[int]) -> None:
    parser = FrameParser()
    events: list[Event] = []
    for chunk in chunked(encode_frame(body), cuts):
        events += parser.feed(chunk)
    assert events == [Frame(body)]
    assert not parser.busy


commands = st.one_of(st.integers(0, 0xFE), st.integers(0xFF00, 0xFFFF))


@given(commands, st.integers(0, 2**32 - 1), st.binary(max_size=249))
def test_requests_round_trip(cmd: int, password: int, data: bytes) -> None:
    pwd = None if cmd == Command.DEVICE_TYPE else password
    body = encode_request(cmd, pwd, data)
    assert decode_request(body) == Request(cmd, pwd, data)


@given(commands, st.integers(0, 255), st.binary(max_size=252))
def test_responses_round_trip(cmd: int, error: int, data: bytes) -> None:
    payload = b"" if error else data
    assert decode_response(encode_response(cmd, error, payload)) == Response(cmd, error, payload)


byte = st.integers(0, 255)
dates = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0)
)
cp1251_text = st.text(st.characters(codec="cp1251"), max_size=40)


@st.composite
def ofd_statuses(draw: st.DrawFn) -> OfdStatus:
    count = draw(st.integers(0, 0xFFFF))
    first_at = draw(dates) if count else None
    return OfdStatus(
        draw(byte), draw(st.booleans()), count, draw(st.integers(0, 2**32 - 1)), first_at
    )


payloads = st.one_of(
    st.builds(DeviceType, byte, byte, byte, byte, byte, byte, cp1251_text),
    st.builds(
        FnStatus,
        byte,
        byte,
        byte,
        st.booleans(),
        byte,
        dates,
        st.text("0123456789", min_size=16, max_size=16),
        st.integers(0, 2**32 - 1),
    ),
    ofd_statuses(),
    st.builds(DocumentInfo, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.builds(FoundDocument, byte, st.booleans(), st.binary(max_size=200)),
)


@given(payloads)
def test_typed_payloads_round_trip(
    payload: DeviceType | FnStatus | OfdStatus | DocumentInfo | FoundDocument,
) -> None:
    assert type(payload).decode(payload.encode()) == payload


frame_bytes = bodies.map(encode_frame)
stream_parts = st.one_of(
    st.binary(max_size=40),
    frame_bytes,
    frame_bytes.flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda n: f[:n])),
    st.sampled_from([b"\x02\xff", b"\x02\x00", b"\xff", b"\x05\x06\x15"]),
)


@given(st.lists(stream_parts, max_size=12), st.lists(st.integers(0, 5000), max_size=20))
def test_any_stream_yields_only_events_and_holds_at_most_one_frame(
    parts: list[bytes], cuts: list[int]
) -> None:
    parser = FrameParser()
    stream = b"".join(parts)
    accounted = 0
    for chunk in chunked(stream, cuts):
        for event in parser.feed(chunk):
            assert isinstance(event, ControlByte | Frame | BadFrame | Noise)
            accounted += event_size(event)
        assert parser.buffered <= MAX_FRAME
    assert accounted + parser.buffered == len(stream)  # every byte is reported exactly once


@given(st.binary(max_size=600), bodies)
def test_after_garbage_and_a_byte_timeout_the_next_frame_parses(
    garbage: bytes, body: bytes
) -> None:
    parser = FrameParser()
    parser.feed(garbage)
    parser.reset()
    assert parser.feed(encode_frame(body)) == [Frame(body)]


operations = st.lists(
    st.one_of(st.none(), st.binary(min_size=1, max_size=30), stream_parts), max_size=30
)


@settings(max_examples=300)
@given(operations)
def test_handshake_never_raises_on_any_input_and_always_ends_on_timeouts(
    ops: list[bytes | None],
) -> None:
    exchange = new_exchange()
    exchange.start()
    for op in ops:
        try:
            exchange.receive(op) if op is not None else exchange.timeout()
        except ProtocolError:  # pragma: no cover - the property is that this never happens
            pytest.fail("the handshake raised")
    for _ in range(40):  # a silent line: the exchange must give up, not wait forever
        exchange.timeout()
    assert exchange.finished


# --- the stray FF (USB, RNDIS/TCP): skipped, and told apart from noise ----------------------------


def test_a_lone_ff_is_the_kkts_stray_byte_and_a_run_of_them_is_noise() -> None:
    assert leftover(b"\xff") == Discarded("stray_ff", b"\xff")
    assert leftover(b"\xff\xff") == Discarded("stray_ff", b"\xff\xff")
    assert leftover(b"\xff\xff\xff") == Discarded("noise", b"\xff\xff\xff")
    assert leftover(b"\x41\xff") == Discarded("noise", b"\x41\xff")


def test_the_ff_sent_after_our_ack_is_skipped_at_the_start_of_the_next_exchange() -> None:
    exchange = Exchange(encode_request(Command.FN_STATUS, 30), answer_timeout=3.0)
    exchange.start()
    frame = encode_frame(encode_request(Command.FN_STATUS, 30))
    assert exchange.receive(b"\xff\x15") == [
        Discarded("stray_ff", b"\xff"),
        Send(frame),
        ArmTimeout(0.5),
    ]


# --- the sliced frame parser against the byte-at-a-time definition --------------------------


def reference_events(stream: bytes) -> list[Event]:
    """The parser's contract spelled out one byte at a time (how `feed` used to run)."""
    events: list[Event] = []
    noise = bytearray()
    length: int | None = None
    body = bytearray()

    def flush() -> None:
        if noise:
            events.append(Noise(bytes(noise)))
            noise.clear()

    for byte in stream:
        if length is None:
            if byte == STX:
                length = -1
            elif byte in (ENQ, ACK, NAK):
                flush()
                events.append(ControlByte(byte))
            else:
                noise.append(byte)
            continue
        flush()
        if length == -1:
            if byte == 0:
                events.append(BadFrame(b"", "zero_length"))
                length = None
            else:
                length = byte
        elif len(body) < length:
            body.append(byte)
        else:
            xor = length
            for b in body:
                xor ^= b
            events.append(Frame(bytes(body)) if xor == byte else BadFrame(bytes(body), "bad_lrc"))
            length = None
            body.clear()
    flush()
    return events


def merged(events: list[Event]) -> list[Event]:
    """Noise runs split only by where a read ended are joined (chunking decides those)."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Noise) and out and isinstance(out[-1], Noise):
            out[-1] = Noise(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@given(st.lists(stream_parts, max_size=12), st.lists(st.integers(0, 5000), max_size=20))
def test_sliced_parser_matches_the_byte_at_a_time_definition(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    parser = FrameParser()
    whole = parser.feed(stream)
    assert whole == reference_events(stream)
    parser = FrameParser()
    chunked_events: list[Event] = []
    for chunk in chunked(stream, cuts):
        chunked_events += parser.feed(chunk)
    assert merged(chunked_events) == merged(reference_events(stream))


def test_whole_frames_split_frames_and_garbage_between_them() -> None:
    first, second = encode_frame(b"\xff\x3b\x00" + bytes(range(200))), encode_frame(b"\xfc\x00")
    parser = FrameParser()
    # two answers and the garbage between them in one read
    assert parser.feed(b"\x06" + first + b"\x01\xfe" + second) == [
        ControlByte(ACK),
        Frame(first[2:-1]),
        Noise(b"\x01\xfe"),
        Frame(second[2:-1]),
    ]
    # one answer split inside its body, and again between body and LRC
    assert parser.feed(first[:100]) == []
    assert parser.feed(first[100:-1]) == []
    assert parser.busy
    assert parser.buffered == len(first) - 1
    assert parser.feed(first[-1:] + b"\x15") == [Frame(first[2:-1]), ControlByte(NAK)]


@given(st.binary(max_size=600))
def test_lrc_folding_equals_the_plain_xor(data: bytes) -> None:
    xor = 0
    for byte in data:
        xor ^= byte
    assert lrc(data) == xor


# --- the usual inputs taken whole (Exchange.receive's fast path) against the general path -----


@pytest.mark.parametrize(
    "answer",
    [
        bytes([ACK]) + encode_frame(encode_response(0xFF3B, 0, b"tlv" * 20)),  # the usual one
        bytes([ACK]) + encode_frame(encode_response(0xFF3B, 0x08)),  # an error byte
        bytes([ACK]) + encode_frame(encode_response(0xFF3A, 0, b"x")),  # another command's
        bytes([ACK]) + encode_frame(b"\xff"),  # a body that does not decode
        bytes([ACK]) + encode_frame(encode_response(0xFF3B, 0, b"abc"))[:-1] + b"\x00",  # bad LRC
        bytes([ACK, ACK]) + encode_frame(encode_response(0xFF3B, 0, b"abc")),  # ACK repeated
        bytes([ACK]) + encode_frame(encode_response(0xFF3B, 0, b"abc")) + b"\xff",  # a stray FF
    ],
)
def test_an_ack_and_an_answer_in_one_read_take_the_steps_of_the_same_bytes_in_two(
    answer: bytes,
) -> None:
    body = encode_request(0xFF3B, 30)
    whole, split = (Exchange(body, answer_timeout=30.0) for _ in range(2))
    taken = [*whole.start(), *whole.receive(bytes([NAK])), *whole.receive(answer)]
    # the ACK alone first: the frame then goes through the parser's events
    steps = [*split.start(), *split.receive(bytes([NAK])), *split.receive(answer[:1])]
    steps += split.receive(answer[1:])
    assert taken == steps
    assert (whole.state, whole.finished) == (split.state, split.finished)


def test_a_nak_alone_takes_the_steps_it_takes_after_noise() -> None:
    """NAK in state enq (fast path) against NAK behind a byte of noise (general path)."""
    body = encode_request(0xFF3B, 30)
    for naks in range(1, 13):  # each NAK sends the frame again, up to the budget, then fails
        whole, noisy = (Exchange(body, answer_timeout=30.0) for _ in range(2))
        taken = [*whole.start()]
        steps = [*noisy.start()]
        for _ in range(naks):
            taken += whole.receive(bytes([NAK]))
            taken += whole.receive(bytes([ENQ]))  # ignored: back to state enq needs a timeout
            taken += whole.timeout()
            steps += [a for a in noisy.receive(b"\xfe" + bytes([NAK])) if not _noise(a)]
            steps += noisy.receive(bytes([ENQ]))
            steps += noisy.timeout()
        assert taken == steps
        assert whole.state == noisy.state


def _noise(action: Action) -> bool:
    return isinstance(action, Discarded) and action.kind == "noise"
