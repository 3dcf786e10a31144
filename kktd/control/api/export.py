"""The one JSON shape of a journal entry, as `/v1/documents` answers and `/v1/export` streams it.

Times are ISO 8601 with the local offset (`kktd.contract.iso`): an export is read by people
and spreadsheets, and one entry has one shape wherever the API sends it. The client flattens
the exported records to CSV itself (`kktd.cli.csv_export`).
"""

from __future__ import annotations

import base64
from typing import Any

from kktd.contract import iso
from kktd.journal import JournalEntry


def record(entry: JournalEntry) -> dict[str, Any]:
    """One journaled FD: identity, delivery state, decoded fields and the raw TLV."""
    return {
        "fn": entry.fn,
        "fd": entry.fd,
        "doc_type": entry.doc_type,
        "state": entry.state,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "journaled_at": iso(entry.journaled_at),
        "next_attempt_at": iso(entry.next_attempt_at) if entry.state == "pending" else None,
        "synced_at": iso(entry.synced_at),
        "fields": entry.fields,
        "tlv": base64.b64encode(entry.raw).decode("ascii"),
    }
