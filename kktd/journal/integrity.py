"""Opening the journal file: pragmas, integrity check, migrations, moving a damaged file aside.

The FN is the source of truth, so a damaged journal is not repaired: it is kept for forensics
under a new name and a fresh one is started, which the poller refills from the FN.
"""

from __future__ import annotations

import sqlite3
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


def is_damage(exc: sqlite3.Error) -> bool:
    # extended codes carry the primary code in the low byte
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES


async def connect(path: Path) -> aiosqlite.Connection:
    """Open `path` ready for use (checked, WAL, synchronous=FULL, migrated).

    Raises `DamagedJournalError` for a damaged file and closes the connection on any failure.
    """
    readonly = _readonly_uri(path)
    if readonly is not None:
        await _inspect(readonly)
    # isolation_level=None: the journal issues BEGIN IMMEDIATE / COMMIT itself
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        await _configure(conn)
        await migrate(conn)
    except sqlite3.DatabaseError as exc:
        await conn.close()
        if is_damage(exc):
            raise DamagedJournalError(str(exc)) from exc
        raise
    except BaseException:
        await conn.close()
        raise
    return conn


def _readonly_uri(path: Path) -> str | None:
    """A read-only URI for an existing file (a one-off stat at start-up), None for a new one."""
    return path.resolve().as_uri() + "?mode=ro" if path.exists() else None


async def _inspect(uri: str) -> None:
    """Version and integrity check on a read-only connection.

    Read-only, so that nothing is written to a newer kktd's file, and so that closing the
    connection to a damaged file does not checkpoint and delete its -wal (a read-write close
    does): the evidence is moved aside whole.
    """
    try:
        async with aiosqlite.connect(uri, uri=True) as ro:
            await ro.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            await check_version(ro)
            async with ro.execute("PRAGMA quick_check") as cur:
                problems = [str(row[0]) for row in await cur.fetchall()]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise DamagedJournalError(str(exc)) from exc
        raise
    if problems != ["ok"]:
        raise DamagedJournalError("quick_check: " + "; ".join(problems[:5]))


async def _configure(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA journal_mode = WAL") as cur:
        row = await cur.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise JournalError(f"cannot switch the journal to WAL mode (got {row!r})")
    await conn.execute("PRAGMA synchronous = FULL")


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
