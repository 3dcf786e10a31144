"""Schema migrations forward by PRAGMA user_version, and refusal of a newer file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kktd.journal import Journal, JournalVersionError
from kktd.journal.schema import MIGRATIONS, migrate, user_version


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


async def test_a_fresh_file_migrates_from_version_0_to_the_latest(db_path: Path) -> None:
    async with await Journal.open(db_path):
        pass
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert {"documents", "cursors", "documents_by_state"} <= _tables(db_path)


def test_migrate_applies_only_the_missing_steps_and_keeps_data(db_path: Path) -> None:
    extra = ("ALTER TABLE documents ADD COLUMN note TEXT",)
    known = len(MIGRATIONS)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 1  # a journal of the first release
        conn.execute(
            "INSERT INTO documents (fn, fd, doc_type, raw, fields, journaled_at, state,"
            " next_attempt_at) VALUES ('F', 1, 3, x'01', '{}', 0, 'pending', 0)"
        )
        assert migrate(conn, (*MIGRATIONS, extra)) == known + 1
        # run again: an ALTER re-applied would fail, so success means it was skipped
        assert migrate(conn, (*MIGRATIONS, extra)) == known + 1
        assert conn.execute("SELECT fd, note FROM documents").fetchall() == [(1, None)]


def test_a_failed_migration_rolls_back_to_the_previous_version(db_path: Path) -> None:
    broken = ("CREATE TABLE half_done (a)", "SELECT no_such_column FROM cursors")
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        with pytest.raises(sqlite3.OperationalError, match="no_such_column"):
            migrate(conn, (*MIGRATIONS, broken))
        assert user_version(conn) == len(MIGRATIONS)
        assert not conn.in_transaction
    assert "half_done" not in _tables(db_path)


async def test_a_newer_journal_is_refused_and_left_untouched(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    before = db_path.read_bytes()

    with pytest.raises(JournalVersionError, match="99"):
        await Journal.open(db_path)
    assert db_path.read_bytes() == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]
