"""The TLV/STLV codec against the vectors of shared/vectors/shtrih.txt, and fuzzed."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kktd.kkt import tlv
from kktd.kkt.commands import decode_response
from kktd.kkt.frames import ProtocolError
from kktd.kkt.tlv import Tlv, TlvError, decode_document, encode_tlv, iter_tlv

# "A whole receipt: the concatenated FF3B payloads of FD 163 (136 bytes)"
RECEIPT_163 = bytes.fromhex(
    "18 04 08 00 8E 8E 8E 20 92 85 91 92 FA 03 0C 00 37 37 30 32 32 30 33 32 37 36 20 20"
    " F4 03 04 00 2C 87 D5 58 12 04 04 00 05 00 00 00 0E 04 04 00 0C 00 00 00 10 04 04 00"
    " A3 00 00 00 11 04 10 00 39 39 39 39 30 37 38 39 30 30 30 30 35 34 38 38 0D 04 14 00"
    " 30 30 30 30 30 30 30 30 30 35 30 30 38 35 37 30 20 20 20 20 1E 04 01 00 01 FC 03 02"
    " 00 20 4E 07 04 02 00 20 4E 35 04 06 00 21 04 AA 10 75 41 B9 04 01 00 02"
)


def frame_body(frame_hex: str) -> bytes:
    """STX LEN body LRC -> body."""
    frame = bytes.fromhex(frame_hex)
    return frame[2:-1]


def test_whole_receipt_vector_decodes_to_every_field() -> None:
    assert len(RECEIPT_163) == 136
    document = decode_document(3, RECEIPT_163)

    assert document.to_fields() == {
        "doc_type": 3,
        "doc_kind": "receipt",
        "issued_at": "2017-03-24T20:53:00",
        "operation": 1,
        "total": 20000,
        "fiscal_sign": 2853205313,
        "shift": 12,
        "receipt_no": 5,
        "kkt_reg_no": "0000000005008570",
        "inn": "7702203276",
    }
    assert document.fd == 163
    assert document.fn == "9999078900005488"
    assert document.issued_at == datetime(2017, 3, 24, 20, 53)
    assert (document.cash, document.card, document.ffd_version) == (20000, None, 2)
    assert document.org_name == "ООО ТЕСТ"
    assert document.raw == RECEIPT_163


def test_whole_receipt_vector_splits_into_its_tlvs_in_order() -> None:
    tags = [item.tag for item in iter_tlv(RECEIPT_163)]
    assert tags == [1048, 1018, 1012, 1042, 1038, 1040, 1041, 1037, 1054, 1020, 1031, 1077, 1209]


@pytest.mark.parametrize(
    ("answer", "tag", "attribute", "expected"),
    [
        ("02 0F FF 3B 00 18 04 08 00 8E 8E 8E 20 92 85 91 92 65", 1048, "org_name", "ООО ТЕСТ"),
        (
            "02 13 FF 3B 00 FA 03 0C 00 37 37 30 32 32 30 33 32 37 36 20 20 22",
            1018,
            "inn",
            "7702203276",
        ),
        (
            "02 0B FF 3B 00 F4 03 04 00 2C 87 D5 58 1A",
            1012,
            "issued_at",
            datetime(2017, 3, 24, 20, 53),
        ),
    ],
)
def test_each_ff3b_answer_carries_one_tlv(
    answer: str, tag: int, attribute: str, expected: object
) -> None:
    response = decode_response(frame_body(answer))
    assert (response.cmd, response.error) == (0xFF3B, 0)

    [single] = iter_tlv(response.data)
    assert single.tag == tag
    assert getattr(decode_document(3, response.data), attribute) == expected


def test_ff3b_unix_time_is_the_vector_value() -> None:
    [single] = iter_tlv(frame_body("02 0B FF 3B 00 F4 03 04 00 2C 87 D5 58 1A")[3:])
    assert tlv.decode_u32(single.tag, single.value) == 1490388780


def item_stlv(quantity: bytes, name: str = "Яблоки Гала") -> bytes:
    return tlv.encode_stlv(
        1059,
        [
            encode_tlv(1030, name.encode("cp866")),
            encode_tlv(1079, tlv.encode_vln(14990)),
            encode_tlv(1023, quantity),
            encode_tlv(1043, tlv.encode_vln(22485)),
        ],
    )


def test_item_stlv_decodes_to_name_price_quantity_and_total() -> None:
    raw = item_stlv(bytes([3]) + (1500).to_bytes(2, "little")) + item_stlv(b"\x00\x02", "Хлеб")

    fields = decode_document(3, raw).to_fields()

    assert fields["items"] == [
        {"name": "Яблоки Гала", "price": 14990, "quantity": "1.5", "total": 22485},
        {"name": "Хлеб", "price": 14990, "quantity": "2", "total": 22485},
    ]


@pytest.mark.parametrize(
    ("digits", "scaled", "expected"),
    [(0, 2, "2"), (3, 1500, "1.5"), (3, 250, "0.25"), (3, 2000, "2"), (2, 5, "0.05"), (3, 0, "0")],
)
def test_fvln_quantity_is_a_normalized_decimal_string(
    digits: int, scaled: int, expected: str
) -> None:
    value = bytes([digits]) + tlv.encode_vln(scaled)
    assert tlv.decode_fvln(1023, value) == expected


def test_fiscal_sign_is_the_big_endian_u32_of_its_last_four_bytes() -> None:
    assert tlv.decode_fiscal_sign(1077, bytes.fromhex("21 04 AA 10 75 41")) == 2853205313
    assert tlv.encode_fiscal_sign(2853205313, b"\x21\x04") == bytes.fromhex("21 04 AA 10 75 41")


def test_unknown_document_type_and_tags_are_kept_but_not_invented() -> None:
    raw = encode_tlv(1040, tlv.encode_u32(7)) + encode_tlv(9999, b"\x01\x02\x03")

    document = decode_document(77, raw)

    assert document.to_fields() == {"doc_type": 77, "doc_kind": "unknown"}
    assert document.fd == 7
    assert document.raw == raw


@pytest.mark.parametrize(
    ("doc_type", "kind"),
    [
        (1, "registration"),
        (2, "shift_open"),
        (5, "shift_close"),
        (31, "correction"),
        (0, "unknown"),
    ],
)
def test_doc_kind_names_the_document_types(doc_type: int, kind: str) -> None:
    assert tlv.doc_kind(doc_type) == kind


@pytest.mark.parametrize(
    "raw",
    [
        encode_tlv(1040, b"\x01\x02\x03"),  # u32 of 3 bytes
        encode_tlv(1077, b"\x00" * 5),  # fiscal sign of 5 bytes
        encode_tlv(1020, b""),  # empty VLN
        encode_tlv(1020, b"\x01" * 9),  # VLN wider than the FFD allows
        encode_tlv(1054, b"\x01\x00"),  # operation is one byte
        item_stlv(b"\x03"),  # FVLN without its number
        RECEIPT_163[:-1],  # last value cut short
        RECEIPT_163 + b"\xb9\x04",  # a header cut short
    ],
)
def test_malformed_values_raise_tlv_error(raw: bytes) -> None:
    with pytest.raises(TlvError):
        decode_document(3, raw)


def test_tlv_error_is_a_protocol_error() -> None:
    assert issubclass(TlvError, ProtocolError)


@pytest.mark.parametrize(("tag", "value"), [(-1, b""), (0x10000, b""), (1, bytes(0x10000))])
def test_encode_tlv_refuses_what_the_format_cannot_hold(tag: int, value: bytes) -> None:
    with pytest.raises(ValueError):
        encode_tlv(tag, value)


# --- properties ------------------------------------------------------------------------------

tlvs = st.lists(
    st.builds(Tlv, st.integers(0, 0xFFFF), st.binary(max_size=300)),
    max_size=8,
)


@given(tlvs)
def test_encoded_tlvs_split_back_into_the_same_tlvs(items: list[Tlv]) -> None:
    data = b"".join(encode_tlv(item.tag, item.value) for item in items)
    assert list(iter_tlv(data)) == items


@given(st.integers(0, 2**64 - 1))
def test_vln_round_trips_in_at_most_eight_bytes(value: int) -> None:
    encoded = tlv.encode_vln(value)
    assert 1 <= len(encoded) <= 8
    assert tlv.decode_vln(1020, encoded) == value


@given(st.decimals(min_value=0, max_value=Decimal("99999999.999"), places=3))
def test_fvln_round_trips_to_the_normalized_decimal(quantity: Decimal) -> None:
    decoded = tlv.decode_fvln(1023, tlv.encode_fvln(quantity))
    assert Decimal(decoded) == quantity
    assert decoded == format(quantity.normalize(), "f")


@given(
    fd=st.integers(0, 2**32 - 1),
    shift=st.integers(0, 2**32 - 1),
    when=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2106, 2, 7)),
    total=st.integers(0, 2**64 - 1),
    sign=st.integers(0, 2**32 - 1),
    inn=st.from_regex(r"[0-9]{10}|[0-9]{12}", fullmatch=True),
    name=st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВ 0123456789,.%-", max_size=60),
)
def test_a_document_built_from_values_decodes_to_those_values(
    fd: int, shift: int, when: datetime, total: int, sign: int, inn: str, name: str
) -> None:
    when = when.replace(microsecond=0)
    raw = b"".join(
        [
            encode_tlv(1040, tlv.encode_u32(fd)),
            encode_tlv(1038, tlv.encode_u32(shift)),
            encode_tlv(1012, tlv.encode_unixtime(when)),
            encode_tlv(1020, tlv.encode_vln(total)),
            encode_tlv(1077, tlv.encode_fiscal_sign(sign)),
            encode_tlv(1018, tlv.encode_string(inn, 12)),
            item_stlv(tlv.encode_fvln("0.5"), name),
        ]
    )

    document = decode_document(3, raw)

    assert (document.fd, document.shift, document.issued_at) == (fd, shift, when)
    assert (document.total, document.fiscal_sign, document.inn) == (total, sign, inn)
    assert document.items[0].name == name
    assert document.items[0].quantity == "0.5"


@given(st.binary(max_size=400), st.sampled_from([1, 2, 3, 5, 99]))
def test_garbage_raises_only_tlv_error(data: bytes, doc_type: int) -> None:
    try:
        document = decode_document(doc_type, data)
    except TlvError:
        return
    assert document.raw == data


@given(st.integers(0, len(RECEIPT_163) - 1), st.binary(max_size=8))
def test_a_cut_or_damaged_receipt_raises_only_tlv_error(cut: int, tail: bytes) -> None:
    try:
        document = decode_document(3, RECEIPT_163[:cut] + tail)
    except TlvError:
        return
    assert document.doc_kind == "receipt"
