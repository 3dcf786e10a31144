"""One place classifies what SQLite and the file system raise: full, damaged, I/O, busy."""

from __future__ import annotations

import errno
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kktd.journal import (
    Journal,
    JournalBusyError,
    JournalDamagedError,
    JournalFullError,
    JournalIOError,
)
from kktd.journal.errors import JournalError, JournalUnavailableError, classify
from tests.support.faults import fill, tmpfs


def _sqlite_error(code: int, text: str) -> sqlite3.Error:
    """What sqlite3 raises: the extended result code travels on the exception."""
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code
    return exc


SQLITE_IOERR_READ = sqlite3.SQLITE_IOERR | (1 << 8)


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (sqlite3.SQLITE_FULL, "database or disk is full", JournalFullError),
        (sqlite3.SQLITE_CORRUPT, "database disk image is malformed", JournalDamagedError),
        (sqlite3.SQLITE_NOTADB, "file is not a database", JournalDamagedError),
        (sqlite3.SQLITE_ERROR, "malformed database schema (documents)", JournalDamagedError),
        (sqlite3.SQLITE_BUSY, "database is locked", JournalBusyError),
        (sqlite3.SQLITE_LOCKED, "database table is locked", JournalBusyError),
        (SQLITE_IOERR_READ, "disk I/O error", JournalIOError),
        (sqlite3.SQLITE_READONLY, "attempt to write a readonly database", JournalIOError),
    ],
)
def test_each_sqlite_failure_of_the_journal_has_its_kind(
    tmp_path: Path, code: int, text: str, expected: type[JournalError]
) -> None:
    error = classify(_sqlite_error(code, text), tmp_path / "kktd.db")
    assert type(error) is expected
    assert text in str(error) or expected is JournalFullError


def test_an_error_of_the_statement_itself_is_not_a_journal_state(tmp_path: Path) -> None:
    # a constraint or bad SQL is a bug of ours: it keeps its own type and traceback
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed"), tmp_path / "db") is None
    assert classify(_sqlite_error(sqlite3.SQLITE_ERROR, "no such column: x"), tmp_path) is None


def test_file_system_errors_are_full_or_io(tmp_path: Path) -> None:
    path = tmp_path / "kktd.db"
    full = classify(OSError(errno.ENOSPC, "No space left on device"), path)
    assert isinstance(full, JournalFullError)
    assert str(full).startswith(f"disk full ({path}, ")
    assert isinstance(classify(OSError(errno.EIO, "Input/output error"), path), JournalIOError)


def test_an_unavailable_journal_names_the_fault_that_made_it_so(tmp_path: Path) -> None:
    fault = JournalFullError(f"disk full ({tmp_path / 'kktd.db'}, 0 bytes free)")
    unavailable = JournalUnavailableError(fault)
    assert unavailable.kind == "full"
    assert unavailable.fault is fault
    assert (
        str(unavailable) == f"journal unavailable: disk full ({tmp_path / 'kktd.db'}, 0 bytes free)"
    )


async def test_an_existing_journal_on_a_full_disk_is_full_not_an_io_error(tmp_path: Path) -> None:
    # SQLite says "disk I/O error" (SQLITE_IOERR_SHMSIZE) when it cannot grow the -shm file of a
    # journal on a full disk; the free space tells that apart from a failing disk.
    async with tmpfs(tmp_path / "fs", "1m") as problem:
        if problem is not None:
            pytest.skip(f"needs a real full file system (root, for a tmpfs): {problem}")
        path = tmp_path / "fs" / "kktd.db"
        await (await Journal.open(path)).close()  # a clean close leaves no -wal or -shm
        fill(tmp_path / "fs" / "filler")
        with closing(sqlite3.connect(path)) as conn, pytest.raises(sqlite3.Error) as raised:
            conn.execute("SELECT 1 FROM documents").fetchall()
        assert raised.value.sqlite_errorname == "SQLITE_IOERR_SHMSIZE"
        error = classify(raised.value, path)
        assert isinstance(error, JournalFullError)
        assert str(error) == f"disk full ({path}, 0 bytes free)"
        with pytest.raises(JournalFullError, match="disk full"):
            await Journal.open(path)
