"""Errors the journal raises to its callers, and the one place that classifies SQLite's errors.

Every failure of a journal call reaches its caller as one of the `JournalError` kinds below, so
the poller, the sync engine and the API decide what to do from the kind, never from SQLite's
message: a full disk waits for space, a damaged file is replaced and re-read from the FN, an I/O
error reopens the file through the start-up check, a busy file is simply tried again later.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import ClassVar, Literal

Kind = Literal["full", "damaged", "io", "busy", "version", "closed"]

# Below this much space (or with no inode left) an I/O error is the disk being full: SQLite
# reports ENOSPC on its -shm and -wal files as SQLITE_IOERR_* ("disk I/O error"), not as FULL.
LOW_SPACE = 1 << 20
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
_IO_CODES = frozenset(
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,  # e.g. the file system remounted read-only after disk errors
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_NOLFS,
    }
)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class JournalError(Exception):
    """Base of every journal error a caller is expected to handle."""

    _kind: ClassVar[Kind] = "closed"

    @property
    def fault(self) -> JournalError:
        """The error that says what is wrong (itself, except for `JournalUnavailableError`)."""
        return self

    @property
    def kind(self) -> Kind:
        return self.fault._kind


class JournalFullError(JournalError):
    """The disk (or the database's page limit) is full; the transaction was rolled back.

    The poller stops reading the KKT and retries later: the FN keeps the documents meanwhile.
    """

    _kind = "full"


class JournalDamagedError(JournalError):
    """The file is damaged or not a database: it is moved aside and the FN is read again."""

    _kind = "damaged"


class JournalIOError(JournalError):
    """The file could not be read or written (EIO, a read-only remount, a file SQLite cannot
    open); the journal is reopened through the start-up check."""

    _kind = "io"


class JournalBusyError(JournalError):
    """Another process held the file's lock past the busy timeout; the call may be retried."""

    _kind = "busy"


class JournalVersionError(JournalError):
    """The file was written by a newer kktd; it is left untouched rather than downgraded."""

    _kind = "version"


class JournalUnavailableError(JournalError):
    """The journal is not open right now; `fault` says why (disk full, damaged, I/O …)."""

    def __init__(self, fault: JournalError) -> None:
        super().__init__(f"journal unavailable: {fault}")
        self._fault = fault

    @property
    def fault(self) -> JournalError:
        return self._fault


def classify(exc: sqlite3.Error | OSError, path: Path) -> JournalError | None:
    """The journal error for what SQLite (or the file system) raised while using `path`.

    None for an error of the statement itself (bad SQL, a constraint): that is a bug of ours,
    not a state of the journal, and travels on unchanged with its traceback.
    """
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return JournalFullError(disk_full(path))
        return JournalIOError(f"I/O error on {path} ({exc.strerror or exc})")
    code = getattr(exc, "sqlite_errorcode", 0) or 0
    primary = code & 0xFF  # the low byte is the primary result code of an extended one
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL:
        return JournalFullError(disk_full(path))
    if primary in _DAMAGE_CODES or "malformed" in text:
        return JournalDamagedError(f"damaged ({text})")
    if primary in _BUSY_CODES:
        return JournalBusyError(f"busy ({text})")
    if primary in _IO_CODES:
        if short_of_space(path):
            return JournalFullError(disk_full(path))
        name = getattr(exc, "sqlite_errorname", None) or "I/O error"
        return JournalIOError(f"I/O error on {path} ({text}, {name})")
    return None


def free_space(path: Path) -> tuple[int, int] | None:
    """(bytes, inodes) available to kktd on the file system of `path`; None if unknowable."""
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize, stat.f_favail


def short_of_space(path: Path) -> bool:
    free = free_space(path)
    if free is None:
        return False
    space, inodes = free
    # f_favail is 0 on file systems that do not count inodes (btrfs): only space decides there
    return space < LOW_SPACE or (inodes == 0 and _counts_inodes(path))


def _counts_inodes(path: Path) -> bool:
    try:
        return os.statvfs(path.parent).f_files > 0
    except OSError:
        return False


def disk_full(path: Path) -> str:
    """The words of a full disk, with what is left: "disk full (/var/lib/kktd/kktd.db, …)"."""
    free = free_space(path)
    if free is None:
        return f"disk full ({path})"
    space, inodes = free
    left = f"{space} bytes free" if inodes or not _counts_inodes(path) else "no inode free"
    return f"disk full ({path}, {left})"
