"""The journal (SPEC section 2): FDs, per-FN cursors and delivery state in one SQLite file."""

from __future__ import annotations

from kktd.journal.errors import JournalError, JournalFullError, JournalVersionError
from kktd.journal.store import DocState, Journal, JournalCounts, JournalEntry

__all__ = [
    "DocState",
    "Journal",
    "JournalCounts",
    "JournalEntry",
    "JournalError",
    "JournalFullError",
    "JournalVersionError",
]
