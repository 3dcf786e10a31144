"""FF3B answers joined as a byte stream, checked against FF3A and the FD's own 1040/1041."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kktd.kkt.commands import DocumentInfo, FnStatus, PayloadError
from kktd.kkt.fd_stream import DocumentStream, DocumentStreamError, IdentityMismatch
from kktd.kkt.frames import ProtocolError
from kktd.kkt.tlv import Identity, encode_string, encode_tlv, encode_u32, identity
from tests.kkt.test_tlv import RECEIPT_163

FN = "9999078900005488"
INFO_163 = DocumentInfo(3, len(RECEIPT_163))  # the vector receipt: FD 163 of FN ...5488


def stream_of(pieces: list[bytes], fd: int = 163, fn: str = FN) -> bytes:
    stream = DocumentStream(fn, fd, DocumentInfo(3, sum(map(len, pieces))))
    for piece in pieces:
        stream.add(piece)
    return stream.finish()


@given(st.lists(st.integers(1, len(RECEIPT_163) - 1), max_size=12))
def test_any_cut_of_the_receipt_joins_back_to_it(cuts: list[int]) -> None:
    edges = [0, *sorted(set(cuts)), len(RECEIPT_163)]
    pieces = [RECEIPT_163[a:b] for a, b in itertools.pairwise(edges)]
    assert stream_of(pieces) == RECEIPT_163


def test_a_332_byte_requisite_in_two_answers_is_one_tlv() -> None:
    requisite = encode_tlv(1084, encode_tlv(1085, bytes(64)) + encode_tlv(1086, bytes(256)))
    assert len(requisite) == 332
    raw = RECEIPT_163 + requisite
    assert stream_of([RECEIPT_163, requisite[:252], requisite[252:]]) == raw


def test_a_stream_longer_than_ff3a_said_fails_at_the_answer_that_overflows() -> None:
    stream = DocumentStream(FN, 163, DocumentInfo(3, 100))
    stream.add(RECEIPT_163[:60])
    with pytest.raises(DocumentStreamError, match="120 bytes after 2 FF3B answers, FF3A said 100"):
        stream.add(RECEIPT_163[60:120])


def test_a_stream_shorter_than_ff3a_said_fails_at_08() -> None:
    stream = DocumentStream(FN, 163, INFO_163)
    stream.add(RECEIPT_163[:-1])
    with pytest.raises(DocumentStreamError, match="135 bytes in 1 FF3B answers, FF3A said 136"):
        stream.finish()


def test_an_empty_answer_is_refused_so_a_read_is_bounded_by_the_length() -> None:
    stream = DocumentStream(FN, 163, INFO_163)
    with pytest.raises(DocumentStreamError, match="carries no data"):
        stream.add(b"")


def test_bytes_that_do_not_parse_as_tlvs_are_read_again() -> None:
    raw = encode_tlv(1040, encode_u32(163))[:-1] + b"\x00"  # the length adds up, the TLV not
    broken = raw[:2] + b"\x09\x00" + raw[4:]
    with pytest.raises(DocumentStreamError, match="do not parse"):
        stream_of([broken])


@pytest.mark.parametrize(
    ("fd", "fn", "named"),
    [(162, FN, "FD 163 of FN 9999078900005488"), (163, "9999078900001111", "FN 9999078900005488")],
)
def test_an_fd_that_names_another_fd_or_fn_is_a_mismatch(fd: int, fn: str, named: str) -> None:
    with pytest.raises(IdentityMismatch, match=named):
        stream_of([RECEIPT_163], fd=fd, fn=fn)


def test_identity_reads_1040_and_1041_and_tolerates_their_absence() -> None:
    assert identity(RECEIPT_163) == Identity(163, FN)
    assert identity(encode_tlv(1048, b"x")) == Identity(None, None)
    odd = encode_tlv(1040, b"\x0b\x00\x00") + encode_tlv(1041, encode_string(FN + " "))
    assert identity(odd) == Identity(11, FN)  # a 3-byte FD number still names FD 11
    assert stream_of([odd], fd=11) == odd  # absent or odd-width tags never disagree


def test_stream_errors_are_protocol_errors_the_poller_retries() -> None:
    assert issubclass(IdentityMismatch, DocumentStreamError)
    assert issubclass(DocumentStreamError, ProtocolError)


# --- FF01: the FN number -----------------------------------------------------------------------

STATUS = FnStatus(3, 0, 0, True, 0, datetime(2017, 3, 24, 20, 53), FN, 5)


@pytest.mark.parametrize(
    "fn", [b"999907890000548\x00", b"9999078900005488"[:-1] + b" ", b"99990789000054a8"]
)
def test_an_fn_number_that_is_not_16_digits_is_a_payload_error(fn: bytes) -> None:
    data = bytearray(STATUS.encode())
    data[10:26] = fn
    with pytest.raises(PayloadError, match="not 16 digits"):
        FnStatus.decode(bytes(data))


def test_an_fn_number_of_16_digits_decodes() -> None:
    assert FnStatus.decode(STATUS.encode()).fn == FN
