"""The journal's behaviour on a real SQLite file: journaling, delivery state, operator actions."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest

from kktd.journal import Journal, JournalCounts, JournalError, JournalFullError, store
from kktd.journal.rows import NewFd
from kktd.kkt.tlv import decode_document
from kktd.ofd.audit import ExchangeRecord
from kktd.sync.body import encode_body
from kktd.testbed.emulator.documents import DocumentGenerator
from tests.support.clock import T0, FakeClock

FN = "9999078900005488"
FN2 = "9999078900005489"
FIELDS = {"doc_kind": "receipt", "total": 20000, "items": [{"name": "Хлеб", "total": 20000}]}


async def test_store_journals_a_pending_fd_and_advances_the_cursor(journal: Journal) -> None:
    assert await journal.store(FN, 163, 3, b"\x01\x00\x02\x00ab", FIELDS) is True

    entry = await journal.get(FN, 163)
    assert entry is not None
    assert (entry.fn, entry.fd, entry.doc_type) == (FN, 163, 3)
    assert entry.raw == b"\x01\x00\x02\x00ab"
    assert entry.fields == FIELDS
    assert (entry.state, entry.attempts, entry.last_error, entry.synced_at) == (
        "pending",
        0,
        None,
        None,
    )
    assert entry.journaled_at == T0
    assert entry.next_attempt_at == 0.0  # due at once, whatever the wall clock does later
    assert await journal.cursor(FN) == 163
    assert await journal.cursor(FN2) is None


async def test_store_and_cursor_advance_commit_together(journal: Journal, db_path: Path) -> None:
    # make the cursor half of the transaction fail: the FD half must not stay behind
    with closing(sqlite3.connect(db_path)) as other:
        other.execute(
            "CREATE TRIGGER no_cursor BEFORE INSERT ON cursors BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        other.commit()
    with pytest.raises(sqlite3.IntegrityError):
        await journal.store(FN, 1, 3, b"raw", FIELDS)
    assert await journal.get(FN, 1) is None
    assert await journal.cursor(FN) is None

    with closing(sqlite3.connect(db_path)) as other:
        other.execute("DROP TRIGGER no_cursor")
        other.commit()
    assert await journal.store(FN, 1, 3, b"raw", FIELDS) is True
    assert await journal.cursor(FN) == 1


async def test_store_is_idempotent(journal: Journal, clock: FakeClock) -> None:
    await journal.store(FN, 5, 3, b"first", FIELDS)
    await journal.mark_synced(FN, 5, T0 + 1)
    clock.now += 10

    assert await journal.store(FN, 5, 1, b"second", {"other": 1}) is False
    entry = await journal.get(FN, 5)
    assert entry is not None
    assert (entry.raw, entry.doc_type, entry.fields, entry.state) == (
        b"first",
        3,
        FIELDS,
        "synced",
    )
    assert entry.journaled_at == T0


async def test_duplicate_store_still_advances_a_lagging_cursor(journal: Journal) -> None:
    await journal.store(FN, 5, 3, b"raw", FIELDS)
    await journal.set_cursor(FN, 2)

    assert await journal.store(FN, 5, 3, b"raw", FIELDS) is False
    assert await journal.cursor(FN) == 5


async def test_store_never_moves_the_cursor_back(journal: Journal) -> None:
    await journal.store(FN, 10, 3, b"raw", FIELDS)
    await journal.store(FN, 7, 3, b"raw", FIELDS)
    assert await journal.cursor(FN) == 10
    assert await journal.last_fd(FN) == 10


async def test_set_cursor_jumps_without_journaling(journal: Journal) -> None:
    await journal.set_cursor(FN, 100)
    assert await journal.cursor(FN) == 100
    assert await journal.last_fd(FN) is None
    assert await journal.counts() == JournalCounts(0, 0, 0, None)


async def test_fields_that_json_cannot_carry_fail_before_any_write(journal: Journal) -> None:
    with pytest.raises(TypeError):
        await journal.store(FN, 1, 3, b"raw", {"when": object()})
    assert await journal.cursor(FN) is None
    assert await journal.store(FN, 1, 3, b"raw", FIELDS) is True


async def test_claim_due_takes_lowest_fn_fd_first_up_to_limit(journal: Journal) -> None:
    for fn, fd in [(FN2, 1), (FN, 3), (FN, 1), (FN, 2), (FN2, 2)]:
        await journal.store(fn, fd, 3, b"raw", FIELDS)
    await journal.defer(FN, 1, T0 + 60, "unreachable")
    await journal.mark_synced(FN, 2, T0)

    claimed = await journal.claim_due(3, now=T0)
    assert [(e.fn, e.fd) for e in claimed] == [(FN, 3), (FN2, 1), (FN2, 2)]
    assert [(e.fn, e.fd) for e in await journal.claim_due(1, now=T0)] == [(FN, 3)]
    assert [e.fd for e in await journal.claim_due(10, now=T0, fn=FN2)] == [1, 2]
    # due exactly at next_attempt_at
    due_later = await journal.claim_due(10, now=T0 + 60)
    assert [(e.fn, e.fd) for e in due_later] == [(FN, 1), (FN, 3), (FN2, 1), (FN2, 2)]


async def test_mark_failed_counts_and_goes_dead_exactly_at_max_attempts(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)

    assert await journal.mark_failed(FN, 1, "HTTP 503", T0 + 1, max_attempts=3) is False
    assert await journal.mark_failed(FN, 1, "x" * 600, T0 + 2, max_attempts=3) is False
    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.next_attempt_at) == ("pending", 2, T0 + 2)
    assert entry.last_error == "x" * 500

    assert await journal.mark_failed(FN, 1, "HTTP 502", T0 + 3, max_attempts=3) is True
    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.last_error) == ("dead", 3, "HTTP 502")
    # a dead FD is no longer counted against nor claimed
    assert await journal.mark_failed(FN, 1, "again", T0 + 4, max_attempts=3) is False
    assert (await journal.get(FN, 1)) == entry
    assert await journal.claim_due(10, now=T0 + 100) == []


async def test_mark_synced_records_when_and_keeps_history(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    await journal.mark_failed(FN, 1, "HTTP 503", T0, max_attempts=20)
    await journal.mark_synced(FN, 1, T0 + 5)

    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.synced_at, entry.attempts, entry.last_error) == (
        "synced",
        T0 + 5,
        1,
        "HTTP 503",
    )
    assert await journal.claim_due(10, now=T0 + 100) == []


async def test_mark_dead_is_immediate_and_keeps_the_reason(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    await journal.mark_dead(FN, 1, "422: " + "bad total " * 100)

    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.attempts) == ("dead", 1)
    assert entry.last_error is not None
    assert entry.last_error.startswith("422: bad total")
    assert len(entry.last_error) == 500


async def test_defer_postpones_without_counting(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    await journal.defer(FN, 1, T0 + 30, "connection refused")

    entry = await journal.get(FN, 1)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.next_attempt_at, entry.last_error) == (
        "pending",
        0,
        T0 + 30,
        "connection refused",
    )
    assert await journal.claim_due(10, now=T0 + 29) == []


async def test_failure_marks_never_touch_a_synced_fd(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    await journal.mark_synced(FN, 1, T0)
    before = await journal.get(FN, 1)

    assert await journal.mark_failed(FN, 1, "late", T0, max_attempts=1) is False
    await journal.mark_dead(FN, 1, "late")
    await journal.defer(FN, 1, T0 + 9, "late")
    assert await journal.get(FN, 1) == before


async def test_retry_dead_returns_an_fd_to_pending_with_attempts_reset(
    journal: Journal, clock: FakeClock
) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    await journal.store(FN, 2, 3, b"raw", FIELDS)
    await journal.mark_failed(FN, 1, "HTTP 500", T0 + 100, max_attempts=1)
    clock.now = T0 + 50

    assert await journal.retry_dead(FN, 1) is True
    entry = await journal.get(FN, 1)
    assert entry is not None
    # the last error stays as history until the next attempt overwrites it
    assert (entry.state, entry.attempts, entry.next_attempt_at, entry.last_error) == (
        "pending",
        0,
        0.0,  # due at once
        "HTTP 500",
    )
    assert await journal.retry_dead(FN, 1) is False  # no longer dead
    assert await journal.retry_dead(FN, 2) is False  # pending, never dead
    assert await journal.retry_dead(FN, 99) is False  # not there


async def test_retry_all_dead_counts_what_it_revived(journal: Journal) -> None:
    for fd in range(1, 5):
        await journal.store(FN, fd, 3, b"raw", FIELDS)
    for fd in (1, 3):
        await journal.mark_dead(FN, fd, "422")
    await journal.mark_synced(FN, 4, T0)

    assert await journal.retry_all_dead() == 2
    assert await journal.counts() == JournalCounts(3, 1, 0, T0)
    assert await journal.retry_all_dead() == 0


async def test_prune_deletes_only_synced_fds_synced_before_the_limit(journal: Journal) -> None:
    for fd in range(1, 6):
        await journal.store(FN, fd, 3, b"raw", FIELDS)
    await journal.mark_synced(FN, 1, T0 + 10)
    await journal.mark_synced(FN, 2, T0 + 20)
    await journal.mark_synced(FN, 5, T0 + 30)
    await journal.mark_dead(FN, 3, "422")
    await journal.mark_failed(FN, 4, "HTTP 503", T0, max_attempts=20)

    assert await journal.prune(before=T0 + 30) == 2
    assert await journal.get(FN, 1) is None
    assert await journal.get(FN, 2) is None
    remaining = {fd: e.state for fd in range(1, 6) if (e := await journal.get(FN, fd))}
    assert remaining == {3: "dead", 4: "pending", 5: "synced"}
    assert await journal.cursor(FN) == 5
    assert await journal.prune(before=T0 + 10_000_000) == 1


async def test_counts_and_oldest_pending(journal: Journal, clock: FakeClock) -> None:
    for fd in range(1, 5):
        clock.now = T0 + fd
        await journal.store(FN, fd, 3, b"raw", FIELDS)
    await journal.mark_synced(FN, 1, T0)
    await journal.mark_dead(FN, 2, "422")

    assert await journal.counts() == JournalCounts(
        pending=2, synced=1, dead=1, oldest_pending_journaled_at=T0 + 3
    )


async def test_oldest_pending_is_the_oldest_first_pending_fd_of_any_fn(
    journal: Journal, clock: FakeClock
) -> None:
    for fn, fd, at in [(FN2, 1, 5), (FN, 1, 10), (FN, 2, 20), (FN2, 2, 30), (FN2, 3, 40)]:
        clock.now = T0 + at
        await journal.store(fn, fd, 3, b"raw", FIELDS)
    assert (await journal.counts()).oldest_pending_journaled_at == T0 + 5

    await journal.mark_synced(FN2, 1, T0 + 50)
    await journal.mark_dead(FN, 1, "422")
    assert (await journal.counts()).oldest_pending_journaled_at == T0 + 20

    await journal.retry_dead(FN, 1)  # an old FD pending again is the oldest again
    assert (await journal.counts()).oldest_pending_journaled_at == T0 + 10

    await journal.mark_synced_many([(FN, 1), (FN, 2), (FN2, 2), (FN2, 3)], T0 + 60)
    assert (await journal.counts()).oldest_pending_journaled_at is None


async def test_oldest_pending_seeks_rather_than_reading_every_pending_row(
    journal: Journal, db_path: Path
) -> None:
    """STATUS= asks every second: through an outage the pending range grows without bound, and
    the answer must not cost a look at each of its rows (SQLite's VM steps counted, no clock)."""
    pending = 3000
    await journal.store_many([NewFd(FN, fd, 3, b"raw", FIELDS) for fd in range(1, pending + 1)])
    await journal.store_many([NewFd(FN2, fd, 3, b"raw", FIELDS) for fd in range(1, 11)])

    def steps(sql: str) -> tuple[int, Any]:
        count = 0

        def tick() -> int:
            nonlocal count
            count += 1
            return 0

        with closing(sqlite3.connect(db_path)) as db:
            db.set_progress_handler(tick, 1)
            answer = db.execute(sql).fetchone()[0]
        return count, answer

    seek, answer = steps(store._OLDEST_PENDING)
    walk, expected = steps("SELECT MIN(journaled_at) FROM documents WHERE state = 'pending'")
    assert answer == expected == (await journal.counts()).oldest_pending_journaled_at
    assert walk > pending  # the old query: steps for every pending row
    assert seek < 1000 < pending  # a few steps per FN, however many FDs are pending


async def test_list_dead_pages_in_fn_fd_order(journal: Journal) -> None:
    for fn, fd in [(FN2, 1), (FN, 7), (FN, 2), (FN, 3)]:
        await journal.store(fn, fd, 3, b"raw", FIELDS)
        if fd != 3:
            await journal.mark_dead(fn, fd, f"rejected {fd}")

    first = await journal.list_dead(2)
    assert [(e.fn, e.fd, e.last_error) for e in first] == [
        (FN, 2, "rejected 2"),
        (FN, 7, "rejected 7"),
    ]
    rest = await journal.list_dead(2, after=(FN, 7))
    assert [(e.fn, e.fd) for e in rest] == [(FN2, 1)]
    assert await journal.list_dead(2, after=(FN2, 1)) == []


async def test_pending_fns_and_last_fd(journal: Journal) -> None:
    await journal.store(FN2, 4, 3, b"raw", FIELDS)
    await journal.store(FN, 9, 3, b"raw", FIELDS)
    await journal.store(FN, 8, 3, b"raw", FIELDS)
    assert await journal.pending_fns() == [FN, FN2]
    await journal.mark_synced(FN2, 4, T0)
    assert await journal.pending_fns() == [FN]
    assert await journal.last_fd(FN) == 9
    assert await journal.last_fd("0000000000000000") is None


async def test_iter_since_reads_in_journaling_order_across_batches(
    journal: Journal, clock: FakeClock
) -> None:
    # ties on journaled_at straddle batch boundaries: (fn, fd) breaks them
    stamps = {(FN2, 1): 1.0, (FN, 5): 2.0, (FN, 4): 2.0, (FN2, 2): 2.0, (FN, 1): 3.0, (FN, 0): 0.0}
    for (fn, fd), at in stamps.items():
        clock.now = T0 + at
        await journal.store(fn, fd, 3, fd.to_bytes(2, "little"), {"fd": fd})

    got = [(e.fn, e.fd, e.raw) async for e in journal.iter_since(T0 + 1.0, batch=2)]
    assert got == [
        (FN2, 1, b"\x01\x00"),
        (FN, 4, b"\x04\x00"),
        (FN, 5, b"\x05\x00"),
        (FN2, 2, b"\x02\x00"),
        (FN, 1, b"\x01\x00"),
    ]
    assert [e.fd async for e in journal.iter_since(T0 + 3.5)] == []


async def test_journal_runs_in_wal_mode_with_synchronous_full(journal: Journal) -> None:
    conn = journal._conn
    assert conn is not None
    pragmas = {}
    for name in ("journal_mode", "synchronous", "busy_timeout"):
        async with conn.execute(f"PRAGMA {name}") as cur:
            row = await cur.fetchone()
        assert row is not None
        pragmas[name] = row[0]
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 5000}


async def test_full_database_raises_journal_full_and_writes_nothing(journal: Journal) -> None:
    # Honest simulation of a full disk: SQLite's per-connection page limit makes the pager
    # fail with SQLITE_FULL ("database or disk is full"), the very error a full disk gives.
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    conn = journal._conn
    assert conn is not None
    async with conn.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    await conn.execute(f"PRAGMA max_page_count = {row[0]}")

    with pytest.raises(JournalFullError, match="full"):
        await journal.store(FN, 2, 3, bytes(64 * 1024), FIELDS)
    assert await journal.get(FN, 2) is None
    assert await journal.cursor(FN) == 1
    assert journal.write_failure is not None
    assert journal.write_failure.kind == "full"
    assert journal.unavailable() is None  # reads go on: only writes wait for space

    await conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
    assert await journal.store(FN, 2, 3, bytes(64 * 1024), FIELDS) is True
    assert await journal.cursor(FN) == 2
    assert journal.write_failure is None


async def test_a_cancelled_store_leaves_no_transaction_open(journal: Journal) -> None:
    # cancel at every await point of store(): each must leave all-or-nothing and a usable journal
    for yields in range(8):
        fn = f"{yields:016d}"
        task = asyncio.create_task(journal.store(fn, 1, 3, b"raw", FIELDS))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        stored = await journal.get(fn, 1) is not None
        assert stored == (await journal.cursor(fn) == 1)
        assert await journal.store(fn, 2, 3, b"raw", FIELDS) is True
        assert await journal.cursor(fn) == 2


async def test_a_closed_journal_refuses_work(db_path: Path) -> None:
    journal = await Journal.open(db_path)
    await journal.close()
    await journal.close()  # twice is harmless
    with pytest.raises(JournalError, match="closed"):
        await journal.store(FN, 1, 3, b"raw", FIELDS)


async def test_data_survives_reopening(db_path: Path) -> None:
    async with await Journal.open(db_path) as journal:
        await journal.store(FN, 1, 3, b"raw", FIELDS)
    async with await Journal.open(db_path) as journal:
        assert journal.recovered_from is None
        entry = await journal.get(FN, 1)
        assert entry is not None
        assert entry.fields == FIELDS
        assert await journal.cursor(FN) == 1


async def test_an_fd_journaled_before_the_wall_clock_steps_back_is_still_due(
    journal: Journal, clock: FakeClock
) -> None:
    await journal.store(FN, 1, 3, b"raw", FIELDS)
    clock.now = T0 - 3600  # NTP corrects a clock that ran an hour ahead
    assert [e.fd for e in await journal.claim_due(10, clock.now)] == [1]


async def test_a_journal_that_replaced_a_damaged_one_asks_for_the_archive_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kktd.db"
    path.write_bytes(b"this is not a database" * 100)
    first = await Journal.open(path)
    assert first.recovered_from is not None
    assert await first.reread_pending()
    await first.close()
    again = await Journal.open(path)  # a restart before anything was read
    assert again.recovered_from is None
    assert await again.reread_pending()
    await again.close()
    healthy = await Journal.open(tmp_path / "other.db")
    assert not await healthy.reread_pending()
    await healthy.close()


async def test_ofd_exchanges_are_kept_for_audit_and_pruned_with_retention(
    journal: Journal,
) -> None:
    record = ExchangeRecord(
        started_at=T0,
        fn=FN,
        message=b"\x2a\x08\x41\x0a",
        answer=b"ok",
        outcome="relayed",
        error=None,
        read_seconds=0.1,
        ofd_seconds=0.2,
        write_seconds=0.3,
    )
    await journal.record_ofd_exchange(record)
    rows = await journal.ofd_exchanges()
    assert rows == [(T0, FN, b"\x2a\x08\x41\x0a", b"ok", "relayed", None, 0.1, 0.2, 0.3)]
    await journal.prune(T0 + 1)
    assert await journal.ofd_exchanges() == []


# --- group commit: several FDs read back to back, one transaction -------------------------------


def new_fds(fn: str, fds: range) -> list[NewFd]:
    return [NewFd(fn, fd, 3, bytes([fd % 256]) * 10, {"fd": fd}) for fd in fds]


async def test_store_many_journals_in_order_with_the_cursor_at_the_last(
    journal: Journal,
) -> None:
    assert await journal.store_many(new_fds(FN, range(1, 6))) == [True] * 5
    assert await journal.cursor(FN) == 5
    for fd in range(1, 6):
        entry = await journal.get(FN, fd)
        assert entry is not None
        assert (entry.raw, entry.fields, entry.state) == (bytes([fd]) * 10, {"fd": fd}, "pending")
    assert [e.fd for e in await journal.claim_due(10, None)] == [1, 2, 3, 4, 5]


async def test_store_many_flags_each_fd_already_there_and_keeps_the_first_copy(
    journal: Journal,
) -> None:
    await journal.store(FN, 2, 3, b"first", FIELDS)
    assert await journal.store_many(new_fds(FN, range(1, 4))) == [True, False, True]
    entry = await journal.get(FN, 2)
    assert entry is not None
    assert entry.raw == b"first"
    assert await journal.cursor(FN) == 3


async def test_store_many_advances_each_fns_cursor_and_never_moves_one_back(
    journal: Journal,
) -> None:
    await journal.set_cursor(FN2, 50)
    assert (
        await journal.store_many([*new_fds(FN, range(7, 9)), *new_fds(FN2, range(3, 5))])
        == [True] * 4
    )
    assert await journal.cursor(FN) == 8
    assert await journal.cursor(FN2) == 50  # a lagging group does not pull the cursor back


async def test_store_many_refuses_fds_out_of_order_before_writing(journal: Journal) -> None:
    with pytest.raises(ValueError, match="out of order"):
        await journal.store_many([*new_fds(FN, range(3, 4)), *new_fds(FN, range(2, 3))])
    with pytest.raises(ValueError, match="out of order"):
        await journal.store_many([*new_fds(FN, range(3, 4)), *new_fds(FN, range(3, 4))])
    assert await journal.last_fd(FN) is None
    assert await journal.cursor(FN) is None
    assert await journal.store_many([]) == []


async def test_store_many_is_all_or_nothing(journal: Journal, db_path: Path) -> None:
    # the fourth FD's insert fails inside the transaction: the three before it and the cursor
    # must not stay behind
    with closing(sqlite3.connect(db_path)) as other:
        other.execute(
            "CREATE TRIGGER no_fd_4 BEFORE INSERT ON documents WHEN NEW.fd = 4"
            " BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        other.commit()
    with pytest.raises(sqlite3.IntegrityError):
        await journal.store_many(new_fds(FN, range(1, 6)))
    assert await journal.last_fd(FN) is None
    assert await journal.cursor(FN) is None
    # a value JSON cannot carry fails before any write, whichever FD carries it
    bad = [*new_fds(FN, range(1, 3)), NewFd(FN, 3, 3, b"raw", {"when": object()})]
    with pytest.raises(TypeError):
        await journal.store_many(bad)
    with closing(sqlite3.connect(db_path)) as other:
        other.execute("DROP TRIGGER no_fd_4")
        other.commit()
    assert await journal.store_many(new_fds(FN, range(1, 6))) == [True] * 5
    assert await journal.cursor(FN) == 5


async def test_the_stored_body_is_the_body_of_the_fields_the_journal_gives_back(
    journal: Journal,
) -> None:
    """The body is built from the fields as given (no JSON round trip at journaling): the same
    bytes as from the fields read back, for every kind of FD the emulator issues and for the
    fields of an FD that did not decode."""
    documents = DocumentGenerator(requisite_rate=0.3).archive(120)
    fds = [
        NewFd(FN, doc.fd, doc.doc_type, doc.raw, decode_document(doc.doc_type, doc.raw).to_fields())
        for doc in documents
    ]
    undecoded = {"doc_type": 99, "doc_kind": "unknown", "decode_error": "tag 1040: u32 of 3"}
    fds.append(NewFd(FN, len(fds) + 1, 99, b"\x10\x04\x03\x00abc", undecoded))
    assert all(await journal.store_many(fds))
    claimed = await journal.claim_due(len(fds), None, fn=FN)
    assert len(claimed) == len(fds)
    for doc, entry in zip(fds, claimed, strict=True):
        stored = await journal.get(FN, doc.fd)
        assert stored is not None
        assert stored.fields == doc.fields
        assert entry.body == encode_body(FN, doc.fd, doc.raw, stored.fields)


async def test_the_synced_count_is_kept_through_marks_prunes_and_a_reopen(
    journal: Journal, db_path: Path
) -> None:
    for fd in range(1, 7):
        await journal.store(FN, fd, 1, b"\x01", {})
    assert (await journal.counts()).synced == 0
    await journal.mark_synced_many([(FN, 1), (FN, 2), (FN, 3)], T0)
    await journal.mark_synced_many([(FN, 3), (FN, 4)], T0 + 10)  # FD 3 twice: counted once
    counts = await journal.counts()
    assert (counts.synced, counts.pending) == (4, 2)
    assert await journal.prune(T0 + 5) == 3  # FDs 1-3: FD 3 kept its first synced_at
    assert (await journal.counts()).synced == 1
    await journal.close()
    # what the count says is what the rows say, also for a journal opened afresh
    reopened = await Journal.open(db_path)
    try:
        assert (await reopened.counts()).synced == 1
    finally:
        await reopened.close()


async def test_marking_many_fds_of_several_fns_marks_each_once_in_one_transaction(
    journal: Journal, db_path: Path
) -> None:
    """One FN's FDs go in one statement; more FNs, or more FDs than one statement takes, in one
    transaction of several: every FD marked, none twice, nothing else touched."""
    await journal.store_many([NewFd(FN, fd, 1, b"\x01", {}) for fd in range(1, 1202)])
    await journal.store_many([NewFd(FN2, fd, 1, b"\x01", {}) for fd in range(1, 4)])
    keys = [(FN, fd) for fd in range(1, 1201)] + [(FN2, 2), (FN, 7), (FN2, 3)]
    await journal.mark_synced_many(keys, T0)
    counts = await journal.counts()
    assert (counts.synced, counts.pending) == (1202, 2)  # FN's FD 1201 and FN2's FD 1
    assert [(e.fn, e.fd) for e in await journal.claim_due(10, None)] == [(FN, 1201), (FN2, 1)]
    with closing(sqlite3.connect(db_path)) as conn:
        left = conn.execute("SELECT COUNT(*) FROM documents WHERE body IS NOT NULL").fetchone()
    assert left == (2,)
    await journal.mark_synced_many([(FN, 1201)], T0)
    assert (await journal.counts()).synced == 1203


async def test_a_mark_cancelled_while_sqlite_commits_it_leaves_the_synced_count_true(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's thread runs a COMMIT whatever happens to its caller: a mark cancelled then has
    committed all the same, and the synced count must say what the rows say."""
    await journal.store_many([NewFd(FN, fd, 1, b"\x01", {}) for fd in range(1, 4)])
    assert (await journal.counts()).synced == 0  # the count is kept from here on
    conn = journal._conn
    assert conn is not None
    execute = conn.execute

    def cancelled_at_commit(sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            asyncio.current_task().cancel()  # type: ignore[union-attr]
        return execute(sql, *args)

    monkeypatch.setattr(conn, "execute", cancelled_at_commit)
    with pytest.raises(asyncio.CancelledError):
        await journal.mark_synced_many([(FN, 1), (FN, 2), (FN, 3)], T0)
    monkeypatch.undo()
    pending = len(await journal.claim_due(10, None))  # what the rows say
    counts = await journal.counts()
    assert pending == 0  # the COMMIT went through
    assert (counts.synced, counts.pending) == (3, 0)


async def test_a_prune_cancelled_while_sqlite_commits_it_leaves_the_synced_count_true(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a prune batch: its DELETE committed, the count must drop with it."""
    await journal.store_many([NewFd(FN, fd, 1, b"\x01", {}) for fd in range(1, 4)])
    await journal.mark_synced_many([(FN, 1), (FN, 2), (FN, 3)], T0)
    assert (await journal.counts()).synced == 3  # the count is kept from here on
    conn = journal._conn
    assert conn is not None
    execute = conn.execute
    deleting = False

    def cancelled_at_commit(sql: str, *args: Any) -> Any:
        nonlocal deleting
        deleting = deleting or sql.startswith("DELETE FROM documents")
        if sql == "COMMIT" and deleting:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
        return execute(sql, *args)

    monkeypatch.setattr(conn, "execute", cancelled_at_commit)
    with pytest.raises(asyncio.CancelledError):
        await journal.prune(before=T0 + 1)
    monkeypatch.undo()
    assert await journal.get(FN, 1) is None  # the COMMIT went through
    assert (await journal.counts()).synced == 0


async def test_every_write_the_journal_makes_runs_inside_begin_immediate(journal: Journal) -> None:
    """SPEC section 2: write transactions are `BEGIN IMMEDIATE`. A write in SQLite's autocommit,
    or in a deferred transaction, can meet SQLITE_BUSY_SNAPSHOT, which no busy timeout retries;
    every statement that changes a row must come between BEGIN IMMEDIATE and its COMMIT."""
    statements: list[str] = []
    conn = journal._conn  # SQLite's own trace of what the journal sends
    assert conn is not None
    await conn.set_trace_callback(statements.append)
    await journal.store_many([NewFd(FN, fd, 1, b"\x01", {}) for fd in range(1, 7)])
    await journal.store(FN2, 1, 1, b"\x01", {})
    await journal.set_cursor(FN2, 5)
    await journal.mark_synced_many([(FN, 1), (FN, 2)], T0)  # one FN: one statement
    await journal.mark_synced_many([(FN, 3), (FN2, 1)], T0)  # two FNs: two statements
    await journal.mark_failed(FN, 4, "502", T0 + 30, max_attempts=20)
    await journal.defer(FN, 4, T0 + 60, "503")
    await journal.mark_dead(FN, 5, "422")
    assert await journal.retry_dead(FN, 5)
    await journal.mark_dead(FN, 6, "422")
    assert await journal.retry_all_dead() == 1
    assert await journal.prune(T0 + 1) == 4
    statements = list(statements)  # what the calls above sent, not the fixture's close
    writes = [
        s for s in statements if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")
    ]
    assert len(writes) >= 12  # each call above wrote something
    open_transaction = False
    for statement in statements:
        keyword = statement.split(None, 1)[0].upper()
        if statement.upper().startswith("BEGIN"):
            assert statement == "BEGIN IMMEDIATE", statement
            open_transaction = True
        elif keyword in ("COMMIT", "ROLLBACK"):
            open_transaction = False
        elif keyword in ("INSERT", "UPDATE", "DELETE"):
            assert open_transaction, f"outside BEGIN IMMEDIATE: {statement[:80]}"
