"""`kktd export --format csv`: the exported JSON records flattened to CSV columns.

The API streams JSON lines only; the command flattens them here, so a record has one definition
and the command can count records exactly for its progress line. A CSV has no escapes: its
values are cleaned of control characters (kept: line breaks, quoted), as the file is as likely
to be shown on a terminal as opened in a spreadsheet.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from kktd.cli.render import clean
from kktd.kkt.tlv import BODY_FIELDS

# items are nested: the CSV keeps one row per FD and leaves them to the JSON lines
CSV_COLUMNS = (
    "fn",
    "fd",
    *(name for name in BODY_FIELDS if name != "items"),
    "state",
    "attempts",
    "journaled_at",
    "synced_at",
    "last_error",
)


def csv_header() -> str:
    return _csv_line(list(CSV_COLUMNS))


def csv_line(item: dict[str, Any]) -> str:
    """One CSV line of an exported record: its identity and state, then the decoded fields."""
    fields = item.get("fields") or {}
    values = [item.get(column, fields.get(column)) for column in CSV_COLUMNS]
    return _csv_line(["" if value is None else clean(value, block=True) for value in values])


def _csv_line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()
