"""Opening the journal file: integrity check, migrations, pragmas, moving a damaged file aside.

The FN is the source of truth, so a damaged journal is not repaired: it is kept for forensics
under a new name and a fresh one is started, which the poller refills from the FN.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from kktd.journal.errors import JournalError
from kktd.journal.schema import check_version, migrate

BUSY_TIMEOUT_MS = 5000
# Only these codes mean "the bytes are bad"; a locked, unreadable or missing file is not damage
# and must never be moved aside.
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SIDECARS = ("-wal", "-shm")


class DamagedJournalError(Exception):
    """The file is not a database or fails ``PRAGMA quick_check``."""


async def connect(path: Path) -> aiosqlite.Connection:
    """Open `path` ready for use: checked, migrated, WAL, synchronous=FULL.

    Raises `DamagedJournalError` for a damaged file.
    """
    # The file work runs once, in plain sqlite3 on a worker thread, so that a file SQLite
    # cannot open fails there and not inside aiosqlite's connection thread.
    await asyncio.to_thread(prepare, path)
    # isolation_level=None: the journal issues BEGIN IMMEDIATE / COMMIT itself
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        await conn.execute("PRAGMA synchronous = FULL")  # per connection, so set here
    except BaseException:
        await conn.close()
        raise
    return conn


def prepare(path: Path) -> None:
    """Check an existing file, then bring it (or a new one) to WAL mode and the latest schema."""
    try:
        if path.exists():
            _inspect(path)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"cannot switch the journal to WAL mode (got {mode!r})")
            migrate(conn)
    except sqlite3.DatabaseError as exc:
        if (exc.sqlite_errorcode & 0xFF) in _DAMAGE_CODES:  # low byte: the primary code
            raise DamagedJournalError(str(exc)) from exc
        raise


def _inspect(path: Path) -> None:
    """Version and integrity check on a read-only connection.

    Read-only, so that nothing is written to a newer kktd's file, and so that closing the
    connection to a damaged file does not checkpoint and delete its -wal (a read-write close
    does): the evidence is moved aside whole.
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as ro:
        ro.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        check_version(ro)
        problems = [str(row[0]) for row in ro.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise DamagedJournalError("quick_check: " + "; ".join(problems[:5]))


def move_aside(path: Path, now: float) -> Path:
    """Rename `path` (and its -wal/-shm) to ``<name>.corrupt-<YYYYmmddTHHMMSS>`` (UTC)."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # two recoveries within a second must not overwrite the first
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    path.rename(target)
    for suffix in _SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            sidecar.rename(target.with_name(target.name + suffix))
    return target
