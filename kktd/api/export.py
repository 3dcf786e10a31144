"""The shape of exported FDs: one JSON line per FD on the wire, CSV columns for spreadsheets.

The API streams JSON lines only; `kktd export --format csv` flattens them here, so a record
has one definition and the command can count records exactly for its progress line. A CSV has
no escapes: its values are cleaned of control characters (kept: line breaks, quoted), as the
file is as likely to be shown on a terminal as opened in a spreadsheet.
"""

from __future__ import annotations

import base64
import csv
import io
from datetime import datetime
from typing import Any

from kktd.api.render import clean
from kktd.journal import JournalEntry
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


def iso(timestamp: float | None) -> str | None:
    """A wall-clock timestamp as local ISO 8601 with its offset."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def parse_since(text: str) -> float:
    """`--since` / `?since=`: an ISO date or date-time; without an offset it is local time.

    Raises ValueError with the operator-facing reason.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"since: expected a date like 2024-05-01 or 2024-05-01T09:30, got {text!r}"
        ) from None
    return moment.timestamp()  # a naive datetime is taken as local time


def record(entry: JournalEntry) -> dict[str, Any]:
    """One exported FD: identity, delivery state, decoded fields and the raw TLV."""
    return {
        "fn": entry.fn,
        "fd": entry.fd,
        "doc_type": entry.doc_type,
        "state": entry.state,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "journaled_at": iso(entry.journaled_at),
        "synced_at": iso(entry.synced_at),
        "fields": entry.fields,
        "tlv": base64.b64encode(entry.raw).decode("ascii"),
    }


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
