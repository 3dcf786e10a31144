"""A damaged journal is replaced in one step and remembered; damage at run time ends alike."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kktd.journal import Journal, JournalDamagedError, JournalError, JournalUnavailableError
from kktd.journal.recovery import SHOWN_FOR
from tests.support.clock import T0, FakeClock
from tests.support.faults import damage_table, fill, tmpfs
from tests.support.wait import wait_until

FN = "9999078900005488"
GARBAGE = b"this is not a database " * 4000  # ~90 KiB


@pytest.fixture
async def kept(db_path: Path, clock: FakeClock) -> AsyncIterator[Journal]:
    """A journal with its `keep_open` loop running, as in the daemon."""
    journal = await Journal.open(db_path, wall=clock)
    keeper = asyncio.create_task(journal.keep_open(lambda: None, retry_every=0.05))
    try:
        yield journal
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await journal.close()


async def test_a_recovery_that_fails_for_want_of_space_still_rereads_the_fn_later(
    tmp_path: Path,
) -> None:
    # Issue 11, item 4: the marker used to be written after the fresh journal existed, so a
    # write that failed in between left a healthy empty journal, and start_fd = "next" then
    # skipped every FD the damaged one still had to deliver.
    async with tmpfs(tmp_path / "fs", "1m") as problem:
        if problem is not None:
            pytest.skip(f"needs a real full file system (root, for a tmpfs): {problem}")
        path = tmp_path / "fs" / "kktd.db"
        path.write_bytes(GARBAGE)  # the damaged journal still takes its space
        filler = tmp_path / "fs" / "filler"
        fill(filler)
        with pytest.raises((JournalError, sqlite3.Error)):  # sqlite3's own, before the fix
            await Journal.open(path)
        filler.unlink()  # space returns; kktd opens the journal again
        async with await Journal.open(path) as journal:
            assert await journal.reread_pending()
            assert journal.recovered_from is not None
            assert journal.recovered_from.read_bytes() == GARBAGE


async def test_a_recovery_cut_short_before_the_rename_is_done_again(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path.write_bytes(GARBAGE)

    def power_cut(self: Path, target: Path) -> Path:
        raise OSError(5, "Input/output error")  # the last step never happens

    monkeypatch.setattr(Path, "replace", power_cut)
    with pytest.raises(JournalError):
        await Journal.open(db_path, wall=clock)
    monkeypatch.undo()
    assert db_path.read_bytes() == GARBAGE  # the name still holds the damaged file
    async with await Journal.open(db_path, wall=clock) as journal:
        assert await journal.reread_pending()
    assert not db_path.with_name("kktd.db.fresh").exists()


async def test_the_fresh_journal_arrives_whole_with_its_marker_and_record(
    db_path: Path, clock: FakeClock
) -> None:
    db_path.write_bytes(GARBAGE)
    async with await Journal.open(db_path, wall=clock) as journal:
        record = journal.recovery
        assert record is not None
        assert (record.at, record.moved_to) == (T0, str(journal.recovered_from))
        assert "damaged" in record.reason
        assert await journal.reread_pending()
        assert await journal.store(FN, 1, 3, b"raw", {}) is True
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [r[0] for r in conn.execute("SELECT key FROM meta ORDER BY key")] == [
            "recovery",
            "reread_fn_archive",
        ]
    assert sorted(p.name for p in db_path.parent.iterdir() if "fresh" in p.name) == []


async def test_the_recovery_is_shown_across_restarts_until_acknowledged(
    db_path: Path, clock: FakeClock
) -> None:
    db_path.write_bytes(GARBAGE)
    await (await Journal.open(db_path, wall=clock)).close()
    clock.now += 3600
    async with await Journal.open(db_path, wall=clock) as journal:  # a restart
        assert journal.recovered_from is None  # this open replaced nothing ...
        record = journal.recovery
        assert record is not None  # ... but the journal remembers the last recovery
        assert record.shown(clock.now)
        acknowledged = await journal.acknowledge_recovery()
        assert acknowledged is not None
        assert acknowledged.acknowledged_at == clock.now
        assert await journal.acknowledge_recovery() is None  # once is enough
    async with await Journal.open(db_path, wall=clock) as journal:
        assert journal.recovery is not None
        assert not journal.recovery.shown(clock.now)


async def test_an_unacknowledged_recovery_is_shown_for_a_week(
    db_path: Path, clock: FakeClock
) -> None:
    db_path.write_bytes(GARBAGE)
    async with await Journal.open(db_path, wall=clock) as journal:
        record = journal.recovery
    assert record is not None
    assert record.shown(T0 + SHOWN_FOR - 1)
    assert not record.shown(T0 + SHOWN_FOR)


@pytest.mark.parametrize("table", ["documents", "cursors"])
async def test_damage_at_run_time_ends_in_a_fresh_journal_that_rereads_the_fn(
    kept: Journal, db_path: Path, table: str
) -> None:
    for fd in (1, 2, 3):
        await kept.store(FN, fd, 3, b"raw", {})
    damage_table(db_path, table)
    first_use = kept.store(FN, 4, 3, b"raw", {}) if table == "documents" else kept.cursor(FN)
    with capture_logs() as logs:
        with pytest.raises(JournalDamagedError, match="malformed"):
            await first_use
        await wait_until(lambda: kept.recovered_from is not None)
    # the start-up path, in-process: moved aside, fresh, the FN's archive asked for again
    assert kept.unavailable() is None
    assert await kept.cursor(FN) is None
    assert await kept.reread_pending()
    assert await kept.store(FN, 1, 3, b"raw", {}) is True
    assert kept.recovered_from is not None
    assert kept.recovered_from.exists()
    events = [e["event"] for e in logs]
    assert events.count("journal.unavailable") == 1
    assert events.count("journal.corrupt_moved_aside") == 1
    assert events.count("journal.available") == 1


async def test_while_it_is_replaced_every_call_fails_at_once_naming_the_damage(
    db_path: Path, clock: FakeClock
) -> None:
    journal = await Journal.open(db_path, wall=clock)  # no keep_open: it stays unavailable
    try:
        await journal.store(FN, 1, 3, b"raw", {})
        damage_table(db_path, "documents")
        with pytest.raises(JournalDamagedError):
            await journal.get(FN, 1)
        for call in (journal.counts(), journal.cursor(FN), journal.store(FN, 2, 3, b"", {})):
            with pytest.raises(JournalUnavailableError, match="journal unavailable: damaged"):
                await call
        unavailable = journal.unavailable()
        assert unavailable is not None
        assert unavailable.kind == "damaged"
        await journal.open_now()  # what keep_open does
        assert journal.unavailable() is None
        assert journal.recovered_from is not None
    finally:
        await journal.close()


async def test_a_journal_that_could_not_open_opens_when_the_cause_is_gone(tmp_path: Path) -> None:
    missing = tmp_path / "not-yet" / "kktd.db"
    journal = Journal(missing)
    keeper = asyncio.create_task(journal.keep_open(lambda: None, retry_every=0.05))
    try:
        await wait_until(lambda: journal.fault is not None and journal.fault.kind == "io")
        with pytest.raises(JournalUnavailableError, match="I/O error"):
            await journal.counts()
        opened: list[bool] = []
        journal.on_open.append(lambda: opened.append(True))
        missing.parent.mkdir()
        await wait_until(lambda: journal.unavailable() is None)
        assert opened == [True]
        assert (await journal.counts()).pending == 0
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await journal.close()


def test_an_io_error_at_run_time_reopens_the_same_file_through_the_start_up_check(
    db_path: Path,
) -> None:
    worker = Path(__file__).with_name("io_worker.py")
    done = subprocess.run(
        [sys.executable, str(worker), str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    seen = json.loads(done.stdout)
    assert seen["raised"][0] == "JournalIOError"
    assert "SQLITE_IOERR_WRITE" in seen["raised"][1]
    assert seen["unavailable"].startswith("journal unavailable: I/O error on ")
    # reopened through the integrity check, kept (not damaged), nothing lost
    assert (seen["reopened"], seen["recovered_from"], seen["cursor"]) == (True, None, 5)
    assert seen["stored"] is True
    assert not list(db_path.parent.glob("*.corrupt-*"))
