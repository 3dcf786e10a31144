"""TLV/STLV codec for fiscal documents read from the FN (SPEC section 1).

An FD arrives as a flat run of TLVs (`tag u16 LE | len u16 LE | value`), the FF3B answers joined
as a byte stream (`kktd.kkt.fd_stream`); its document type comes separately with the FF3A
answer. `decode_document` turns that into the fields of the upstream body (SPEC section 4).
Pure: no I/O, no clock.

Choices the SPEC leaves open:
- a quantity (FVLN) is a decimal string normalized without trailing zeros: "2", "1.5", "0.25";
- a VLN longer than 8 bytes (the FFD maximum) is garbage and raises `TlvError`, which also keeps
  absurd integers out of the JSON body;
- when a tag repeats, the first occurrence wins; unknown tags are ignored (they stay in `raw`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from kktd.kkt.frames import ProtocolError

TAG_ITEM = 1059
TAG_ITEM_NAME = 1030
TAG_ITEM_PRICE = 1079
TAG_ITEM_QUANTITY = 1023
TAG_ITEM_TOTAL = 1043
TAG_FD = 1040
TAG_FISCAL_SIGN = 1077
TAG_ISSUED_AT = 1012
TAG_TOTAL = 1020
TAG_OPERATION = 1054
TAG_FN = 1041
TAG_KKT_REG_NO = 1037
TAG_SHIFT = 1038
TAG_RECEIPT_NO = 1042
TAG_INN = 1018
TAG_CASH = 1031
TAG_CARD = 1081
TAG_FFD_VERSION = 1209
TAG_ORG_NAME = 1048
TAG_REQUISITE = 1084  # additional user requisite, an STLV of a name and a value
TAG_REQUISITE_NAME = 1085  # up to 64 bytes
TAG_REQUISITE_VALUE = 1086  # up to 256 bytes: 1084 is 332 bytes, more than one FF3B answer

DOC_KINDS: dict[int, str] = {
    1: "registration",
    2: "shift_open",
    3: "receipt",
    4: "bso",
    5: "shift_close",
    6: "fn_close",
    11: "reregistration",
    21: "status_report",
    31: "correction",
    41: "bso_correction",
}

ENCODING = "cp866"
MAX_VLN = 8
_HEADER = 4
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF


class TlvError(ProtocolError):
    """An FD's TLV bytes are truncated or a known tag has a malformed value."""


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes


def doc_kind(doc_type: int) -> str:
    """The name of a document type (the STLV tag of the FD), "unknown" when not listed."""
    return DOC_KINDS.get(doc_type, "unknown")


def iter_tlv(data: bytes) -> Iterator[Tlv]:
    """Split a run of TLVs; raises `TlvError` when a header or a value is cut short."""
    pos = 0
    end = len(data)
    while pos < end:
        tag, value, pos = _next_tlv(data, pos, end)
        yield Tlv(tag, value)


def _pairs(data: bytes) -> list[tuple[int, bytes]]:
    """`iter_tlv` as plain (tag, value) pairs, all at once: every FD read goes through this
    twice (`identity`, then `decode_document`), so no object per TLV and no generator."""
    pairs: list[tuple[int, bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        tag, value, pos = _next_tlv(data, pos, end)
        pairs.append((tag, value))
    return pairs


def _next_tlv(data: bytes, pos: int, end: int) -> tuple[int, bytes, int]:
    """The TLV at `pos`: its tag, its value and where the next one starts."""
    if end - pos < _HEADER:
        raise TlvError(f"truncated TLV header at offset {pos}: {end - pos} of 4 bytes")
    tag, length = _TAG_LENGTH(data, pos)
    start = pos + _HEADER
    stop = start + length
    if stop > end:
        raise TlvError(f"tag {tag} at offset {pos} wants {length} bytes, {end - start} left")
    return tag, bytes(data[start:stop]), stop


_TAG_LENGTH = struct.Struct("<HH").unpack_from


@dataclass(frozen=True, slots=True)
class Identity:
    """Which FD an FD says it is: its 1040 and 1041, None where a tag is absent."""

    fd: int | None
    fn: str | None


def identity(data: bytes) -> Identity:
    """The top-level 1040 (FD number) and 1041 (FN number) of an FD's TLVs.

    Lenient on purpose: 1040 is read as a little-endian number of whatever width it has (an FD
    whose 1040 does not decode as u32 is journaled with a decode error, not refused), so only
    a different number, not a malformed one, tells that the KKT answered for another FD.
    """
    fd: int | None = None
    fn: str | None = None
    for tag, value in _pairs(data):
        if tag == TAG_FD and fd is None:
            fd = int.from_bytes(value, "little")
        elif tag == TAG_FN and fn is None:
            fn = decode_string(value, strip=True)
    return Identity(fd, fn)


# --- encoders (the emulator and tests build FDs with these) ---------------------------------


def encode_tlv(tag: int, value: bytes) -> bytes:
    if not 0 <= tag <= _U16:
        raise ValueError(f"TLV tag out of range: {tag}")
    if len(value) > _U16:
        raise ValueError(f"TLV value too long for tag {tag}: {len(value)} bytes")
    return tag.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def encode_stlv(tag: int, children: Iterable[bytes]) -> bytes:
    """An STLV: `children` are already encoded TLVs."""
    return encode_tlv(tag, b"".join(children))


def encode_u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def encode_vln(value: int) -> bytes:
    """Little-endian unsigned in as few bytes as it needs (at least one)."""
    if value < 0:
        raise ValueError(f"VLN must not be negative: {value}")
    size = max(1, (value.bit_length() + 7) // 8)
    if size > MAX_VLN:
        raise ValueError(f"VLN wider than {MAX_VLN} bytes: {value}")
    return value.to_bytes(size, "little")


def encode_fvln(quantity: str | Decimal | int) -> bytes:
    """A decimal quantity as FVLN: digits after the point, then the scaled integer as VLN."""
    number = Decimal(quantity)
    sign, _, exponent = number.as_tuple()
    if sign or not isinstance(exponent, int):
        raise ValueError(f"FVLN must be a finite non-negative number: {quantity}")
    digits = max(0, -exponent)
    return bytes([digits]) + encode_vln(int(number.scaleb(digits)))


def encode_string(text: str, width: int | None = None) -> bytes:
    """CP866, padded with spaces to `width` when given (fixed-width fields like INN)."""
    raw = text.encode(ENCODING)
    if width is None:
        return raw
    if len(raw) > width:
        raise ValueError(f"{text!r} does not fit in {width} bytes")
    return raw.ljust(width, b" ")


def encode_unixtime(when: datetime) -> bytes:
    """A naive KKT wall-clock time as UnixTime, stored as if it were UTC (SPEC section 1)."""
    return encode_u32(int(when.replace(tzinfo=UTC).timestamp()))


def encode_fiscal_sign(value: int, prefix: bytes = b"\x00\x00") -> bytes:
    """6 bytes whose last 4, big-endian, are the printed fiscal sign."""
    if len(prefix) != 2:
        raise ValueError("the fiscal sign prefix is 2 bytes")
    return prefix + value.to_bytes(4, "big")


# --- value decoders --------------------------------------------------------------------------


def decode_u32(tag: int, value: bytes) -> int:
    if len(value) != 4:
        raise TlvError(f"tag {tag}: u32 of {len(value)} bytes")
    return int.from_bytes(value, "little")


def decode_u8(tag: int, value: bytes) -> int:
    if len(value) != 1:
        raise TlvError(f"tag {tag}: byte of {len(value)} bytes")
    return value[0]


def decode_vln(tag: int, value: bytes) -> int:
    if not 1 <= len(value) <= MAX_VLN:
        raise TlvError(f"tag {tag}: VLN of {len(value)} bytes")
    return int.from_bytes(value, "little")


def decode_fvln(tag: int, value: bytes) -> str:
    """FVLN as a decimal string without trailing zeros ("1.5", "2", "0.25")."""
    if len(value) < 2:
        raise TlvError(f"tag {tag}: FVLN of {len(value)} bytes")
    digits = value[0]
    scaled = str(decode_vln(tag, value[1:]))
    if digits == 0:
        return scaled
    padded = scaled.rjust(digits + 1, "0")
    whole, fraction = padded[:-digits], padded[-digits:].rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def decode_string(value: bytes, *, strip: bool = False) -> str:
    text = value.decode(ENCODING, errors="replace")
    return text.strip(" \x00") if strip else text


def decode_unixtime(tag: int, value: bytes) -> datetime:
    """UnixTime as the naive KKT wall-clock time it was written from."""
    return datetime.fromtimestamp(decode_u32(tag, value), UTC).replace(tzinfo=None)


def decode_fiscal_sign(tag: int, value: bytes) -> int:
    if len(value) != 6:
        raise TlvError(f"tag {tag}: fiscal sign of {len(value)} bytes")
    return int.from_bytes(value[2:], "big")


# --- documents -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One 1059 item; a field missing from the STLV stays None."""

    name: str | None = None
    price: int | None = None
    quantity: str | None = None
    total: int | None = None

    def to_fields(self) -> dict[str, Any]:
        fields = {
            "name": self.name,
            "price": self.price,
            "quantity": self.quantity,
            "total": self.total,
        }
        return {key: value for key, value in fields.items() if value is not None}


# The fields of the upstream body (SPEC section 4) that come from the FD itself, in the
# order SPEC lists them; the body adds "fn", "fd" and "tlv".
BODY_FIELDS = (
    "doc_type",
    "doc_kind",
    "issued_at",
    "operation",
    "total",
    "fiscal_sign",
    "shift",
    "receipt_no",
    "kkt_reg_no",
    "inn",
    "items",
)


@dataclass(frozen=True, slots=True)
class Document:
    """A decoded FD: the tags kktd understands; the rest stays in `raw`."""

    doc_type: int
    doc_kind: str
    raw: bytes = field(repr=False)
    fd: int | None = None
    fn: str | None = None
    issued_at: datetime | None = None
    operation: int | None = None
    total: int | None = None
    fiscal_sign: int | None = None
    shift: int | None = None
    receipt_no: int | None = None
    kkt_reg_no: str | None = None
    inn: str | None = None
    cash: int | None = None
    card: int | None = None
    ffd_version: int | None = None
    org_name: str | None = None
    items: tuple[Item, ...] = ()

    def to_fields(self) -> dict[str, Any]:
        """The JSON-ready fields of the upstream body (SPEC section 4) minus fn, fd and tlv."""
        fields: dict[str, Any] = {"doc_type": self.doc_type, "doc_kind": self.doc_kind}
        if self.issued_at is not None:
            fields["issued_at"] = self.issued_at.isoformat(timespec="seconds")
        optional = {
            "operation": self.operation,
            "total": self.total,
            "fiscal_sign": self.fiscal_sign,
            "shift": self.shift,
            "receipt_no": self.receipt_no,
            "kkt_reg_no": self.kkt_reg_no,
            "inn": self.inn,
        }
        fields.update((key, value) for key, value in optional.items() if value is not None)
        if self.items:
            fields["items"] = [item.to_fields() for item in self.items]
        return fields


def decode_padded(tag: int, value: bytes) -> str:
    """A fixed-width string field (FN, KKT reg. number, INN) without its padding."""
    del tag  # same signature as the other decoders of _FIELDS
    return decode_string(value, strip=True)


def decode_text(tag: int, value: bytes) -> str:
    del tag  # same signature as the other decoders of _FIELDS
    return decode_string(value)


# tag -> (attribute it fills, decoder of its value)
_Table = dict[int, tuple[str, Callable[[int, bytes], Any]]]

_FIELDS: _Table = {
    TAG_FD: ("fd", decode_u32),
    TAG_FISCAL_SIGN: ("fiscal_sign", decode_fiscal_sign),
    TAG_ISSUED_AT: ("issued_at", decode_unixtime),
    TAG_TOTAL: ("total", decode_vln),
    TAG_OPERATION: ("operation", decode_u8),
    TAG_FN: ("fn", decode_padded),
    TAG_KKT_REG_NO: ("kkt_reg_no", decode_padded),
    TAG_SHIFT: ("shift", decode_u32),
    TAG_RECEIPT_NO: ("receipt_no", decode_u32),
    TAG_INN: ("inn", decode_padded),
    TAG_CASH: ("cash", decode_vln),
    TAG_CARD: ("card", decode_vln),
    TAG_FFD_VERSION: ("ffd_version", decode_u8),
    TAG_ORG_NAME: ("org_name", decode_text),
}

_ITEM_FIELDS: _Table = {
    TAG_ITEM_NAME: ("name", decode_text),
    TAG_ITEM_PRICE: ("price", decode_vln),
    TAG_ITEM_QUANTITY: ("quantity", decode_fvln),
    TAG_ITEM_TOTAL: ("total", decode_vln),
}


def _decode_fields(data: bytes, known: _Table) -> tuple[dict[str, Any], list[bytes]]:
    """The known tags of `data` decoded by attribute name, and the values of its 1059 items."""
    found: dict[str, Any] = {}
    items: list[bytes] = []
    for tag, value in _pairs(data):
        entry = known.get(tag)
        if entry is not None:
            name, decode = entry
            decoded = decode(tag, value)
            if name not in found:  # the first occurrence wins
                found[name] = decoded
        elif tag == TAG_ITEM:
            items.append(value)
    return found, items


def decode_item(value: bytes) -> Item:
    found, _ = _decode_fields(value, _ITEM_FIELDS)
    return Item(**found)


def decode_document(doc_type: int, raw: bytes) -> Document:
    """Decode an FD's TLVs; raises only `TlvError` on bad bytes."""
    found, items = _decode_fields(raw, _FIELDS)
    parsed = tuple(decode_item(value) for value in items)
    return Document(doc_type, doc_kind(doc_type), bytes(raw), items=parsed, **found)
