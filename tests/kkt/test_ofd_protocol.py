"""The OFD relay's pure codecs: the FF30-FF33 and 1F vectors, the session header, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kktd.kkt.commands import (
    PayloadError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from kktd.kkt.frames import MAX_BODY, encode_frame
from kktd.kkt.ofd_protocol import (
    HEADER_SIZE,
    MAX_READ_BLOCK,
    MAX_WRITE_BLOCK,
    SIGNATURE,
    AnswerBlockSize,
    BufferStatus,
    OfdCommand,
    ReadBlock,
    SessionError,
    SessionHeader,
    StartAnswer,
    TableField,
    WriteBlock,
    blocks,
    session_message,
    split_session,
)
from tests.kkt.vectors import vector_bytes

PWD = 30


def test_ff30_request_and_answer_match_the_vector() -> None:
    assert encode_frame(encode_request(OfdCommand.BUFFER_STATUS, PWD)) == vector_bytes("FF30")
    answer = decode_response(vector_bytes("FF30", 1)[2:-1])
    assert (answer.cmd, answer.error) == (0xFF30, 0)
    assert BufferStatus.decode(answer.data) == BufferStatus(pending=334, block_size=240)
    assert encode_frame(
        encode_response(0xFF30, 0, BufferStatus(334, 240).encode())
    ) == vector_bytes("FF30", 1)


def test_ff31_request_matches_the_vector_and_decodes_device_side() -> None:
    frame = vector_bytes("FF31")
    assert encode_frame(encode_request(OfdCommand.READ_BLOCK, PWD, ReadBlock(0, 240).encode())) == (
        frame
    )
    request = decode_request(frame[2:-1])
    assert (request.cmd, request.password) == (0xFF31, PWD)
    assert ReadBlock.decode(request.data) == ReadBlock(0, 240)


def test_ff32_request_matches_the_capture_and_its_answer_the_vector() -> None:
    body = encode_request(OfdCommand.START_ANSWER, PWD, StartAnswer(121).encode())
    assert encode_frame(body) == vector_bytes("FF32 start")
    assert StartAnswer.decode(decode_request(body).data) == StartAnswer(121)
    answer = decode_response(vector_bytes("FF32 answer")[2:-1])
    assert AnswerBlockSize.decode(answer.data) == AnswerBlockSize(240)
    assert encode_frame(encode_response(0xFF32, 0, AnswerBlockSize(240).encode())) == vector_bytes(
        "FF32 answer"
    )


def test_ff33_request_and_answer_match_the_vector() -> None:
    block = WriteBlock(0, bytes([0x2A, 0x08, 0x41]))
    frame = vector_bytes("FF33")
    assert encode_frame(encode_request(OfdCommand.WRITE_BLOCK, PWD, block.encode())) == frame
    assert WriteBlock.decode(decode_request(frame[2:-1]).data) == block
    assert encode_frame(encode_response(0xFF33, 0)) == vector_bytes("FF33", 1)


def test_1f_request_matches_the_vector() -> None:
    frame = vector_bytes("1Fh")
    assert encode_frame(
        encode_request(OfdCommand.READ_TABLE, PWD, TableField(19, 1, 1).encode())
    ) == (frame)
    assert TableField.decode(decode_request(frame[2:-1]).data) == TableField(19, 1, 1)


@pytest.mark.parametrize(
    ("decoder", "data"),
    [
        (BufferStatus.decode, b"\x4e\x01"),
        (ReadBlock.decode, b"\x00\x00"),
        (ReadBlock.decode, b"\x00\x00\xf0\x00"),
        (StartAnswer.decode, b"\x79"),
        (AnswerBlockSize.decode, b""),
        (WriteBlock.decode, b"\x00\x00"),
        (WriteBlock.decode, b"\x00\x00\x03\x2a\x08"),
        (TableField.decode, b"\x13\x01\x00"),
    ],
)
def test_short_or_long_payloads_raise_payload_error(decoder: object, data: bytes) -> None:
    with pytest.raises(PayloadError):
        decoder(data)  # type: ignore[operator]


def test_values_outside_their_fields_raise_payload_error() -> None:
    with pytest.raises(PayloadError):
        StartAnswer(0x10000).encode()
    with pytest.raises(PayloadError):
        ReadBlock(0, 256).encode()
    with pytest.raises(PayloadError):
        WriteBlock(0, bytes(MAX_WRITE_BLOCK + 1)).encode()


def test_the_largest_blocks_fit_a_frame() -> None:
    read_answer = encode_response(0xFF31, 0, bytes(MAX_READ_BLOCK))
    write_request = encode_request(0xFF33, PWD, WriteBlock(0, bytes(MAX_WRITE_BLOCK)).encode())
    assert len(read_answer) == len(write_request) == MAX_BODY


def test_blocks_cover_a_message_without_gaps() -> None:
    assert blocks(334, 240) == [(0, 240), (240, 94)]
    assert blocks(0, 240) == []
    with pytest.raises(PayloadError):
        blocks(10, 0)


@given(st.integers(0, 0xFFFF), st.integers(1, 255))
def test_blocks_sum_to_the_total(total: int, size: int) -> None:
    covered = 0
    for offset, count in blocks(total, size):
        assert offset == covered
        assert 1 <= count <= size
        covered += count
    assert covered == total


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(max_size=MAX_WRITE_BLOCK))
def test_codecs_round_trip(number: int, small: int, data: bytes) -> None:
    assert BufferStatus.decode(BufferStatus(number, small).encode()) == BufferStatus(number, small)
    assert ReadBlock.decode(ReadBlock(number, small).encode()) == ReadBlock(number, small)
    assert StartAnswer.decode(StartAnswer(number).encode()) == StartAnswer(number)
    assert WriteBlock.decode(WriteBlock(number, data).encode()) == WriteBlock(number, data)
    assert TableField.decode(TableField(small, number, small).encode()) == TableField(
        small, number, small
    )


# --- session header ----------------------------------------------------------------------------

FN = "9999078900005488"


def test_a_session_message_has_the_signature_and_its_body_length_at_24() -> None:
    message = session_message(FN, b"x" * 300)
    assert message[:4] == SIGNATURE == bytes.fromhex("2A 08 41 0A")
    assert int.from_bytes(message[24:26], "little") == 300
    assert message[8:24] == FN.encode()
    header, body = split_session(message)
    assert (header.fn, header.body_length, body) == (FN, 300, b"x" * 300)


def test_the_header_keeps_every_field_as_read() -> None:
    raw = (
        SIGNATURE + bytes.fromhex("81 A2 01 05") + FN.encode() + bytes.fromhex("03 00 12 34 AB CD")
    )
    header = SessionHeader.decode(raw + b"abc")
    assert header == SessionHeader(0xA281, 0x0501, FN, 3, 0x3412, 0xCDAB)
    assert header.encode() == raw
    assert len(raw) == HEADER_SIZE


def test_a_bad_signature_is_rejected() -> None:
    message = bytearray(session_message(FN, b"body"))
    message[3] ^= 0xFF
    with pytest.raises(SessionError, match="signature"):
        SessionHeader.decode(bytes(message))


def test_a_short_header_is_rejected() -> None:
    with pytest.raises(SessionError, match="30 bytes"):
        SessionHeader.decode(session_message(FN, b"")[:29])


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_body_that_is_not_the_announced_length_is_rejected(cut: int) -> None:
    message = session_message(FN, b"0123456789")
    data = message[:cut] if cut < 0 else message + b"!"
    with pytest.raises(SessionError, match="announces a 10-byte body"):
        split_session(data)


def test_an_fn_number_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(SessionError):
        session_message(FN + "0", b"")
    with pytest.raises(SessionError):
        session_message("ФН", b"")


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_either_parse_or_raise_session_error(data: bytes) -> None:
    try:
        header = SessionHeader.decode(data)
    except SessionError:
        return
    assert data[:4] == SIGNATURE
    assert header.body_length == int.from_bytes(data[24:26], "little")
