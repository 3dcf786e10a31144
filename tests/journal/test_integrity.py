"""Opening a damaged journal: moved aside, a fresh one started, never a crash loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kktd.journal import Journal, JournalIOError
from kktd.journal.integrity import move_aside
from tests.support.clock import FakeClock

FN = "9999078900005488"
STAMP = "20231114T221320"  # T0 in UTC


async def _expect_recovery(db_path: Path, clock: FakeClock) -> Path:
    with capture_logs() as logs:
        journal = await Journal.open(db_path, wall=clock)
    try:
        assert journal.recovered_from == db_path.with_name(f"kktd.db.corrupt-{STAMP}")
        # the fresh journal works
        assert await journal.cursor(FN) is None
        assert await journal.store(FN, 1, 3, b"raw", {}) is True
    finally:
        await journal.close()
    moved = [e for e in logs if e["event"] == "journal.corrupt_moved_aside"]
    assert len(moved) == 1
    assert moved[0]["log_level"] == "error"
    return journal.recovered_from


async def _real_journal(db_path: Path, documents: int) -> None:
    async with await Journal.open(db_path) as journal:
        for fd in range(1, documents + 1):
            await journal.store(FN, fd, 3, bytes([fd % 256]) * 1000, {"fd": fd})


async def test_a_file_of_garbage_is_moved_aside_with_its_sidecars(
    db_path: Path, clock: FakeClock
) -> None:
    garbage = b"not a journal at all " * 500
    db_path.write_bytes(garbage)
    db_path.with_name("kktd.db-wal").write_bytes(b"wal garbage")

    moved = await _expect_recovery(db_path, clock)
    assert moved.read_bytes() == garbage
    assert moved.with_name(moved.name + "-wal").read_bytes() == b"wal garbage"


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
async def test_a_damaged_real_journal_is_moved_aside(
    db_path: Path, clock: FakeClock, damage: str
) -> None:
    await _real_journal(db_path, documents=60)
    data = bytearray(db_path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[4096 * 3 : 4096 * 6] = b"\xa5" * (4096 * 3)  # three pages past the schema
    db_path.write_bytes(bytes(data))

    moved = await _expect_recovery(db_path, clock)
    assert moved.read_bytes() == bytes(data)


async def test_a_healthy_journal_is_kept(db_path: Path, clock: FakeClock) -> None:
    await _real_journal(db_path, documents=3)
    async with await Journal.open(db_path, wall=clock) as journal:
        assert journal.recovered_from is None
        assert await journal.last_fd(FN) == 3
    assert not list(db_path.parent.glob("*.corrupt-*"))


@pytest.mark.parametrize("where", ["a-directory", "missing-dir/kktd.db"])
async def test_a_path_sqlite_cannot_open_is_an_error_not_damage(tmp_path: Path, where: str) -> None:
    unopenable = tmp_path / where
    if where == "a-directory":
        unopenable.mkdir()
    with pytest.raises(JournalIOError, match="I/O error"):
        await Journal.open(unopenable)
    assert unopenable.is_dir() == (where == "a-directory")
    assert not list(tmp_path.rglob("*.corrupt-*"))


def test_move_aside_never_overwrites_an_earlier_copy(db_path: Path, clock: FakeClock) -> None:
    db_path.write_bytes(b"first")
    first = move_aside(db_path, clock())
    db_path.write_bytes(b"second")
    second = move_aside(db_path, clock())
    assert first.name == f"kktd.db.corrupt-{STAMP}"
    assert second.name == f"kktd.db.corrupt-{STAMP}.1"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


_KILLED_MID_TRANSACTION = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE t (x)")
conn.execute("PRAGMA cache_size = 1")  # spill to the file: the rollback journal is hot
conn.execute("BEGIN")
for _ in range(100):
    conn.execute("INSERT INTO t VALUES (randomblob(4000))")
os._exit(9)
"""


async def test_a_hot_rollback_journal_left_by_a_kill_is_rolled_back_not_a_failure(
    db_path: Path,
) -> None:
    # A kill while SQLite switches a new file to WAL leaves a hot -journal; the read-only
    # integrity check cannot roll it back, so every later open failed (SQLITE_READONLY_ROLLBACK).
    subprocess.run([sys.executable, "-c", _KILLED_MID_TRANSACTION, str(db_path)], check=False)
    assert db_path.with_name("kktd.db-journal").exists()
    async with await Journal.open(db_path) as journal:
        assert journal.recovered_from is None  # not damage: SQLite's own rollback
        assert await journal.store(FN, 1, 3, b"raw", {}) is True
    assert not db_path.with_name("kktd.db-journal").exists()
