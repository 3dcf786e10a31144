"""Realistic FN archives for the emulator: shifts, receipts with items and payments, fixtures.

Every generated FD comes with the emulator's own record of what it encoded, in the shape of
`Document.to_fields()`, built from the generator's values and never by decoding the bytes: tests
compare that record with what kktd decoded, so it must not be derived from the decoder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kktd.kkt import tlv
from kktd.kkt.tlv import BODY_FIELDS, encode_string, encode_tlv, encode_u32, encode_vln

DOC_SHIFT_OPEN = 2
DOC_RECEIPT = 3
DOC_SHIFT_CLOSE = 5

DEFAULT_FN = "9999078900005488"
DEFAULT_KKT_REG_NO = "0000000005008570"
DEFAULT_INN = "7702203276"
DEFAULT_ORG_NAME = 'ООО "Ромашка"'
FFD_1_05 = 2

# name, price in kopecks (per kg for weighed goods), weighed
CATALOG: tuple[tuple[str, int, bool], ...] = (
    ("Хлеб бородинский", 5490, False),
    ("Молоко 3,2% 1 л", 8990, False),
    ("Яблоки Гала", 14990, True),
    ("Сыр Российский", 69900, True),
    ("Кофе зерновой 250 г", 45900, False),
    ("Бананы", 10990, True),
    ("Вода питьевая 0,5 л", 4500, False),
    ("Пакет-майка", 500, False),
    ("Шоколад молочный", 9900, False),
    ("Огурцы", 19990, True),
    ("Гречка 900 г", 11900, False),
    ("Чай чёрный, 100 пак.", 25900, False),
)

# 1 sale, 2 sale return, 3 expense, 4 expense return: mostly sales, as in a shop
OPERATIONS = (1, 2, 3, 4)
OPERATION_WEIGHTS = (85, 8, 5, 2)

# An additional user requisite (1084) at its FFD maxima: a 64-byte 1085 name and a 256-byte 1086
# value make a 332-byte TLV, longer than one FF3B answer (252 bytes) can carry.
REQUISITE_NAME = "Заказ интернет-магазина"
REQUISITE_NAME_MAX = 64
REQUISITE_VALUE_MAX = 256


def wall_clock() -> datetime:
    """The KKT's local wall clock, to the second (what UnixTime in an FD holds)."""
    return datetime.now().replace(microsecond=0)  # the KKT keeps local time, no zone


@dataclass(frozen=True, slots=True)
class EmulatedDocument:
    """One FD of the emulated FN: its TLV bytes and the emulator's own record of their fields."""

    fd: int
    doc_type: int
    raw: bytes
    record: dict[str, Any]

    @property
    def issued_at(self) -> datetime | None:
        stamp = self.record.get("issued_at")
        return datetime.fromisoformat(stamp) if stamp else None


@dataclass(frozen=True, slots=True)
class _Line:
    name: str
    price: int
    quantity: str  # the record's normalized decimal string
    fvln: bytes  # how the KKT encodes it (weighed goods always with 3 digits, like real KKTs)
    total: int


class DocumentGenerator:
    """Issues the FDs of one FN in order: shift open, receipts, shift close, next shift ...

    `rng` makes the archive reproducible; `wall` gives the KKT wall-clock time of each FD (never
    earlier than the previous FD's).
    """

    def __init__(
        self,
        *,
        fn: str = DEFAULT_FN,
        kkt_reg_no: str = DEFAULT_KKT_REG_NO,
        inn: str = DEFAULT_INN,
        org_name: str = DEFAULT_ORG_NAME,
        rng: random.Random | None = None,
        wall: Callable[[], datetime] = wall_clock,
        next_fd: int = 1,
        shift: int = 0,
        receipts_per_shift: tuple[int, int] = (20, 60),
        requisite_rate: float = 0.0,
    ) -> None:
        self.fn = fn
        self.kkt_reg_no = kkt_reg_no
        self.inn = inn
        self.org_name = org_name
        self.rng = rng if rng is not None else random.Random(0)
        self.wall = wall
        self.next_fd = next_fd
        self.shift = shift
        self.shift_open = False
        self.receipt_no = 0
        self.receipts_per_shift = receipts_per_shift
        self.requisite_rate = requisite_rate  # share of receipts with a long 1084 requisite
        self._shift_length = 0
        self._last_time: datetime | None = None

    # --- documents ---------------------------------------------------------------------------

    def open_shift(self) -> EmulatedDocument:
        if self.shift_open:
            raise RuntimeError("the shift is already open")
        self.shift += 1
        self.shift_open = True
        self.receipt_no = 0
        low, high = self.receipts_per_shift
        self._shift_length = self.rng.randint(low, high)
        return self._report(DOC_SHIFT_OPEN)

    def close_shift(self) -> EmulatedDocument:
        if not self.shift_open:
            raise RuntimeError("no shift is open")
        self.shift_open = False
        return self._report(DOC_SHIFT_CLOSE)

    def receipt(
        self, operation: int | None = None, *, requisite: tuple[str, str] | None = None
    ) -> EmulatedDocument:
        """A receipt in the open shift: 1-5 items, paid in cash, by card or both.

        `requisite` (name, value) adds a 1084 additional requisite; with `requisite_rate` a
        random share of receipts carry one at its maximum length.
        """
        if not self.shift_open:
            raise RuntimeError("open a shift before issuing a receipt")
        if operation is None:
            operation = self.rng.choices(OPERATIONS, OPERATION_WEIGHTS)[0]
        if requisite is None and self.requisite_rate and self.rng.random() < self.requisite_rate:
            requisite = self.long_requisite()
        self.receipt_no += 1
        lines = [self._line() for _ in range(self.rng.randint(1, 5))]
        total = sum(line.total for line in lines)
        cash = self._cash_part(total)
        card = total - cash
        fd, when, sign = self._stamp()
        body = [
            *self._header(when),
            encode_tlv(tlv.TAG_RECEIPT_NO, encode_u32(self.receipt_no)),
            *self._identity(fd),
            encode_tlv(tlv.TAG_OPERATION, bytes([operation])),
            *(self._item_stlv(line) for line in lines),
            *([] if requisite is None else [_requisite_stlv(*requisite)]),
            encode_tlv(tlv.TAG_TOTAL, encode_vln(total)),
            encode_tlv(tlv.TAG_CASH, encode_vln(cash)),
            encode_tlv(tlv.TAG_CARD, encode_vln(card)),
            *self._trailer(sign),
        ]
        record = self._record(DOC_RECEIPT, "receipt", when, sign)
        record.update(operation=operation, total=total, receipt_no=self.receipt_no)
        record["items"] = [
            {"name": ln.name, "price": ln.price, "quantity": ln.quantity, "total": ln.total}
            for ln in lines
        ]
        return EmulatedDocument(fd, DOC_RECEIPT, b"".join(body), _ordered(record))

    def long_requisite(self) -> tuple[str, str]:
        """A 1084 requisite at the FFD maxima: 64 bytes of name, 256 bytes of value."""
        number = self.rng.randrange(10**9)
        head = f"Заказ {number:09d}, доставка по адресу: "
        filler = "".join(self.rng.choice("абвгдеёжзийклмнопрстуфхцчшщыэюя ") for _ in range(256))
        name = REQUISITE_NAME.ljust(REQUISITE_NAME_MAX, ".")
        return name, (head + filler)[:REQUISITE_VALUE_MAX]

    def next_document(self) -> EmulatedDocument:
        """The FD a working shop would issue next: open a shift, sell, close it after a while."""
        if not self.shift_open:
            return self.open_shift()
        if self.receipt_no >= self._shift_length:
            return self.close_shift()
        return self.receipt()

    def archive(self, count: int) -> list[EmulatedDocument]:
        return [self.next_document() for _ in range(count)]

    # --- parts -------------------------------------------------------------------------------

    def _report(self, doc_type: int) -> EmulatedDocument:
        fd, when, sign = self._stamp()
        body = [*self._header(when), *self._identity(fd), *self._trailer(sign)]
        record = self._record(doc_type, tlv.doc_kind(doc_type), when, sign)
        return EmulatedDocument(fd, doc_type, b"".join(body), _ordered(record))

    def _stamp(self) -> tuple[int, datetime, int]:
        fd = self.next_fd
        self.next_fd += 1
        when = self.wall().replace(microsecond=0)
        if self._last_time is not None and when < self._last_time:
            when = self._last_time
        self._last_time = when
        return fd, when, self.rng.getrandbits(32)

    def _header(self, when: datetime) -> list[bytes]:
        return [
            encode_tlv(tlv.TAG_ORG_NAME, encode_string(self.org_name)),
            encode_tlv(tlv.TAG_INN, encode_string(self.inn, 12)),
            encode_tlv(tlv.TAG_ISSUED_AT, tlv.encode_unixtime(when)),
        ]

    def _identity(self, fd: int) -> list[bytes]:
        return [
            encode_tlv(tlv.TAG_SHIFT, encode_u32(self.shift)),
            encode_tlv(tlv.TAG_FD, encode_u32(fd)),
            encode_tlv(tlv.TAG_FN, encode_string(self.fn, 16)),
            encode_tlv(tlv.TAG_KKT_REG_NO, encode_string(self.kkt_reg_no, 20)),
        ]

    def _trailer(self, sign: int) -> list[bytes]:
        prefix = self.rng.randbytes(2)
        return [
            encode_tlv(tlv.TAG_FISCAL_SIGN, tlv.encode_fiscal_sign(sign, prefix)),
            encode_tlv(tlv.TAG_FFD_VERSION, bytes([FFD_1_05])),
        ]

    def _record(self, doc_type: int, kind: str, when: datetime, sign: int) -> dict[str, Any]:
        return {
            "doc_type": doc_type,
            "doc_kind": kind,
            "issued_at": when.strftime("%Y-%m-%dT%H:%M:%S"),
            "fiscal_sign": sign,
            "shift": self.shift,
            "kkt_reg_no": self.kkt_reg_no,
            "inn": self.inn,
        }

    def _line(self) -> _Line:
        name, price, weighed = self.rng.choice(CATALOG)
        if weighed:
            grams = self.rng.randint(100, 2500)
            quantity = format(Decimal(grams).scaleb(-3).normalize(), "f")
            fvln = bytes([3]) + encode_vln(grams)
            total = (price * grams + 500) // 1000  # kopecks, half up
        else:
            pieces = self.rng.choices((1, 2, 3, 4), (70, 20, 7, 3))[0]
            quantity, fvln, total = str(pieces), bytes([0]) + encode_vln(pieces), price * pieces
        return _Line(name, price, quantity, fvln, total)

    @staticmethod
    def _item_stlv(line: _Line) -> bytes:
        return tlv.encode_stlv(
            tlv.TAG_ITEM,
            [
                encode_tlv(tlv.TAG_ITEM_NAME, encode_string(line.name)),
                encode_tlv(tlv.TAG_ITEM_PRICE, encode_vln(line.price)),
                encode_tlv(tlv.TAG_ITEM_QUANTITY, line.fvln),
                encode_tlv(tlv.TAG_ITEM_TOTAL, encode_vln(line.total)),
            ],
        )

    def _cash_part(self, total: int) -> int:
        way = self.rng.choices(("cash", "card", "mixed"), (45, 45, 10))[0]
        if way == "cash" or total < 2:
            return total
        if way == "card":
            return 0
        return self.rng.randint(1, total - 1)


def _requisite_stlv(name: str, value: str) -> bytes:
    return tlv.encode_stlv(
        tlv.TAG_REQUISITE,
        [
            encode_tlv(tlv.TAG_REQUISITE_NAME, encode_string(name)),
            encode_tlv(tlv.TAG_REQUISITE_VALUE, encode_string(value)),
        ],
    )


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    """The record in the field order of SPEC section 4 (only for readable dumps)."""
    return {key: record[key] for key in BODY_FIELDS if key in record}


# --- fixtures ----------------------------------------------------------------------------------


def load_fixtures(path: Path) -> list[EmulatedDocument]:
    """FDs from JSON lines `{"fd", "doc_type", "tlv_hex"[, "record"]}`, in FD order.

    A line without "record" gets one decoded from its bytes: such fixtures test transport and
    journaling, not the decoder.
    """
    documents = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            raw = bytes.fromhex(entry["tlv_hex"])
            fd, doc_type = int(entry["fd"]), int(entry["doc_type"])
            record = entry.get("record") or tlv.decode_document(doc_type, raw).to_fields()
        except (ValueError, KeyError, TypeError, tlv.TlvError) as exc:
            raise ValueError(f"{path}:{number}: not a fixture line: {exc}") from exc
        documents.append(EmulatedDocument(fd, doc_type, raw, record))
    documents.sort(key=lambda document: document.fd)
    return documents


def dump_fixtures(documents: Iterable[EmulatedDocument], path: Path) -> None:
    """Write FDs as fixture lines that `load_fixtures` reads back unchanged."""
    lines = [
        json.dumps(
            {"fd": d.fd, "doc_type": d.doc_type, "tlv_hex": d.raw.hex(), "record": d.record},
            ensure_ascii=False,
        )
        for d in documents
    ]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
