"""The journal (SPEC section 2): FDs, per-FN cursors and delivery state in one SQLite file."""

from __future__ import annotations

from kktd.journal.errors import (
    JournalBusyError,
    JournalDamagedError,
    JournalError,
    JournalFullError,
    JournalIOError,
    JournalUnavailableError,
    JournalVersionError,
)
from kktd.journal.recovery import RecoveryRecord
from kktd.journal.rows import DocState, JournalCounts, JournalEntry, Outgoing
from kktd.journal.store import Journal

__all__ = [
    "DocState",
    "Journal",
    "JournalBusyError",
    "JournalCounts",
    "JournalDamagedError",
    "JournalEntry",
    "JournalError",
    "JournalFullError",
    "JournalIOError",
    "JournalUnavailableError",
    "JournalVersionError",
    "Outgoing",
    "RecoveryRecord",
]
