"""Errors the journal raises to its callers (the poller, the sync engine, the daemon)."""

from __future__ import annotations


class JournalError(Exception):
    """Base of every journal error a caller is expected to handle."""


class JournalFullError(JournalError):
    """The disk (or the database's page limit) is full; the transaction was rolled back.

    The poller stops reading the KKT and retries later: the FN keeps the documents meanwhile.
    """


class JournalVersionError(JournalError):
    """The file was written by a newer kktd; it is left untouched rather than downgraded."""
