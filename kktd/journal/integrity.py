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

from kktd.journal.errors import JournalDamagedError, JournalIOError, classify
from kktd.journal.schema import check_version, migrate

BUSY_TIMEOUT_MS = 5000
SIDECARS = ("-wal", "-shm", "-journal")


async def connect(path: Path) -> aiosqlite.Connection:
    """Open `path` ready for use: checked, migrated, WAL, synchronous=FULL.

    Raises a classified `JournalError`: `JournalDamagedError` for a damaged file (and only
    then: a locked, unreadable or missing file is not damage and must never be moved aside).
    """
    try:
        # The file work runs once, in plain sqlite3 on a worker thread, so that a file SQLite
        # cannot open fails there and not inside aiosqlite's connection thread.
        await asyncio.to_thread(prepare, path)
        # isolation_level=None: the journal issues BEGIN IMMEDIATE / COMMIT itself
        conn = await aiosqlite.connect(path, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        if (error := classify(exc, path)) is None:
            raise
        raise error from exc
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        await conn.execute("PRAGMA synchronous = FULL")  # per connection, so set here
    except BaseException as exc:
        await conn.close()
        if isinstance(exc, sqlite3.Error) and (error := classify(exc, path)) is not None:
            raise error from exc
        raise
    return conn


def prepare(path: Path) -> None:
    """Check an existing file, then bring it (or a new one) to WAL mode and the latest schema."""
    if path.exists():
        _inspect(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalIOError(f"cannot switch the journal to WAL mode (got {mode!r})")
        migrate(conn)


def _inspect(path: Path) -> None:
    """Version and integrity check on a read-only connection.

    Read-only, so that nothing is written to a newer kktd's file, and so that closing the
    connection to a damaged file does not checkpoint and delete its -wal (a read-write close
    does): the evidence is moved aside whole.
    """
    if path.with_name(path.name + "-journal").exists():
        _roll_back(path)
    uri = path.resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as ro:
        ro.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        check_version(ro)
        problems = [str(row[0]) for row in ro.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise JournalDamagedError("damaged (quick_check: " + "; ".join(problems[:5]) + ")")


def _roll_back(path: Path) -> None:
    """Let SQLite roll back a hot rollback journal, as it does on any read-write open.

    A kill while SQLite switched a new file to WAL leaves one behind, and a read-only connection
    cannot roll it back: every later start would fail with SQLITE_READONLY_ROLLBACK.
    """
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()


def move_aside(path: Path, now: float) -> Path:
    """Rename `path` (and its sidecars) to ``<name>.corrupt-<YYYYmmddTHHMMSS>`` (UTC).

    (Only the tests call it; recovery moves a damaged file aside with `replace_damaged`.)"""
    target = aside_path(path, now)
    path.rename(target)
    move_sidecars(path, target)
    return target


def aside_path(path: Path, now: float) -> Path:
    """Where a damaged `path` goes: a name no earlier copy has taken."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():  # two recoveries within a second must not overwrite the first
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    return target


def move_sidecars(path: Path, target: Path) -> None:
    """The -wal, -shm and -journal of `path` follow it to `target`.

    None may stay behind: SQLite would apply an old -wal or hot -journal to whatever file
    next has the name, and so damage a fresh journal.
    """
    for suffix in SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            sidecar.rename(target.with_name(target.name + suffix))
