"""Retention prunes in batches, letting journaling in between (issue 12, item 7)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from kktd.journal import Journal
from tests.support.clock import T0, FakeClock

FN = "9999078900005488"
OLD = 6_000  # synced FDs a first prune after lowering retention_days finds


def _seed(path: Path, synced: int) -> None:
    """`synced` FDs synced long ago, written straight into the file (fast, one transaction)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO documents (fn, fd, doc_type, raw, fields, journaled_at, state,"
            " next_attempt_at, synced_at) VALUES (?, ?, 3, x'00', '{}', ?, 'synced', 0, ?)",
            [(FN, fd, T0 - 400 * 86400, T0 - 400 * 86400) for fd in range(1, synced + 1)],
        )


def _old_rows(path: Path) -> int:
    """Counted on a connection of its own: in WAL mode it never waits for the journal's."""
    with closing(sqlite3.connect(path)) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM documents WHERE fd <= ?", (OLD,)).fetchone()[0]
        )


async def test_an_fd_is_journaled_while_a_large_prune_is_still_under_way(
    db_path: Path, clock: FakeClock
) -> None:
    async with await Journal.open(db_path, wall=clock) as journal:
        await journal.store(FN, OLD + 1, 3, b"raw", {})  # a pending FD: never pruned
        _seed(db_path, OLD)
        prune = asyncio.create_task(journal.prune(T0 - 30 * 86400))
        # wait for the prune's first commit, then journal an FD the way the poller does
        while _old_rows(db_path) == OLD and not prune.done():
            await asyncio.sleep(0)
        assert await journal.store(FN, OLD + 2, 3, b"raw", {}) is True
        left_when_stored = _old_rows(db_path)
        assert await prune == OLD
    # one unbounded DELETE would hold the journal until every old row was gone
    assert 0 < left_when_stored < OLD
    assert _old_rows(db_path) == 0


async def test_a_prune_reports_progress_batch_by_batch(db_path: Path, clock: FakeClock) -> None:
    async with await Journal.open(db_path, wall=clock) as journal:
        _seed(db_path, 2500)
        beats: list[int] = []
        pruned = await journal.prune(T0, batch=1000, progress=lambda: beats.append(1))
    assert pruned == 2500
    assert len(beats) >= 3  # 1000 + 1000 + 500 FDs (and the audit table's one empty batch)
