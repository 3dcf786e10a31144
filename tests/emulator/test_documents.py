"""The emulator's FN archives: realistic, reproducible, and decoded by kktd exactly as recorded."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kktd.kkt.tlv import decode_document, iter_tlv
from kktd.testbed.emulator.documents import (
    DocumentGenerator,
    EmulatedDocument,
    dump_fixtures,
    load_fixtures,
)
from tests.support.clock import FakeClock

START = datetime(2024, 3, 1, 9, 0, 0)


def generator(seed: int = 1, **identity: Any) -> DocumentGenerator:
    ticks = FakeClock(0.0, step=37.0)  # a KKT wall clock that moves on 37 s each read
    return DocumentGenerator(
        rng=random.Random(seed), wall=lambda: START + timedelta(seconds=ticks()), **identity
    )


@pytest.fixture(scope="module")
def archive() -> list[EmulatedDocument]:
    return generator().archive(400)


def test_every_fd_decodes_to_the_emulators_own_record(archive: list[EmulatedDocument]) -> None:
    for document in archive:
        decoded = decode_document(document.doc_type, document.raw)
        assert decoded.to_fields() == document.record, document.fd
        assert decoded.fd == document.fd
        assert decoded.fn == "9999078900005488"


def test_every_fd_carries_the_tags_the_issue_requires(archive: list[EmulatedDocument]) -> None:
    common = {1040, 1012, 1077, 1041, 1037, 1038}
    for document in archive:
        tags = {item.tag for item in iter_tlv(document.raw)}
        assert common <= tags, document.fd
        if document.doc_type == 3:
            assert {1020, 1054, 1042, 1059} <= tags, document.fd


def test_receipts_add_up_items_and_payments(archive: list[EmulatedDocument]) -> None:
    receipts = [decode_document(d.doc_type, d.raw) for d in archive if d.doc_type == 3]
    for receipt in receipts:
        assert 1 <= len(receipt.items) <= 5
        assert sum(item.total or 0 for item in receipt.items) == receipt.total
        assert (receipt.cash or 0) + (receipt.card or 0) == receipt.total
    assert {r.operation for r in receipts} >= {1, 2, 3}
    assert any(r.cash and r.card for r in receipts), "some receipts are paid both ways"
    quantities = [item.quantity for r in receipts for item in r.items]
    assert any("." in (q or "") for q in quantities), "weighed goods have fractional quantities"
    for receipt in receipts:
        for item in receipt.items:
            assert item.price is not None
            assert item.quantity is not None
            exact = item.price * Decimal(item.quantity)
            assert abs(exact - (item.total or 0)) <= Decimal("0.5")


def test_archive_runs_in_shifts_with_receipts_numbered_in_each(
    archive: list[EmulatedDocument],
) -> None:
    assert [d.fd for d in archive] == list(range(1, 401))
    kinds = [d.record["doc_kind"] for d in archive]
    assert kinds[0] == "shift_open"
    assert Counter(kinds)["shift_close"] >= 3
    expected_no = 0
    shift = 0
    for document in archive:
        if document.doc_type == 2:
            shift += 1
            expected_no = 0
        elif document.doc_type == 3:
            expected_no += 1
            assert document.record["receipt_no"] == expected_no
        assert document.record["shift"] == shift


def test_issued_at_comes_from_the_clock_and_never_goes_back() -> None:
    times = iter([START, START + timedelta(minutes=5), START, START + timedelta(seconds=1)])
    gen = DocumentGenerator(wall=lambda: next(times))
    stamps = [gen.next_document().issued_at for _ in range(4)]
    later = START + timedelta(minutes=5)
    assert stamps == [START, later, later, later]


def test_the_same_seed_gives_the_same_archive_and_another_seed_another() -> None:
    first = [d.raw for d in generator(7).archive(50)]
    assert first == [d.raw for d in generator(7).archive(50)]
    assert first != [d.raw for d in generator(8).archive(50)]


def test_an_explicit_operation_and_identity_are_encoded() -> None:
    gen = generator(fn="9999000011112222", inn="500100732259", kkt_reg_no="0000000001234567")
    gen.open_shift()
    receipt = gen.receipt(operation=2)
    decoded = decode_document(3, receipt.raw)
    assert (decoded.operation, decoded.fn) == (2, "9999000011112222")
    assert (decoded.inn, decoded.kkt_reg_no) == ("500100732259", "0000000001234567")


def test_a_receipt_needs_an_open_shift() -> None:
    with pytest.raises(RuntimeError):
        generator().receipt()


def test_fixtures_round_trip_through_a_file(tmp_path: Path) -> None:
    documents = generator().archive(30)
    path = tmp_path / "fn.jsonl"
    dump_fixtures(documents, path)
    assert load_fixtures(path) == documents


def test_a_fixture_line_without_record_gets_the_decoded_fields(tmp_path: Path) -> None:
    document = generator().archive(1)[0]
    path = tmp_path / "fn.jsonl"
    line = {"fd": 1, "doc_type": 2, "tlv_hex": document.raw.hex()}
    path.write_text(json.dumps(line) + "\n\n", encoding="utf-8")
    [loaded] = load_fixtures(path)
    assert loaded.record == document.record
    assert loaded.raw == document.raw


def test_a_broken_fixture_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "fn.jsonl"
    path.write_text('{"fd": 1, "doc_type": 2, "tlv_hex": ""}\n{"fd": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"fn\.jsonl:2:"):
        load_fixtures(path)
    path.write_text('{"fd": 1, "doc_type": 2, "tlv_hex": "00"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"fn\.jsonl:1:"):
        load_fixtures(path)
