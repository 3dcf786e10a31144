"""The audit trail of the OFD relay: one record per exchange attempted, whatever its outcome.

The relay hands every record to an `OfdAudit`. The journal is meant to become one (a table of
exchanges next to the FDs); until then `MemoryAudit` keeps the latest records in memory and the
relay's `ofd.exchanged` log line carries sizes, hashes, timings and the outcome of each.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Outcome = Literal[
    "relayed",  # the answer is in the FN
    "unreachable",  # no connection to the OFD
    "timeout",  # connected, no whole answer in ofd.timeout
    "reset",  # the OFD dropped the connection before its answer was whole
    "malformed",  # the OFD answered something that is not a session message
    "fn_refused",  # the FN refused the answer (an error byte to FF32/FF33)
    "link_lost",  # the serial link failed while the answer was being written
]


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    """One message carried (or not) to the OFD; times are wall clock and seconds."""

    started_at: float
    fn: str | None  # from the message's session header
    message: bytes
    answer: bytes | None  # None when the OFD gave no well-formed answer
    outcome: Outcome
    error: str | None
    read_seconds: float  # FF30 + FF31 blocks
    ofd_seconds: float  # connect, send, answer
    write_seconds: float  # FF32 + FF33 blocks

    def summary(self) -> dict[str, Any]:
        """The record without its bytes: what the log line and the status show."""
        return {
            "outcome": self.outcome,
            "fn": self.fn,
            "message_bytes": len(self.message),
            "message_sha256": sha256(self.message),
            "answer_bytes": None if self.answer is None else len(self.answer),
            "answer_sha256": None if self.answer is None else sha256(self.answer),
            "read_seconds": round(self.read_seconds, 3),
            "ofd_seconds": round(self.ofd_seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
            "error": self.error,
        }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OfdAudit(Protocol):
    """Where the relay writes its records (the journal, once it has the table)."""

    async def record_ofd_exchange(self, record: ExchangeRecord) -> None: ...


class MemoryAudit:
    """The latest `keep` records, newest last."""

    def __init__(self, keep: int = 100) -> None:
        self.records: deque[ExchangeRecord] = deque(maxlen=keep)

    async def record_ofd_exchange(self, record: ExchangeRecord) -> None:
        self.records.append(record)
