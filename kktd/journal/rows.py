"""What the journal takes and gives back: an FD to journal, a journaled FD, counts, an OFD record.

The row shapes of `kktd.journal.store`'s statements, kept apart from the statements so a reader
of the journal's API finds the types in one place. `insert_params` is the one place an FD
becomes a row: its fields serialised and its request body built (`kktd.sync.body`), once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from kktd.sync.body import encode_body

DocState = Literal["pending", "synced", "dead"]
# next_attempt_at of an FD due at once: 0, not "now", so a wall clock stepped back does not
# hold back FDs journaled before the step
DUE_NOW = 0.0


class OfdExchange(Protocol):
    """What the journal keeps of an OFD relay exchange (kktd.ofd.audit.ExchangeRecord)."""

    @property
    def started_at(self) -> float: ...
    @property
    def fn(self) -> str | None: ...
    @property
    def message(self) -> bytes: ...
    @property
    def answer(self) -> bytes | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def read_seconds(self) -> float: ...
    @property
    def ofd_seconds(self) -> float: ...
    @property
    def write_seconds(self) -> float: ...


_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps(..., ensure_ascii=False), built once
DocumentRow = tuple[str, int, int, bytes, str, float, float, bytes]


@dataclass(frozen=True, slots=True)
class NewFd:
    """An FD read from the FN, to be journaled (`Journal.store_many`)."""

    fn: str
    fd: int
    doc_type: int
    raw: bytes
    fields: Mapping[str, Any]


def insert_params(doc: NewFd, now: float) -> DocumentRow:
    """The `documents` insert's parameters for one FD, built before any write: a value JSON
    cannot carry fails here. The request body is built now, once (`kktd.sync.body`)."""
    fields = dict(doc.fields)
    fields_json = _JSON.encode(fields)
    raw = bytes(doc.raw)
    # The fields as given, not as the journal gives them back (json.loads of fields_json): the
    # same bytes for any fields JSON carries unchanged (string keys, str/int/float/bool/None,
    # lists, dicts), which is all a decoded FD holds; tests/journal pins it for the archive.
    body = encode_body(doc.fn, doc.fd, raw, fields)
    return (doc.fn, doc.fd, doc.doc_type, raw, fields_json, now, DUE_NOW, body)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled FD: its bytes as read from the FN, its decoded fields, its delivery state."""

    fn: str
    fd: int
    doc_type: int
    raw: bytes
    fields: dict[str, Any]
    journaled_at: float
    state: DocState
    attempts: int
    last_error: str | None
    next_attempt_at: float
    synced_at: float | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JournalEntry:
        """Build from a row in the journal's column order."""
        fn, fd, doc_type, raw, fields, journaled_at, state, attempts, error, due, synced = row
        return cls(
            fn=fn,
            fd=fd,
            doc_type=doc_type,
            raw=bytes(raw),
            fields=json.loads(fields),
            journaled_at=journaled_at,
            state=cast(DocState, state),
            attempts=attempts,
            last_error=error,
            next_attempt_at=due,
            synced_at=synced,
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A pending FD as its delivery needs it (`Journal.claim_due`): its key and the request body
    (SPEC section 4) as stored when it was journaled, sent as it is."""

    fn: str
    fd: int
    body: bytes


@dataclass(frozen=True, slots=True)
class JournalCounts:
    pending: int
    synced: int
    dead: int
    oldest_pending_journaled_at: float | None
