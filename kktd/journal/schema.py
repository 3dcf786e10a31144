"""Journal schema and its forward migrations, versioned by ``PRAGMA user_version``.

Migration N (1-based) takes a file from user_version N-1 to N. Each runs in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash mid-migration leaves
the file at the previous version, never half-migrated. Append new migrations; never edit old ones.
Plain sqlite3: this runs once, in a worker thread, while the journal is being opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import structlog

from kktd.journal.errors import JournalVersionError

log = structlog.get_logger(__name__)

Migration = Sequence[str]

_V1: Migration = (
    """CREATE TABLE documents (
        fn TEXT NOT NULL,
        fd INTEGER NOT NULL,
        doc_type INTEGER NOT NULL,
        raw BLOB NOT NULL,
        fields TEXT NOT NULL,
        journaled_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'synced', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at REAL NOT NULL,
        synced_at REAL,
        PRIMARY KEY (fn, fd)
    )""",
    # claim_due, list_dead, counts and pending_fns all walk one state in (fn, fd) order
    "CREATE INDEX documents_by_state ON documents (state, fn, fd)",
    # export reads in journaling order
    "CREATE INDEX documents_by_journaled_at ON documents (journaled_at, fn, fd)",
    # prune touches only synced rows, oldest first
    "CREATE INDEX documents_synced_at ON documents (synced_at) WHERE state = 'synced'",
    """CREATE TABLE cursors (
        fn TEXT PRIMARY KEY,
        last_fd INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )""",
)

_V2: Migration = (
    # small facts about the journal itself, e.g. that it replaced a damaged one
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # the OFD relay's audit trail (SPEC section 9): every exchange, whatever its outcome
    """CREATE TABLE ofd_exchanges (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        fn TEXT,
        message BLOB NOT NULL,
        answer BLOB,
        outcome TEXT NOT NULL,
        error TEXT,
        read_seconds REAL NOT NULL,
        ofd_seconds REAL NOT NULL,
        write_seconds REAL NOT NULL
    )""",
    "CREATE INDEX ofd_exchanges_by_time ON ofd_exchanges (started_at)",
)

_V3: Migration = (
    # FDs the operator skipped with `kktd skip` (the KKT could never produce them): who asked,
    # when, why, and what the reads of the FD failed with. Never written automatically.
    """CREATE TABLE skips (
        fn TEXT NOT NULL,
        fd INTEGER NOT NULL,
        skipped_at REAL NOT NULL,
        reason TEXT NOT NULL,
        operator TEXT NOT NULL,
        peer TEXT NOT NULL,
        auth TEXT NOT NULL,
        read_error TEXT,
        PRIMARY KEY (fn, fd)
    )""",
)

_V4: Migration = (
    # the request body (SPEC section 4), built once when the FD is journaled and sent as is;
    # emptied once the FD is synced. Rows from before this step have none: the sync engine
    # builds theirs at delivery (a migration of SQL only cannot, and rebuilding every row of a
    # large journal at start would hold up the start for FDs that are mostly synced already).
    "ALTER TABLE documents ADD COLUMN body BLOB",
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection, known: int = len(MIGRATIONS)) -> int:
    """The file's schema version; `JournalVersionError` when it is newer than `known`.

    Run before anything writes to the file, so a newer kktd's journal is left exactly as it was.
    """
    version = user_version(conn)
    if version > known:
        raise JournalVersionError(
            f"journal schema version {version} is newer than this kktd knows "
            f"({known}); upgrade kktd or point journal.path elsewhere"
        )
    return version


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the file up to ``len(migrations)``, one transaction per step; return that version.

    `conn` must be in autocommit mode (``isolation_level=None``): the transactions are explicit.
    """
    version = check_version(conn, len(migrations))
    for target, statements in enumerate(migrations[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in statements:
                conn.execute(sql)
            # PRAGMA takes no bound parameters; target is an int we computed
            conn.execute(f"PRAGMA user_version = {target:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()  # a no-op when SQLite already rolled back on its own
            raise
        log.info("journal.migrated", version=target)
    return len(migrations)
