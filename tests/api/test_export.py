"""The exported record, its CSV flattening and the `since` date."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import pytest

from kktd.cli.csv_export import CSV_COLUMNS, csv_header, csv_line
from kktd.contract import parse_since
from kktd.control.api.export import record
from kktd.journal import JournalEntry

ENTRY = JournalEntry(
    fn="9999078900005488",
    fd=163,
    doc_type=3,
    raw=b"\x01\x02",
    fields={"doc_type": 3, "doc_kind": "receipt", "total": 20000, "items": [{"name": "Хлеб"}]},
    journaled_at=datetime(2024, 5, 1, 9, 30).timestamp(),
    state="dead",
    attempts=2,
    last_error='HTTP 422: "bad", really\nbad',
    next_attempt_at=0.0,
    synced_at=None,
)


def test_a_record_carries_identity_state_fields_and_raw_tlv() -> None:
    item = record(ENTRY)
    assert (item["fn"], item["fd"], item["state"], item["tlv"]) == (ENTRY.fn, 163, "dead", "AQI=")
    assert item["journaled_at"].startswith("2024-05-01T09:30:00")
    assert item["synced_at"] is None
    assert item["fields"]["items"] == [{"name": "Хлеб"}]


def test_csv_rows_survive_quotes_and_newlines_and_keep_the_column_order() -> None:
    text = csv_header() + csv_line(record(ENTRY))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(CSV_COLUMNS)
    row = dict(zip(rows[0], rows[1], strict=True))
    assert (row["fn"], row["fd"], row["doc_kind"], row["total"]) == (
        ENTRY.fn,
        "163",
        "receipt",
        "20000",
    )
    assert row["last_error"] == 'HTTP 422: "bad", really\nbad'
    assert row["synced_at"] == ""


def test_since_takes_a_local_date_or_date_time_or_an_offset() -> None:
    assert parse_since("2024-05-01") == datetime(2024, 5, 1).timestamp()
    assert parse_since("2024-05-01T09:30") == datetime(2024, 5, 1, 9, 30).timestamp()
    assert parse_since("2024-05-01T00:00:00+00:00") == 1714521600.0


@pytest.mark.parametrize("text", ["yesterday", "", "01.05.2024"])
def test_since_rejects_what_is_not_a_date(text: str) -> None:
    with pytest.raises(ValueError, match="expected a date like 2024-05-01"):
        parse_since(text)
