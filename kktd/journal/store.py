"""The journal: every FD read from the FN, with its delivery state (SPEC section 2).

The statements of the journal; the connection, its failures and its recovery live in
`kktd.journal.file`. Every write is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import structlog

from kktd.journal.file import JournalFile
from kktd.journal.recovery import RECOVERY_KEY, REREAD_KEY, RecoveryRecord
from kktd.journal.rows import (
    DUE_NOW,
    DocumentRow,
    JournalCounts,
    JournalEntry,
    NewFd,
    OfdExchange,
    Outgoing,
    insert_params,
)
from kktd.sync.body import encode_body

log = structlog.get_logger(__name__)

ERROR_LIMIT = 500  # characters of an upstream error kept (SPEC section 4)

# the column order of `JournalEntry.from_row`
_SELECT = (
    "SELECT fn, fd, doc_type, raw, fields, journaled_at, state, attempts, last_error,"
    " next_attempt_at, synced_at FROM documents "
)
# A claim in one row: the bodies joined by newlines (JSON text holds none: the encoder escapes
# control characters and indents nothing), the keys beside them in the same pass. SQLite runs an
# aggregate in one step, and the connection's thread takes the GIL back after each step: a claim
# of one row is one hand-over between that thread and the event loop, not one per FD (issue 14).
_CLAIM_JOINED = (
    "SELECT count(*), count(body), group_concat(fn), group_concat(fd),"
    " CAST(group_concat(body, char(10)) AS BLOB) FROM (SELECT fn, fd, body FROM documents {where}"
    " ORDER BY fn, fd LIMIT ?)"
)
# rows journaled before the body was stored (schema v4) have none: theirs is built at the claim
_CLAIM_ROWS = "SELECT fn, fd, raw, fields, body FROM documents {where} ORDER BY fn, fd LIMIT ?"
_MARK_SYNCED = (
    "UPDATE documents SET state = 'synced', synced_at = ?, body = NULL"
    " WHERE fn = ? AND fd IN ({marks}) AND state != 'synced'"
)
_MARK_CHUNK = 500  # FDs per statement: far below SQLite's limit of bound parameters
# Several rows in one statement: one SQLite step for a group, where executemany steps once per
# row and the connection's thread takes the GIL back from the reading event loop after each.
_INSERT = (
    "INSERT INTO documents (fn, fd, doc_type, raw, fields, journaled_at, state, next_attempt_at,"
    " body) VALUES {rows} ON CONFLICT (fn, fd) DO NOTHING"
)
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
_INSERT_CHUNK = 200  # rows per statement: 1,600 parameters, far below SQLite's limit
_EXISTING = "SELECT fd FROM documents WHERE fn = ? AND fd BETWEEN ? AND ?"
_ADVANCE_CURSOR = (
    "INSERT INTO cursors (fn, last_fd, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (fn) DO UPDATE SET last_fd = excluded.last_fd, updated_at = excluded.updated_at"
    " WHERE excluded.last_fd > cursors.last_fd"
)
_SET_CURSOR = (
    "INSERT INTO cursors (fn, last_fd, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (fn) DO UPDATE SET last_fd = excluded.last_fd, updated_at = excluded.updated_at"
)
_FAIL = (
    "UPDATE documents SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
    " state = CASE WHEN attempts + 1 >= ? THEN 'dead' ELSE 'pending' END"
    " WHERE fn = ? AND fd = ? AND state = 'pending'"
)

# The oldest pending FD: the lowest pending FD of each FN (the poller journals an FN's FDs in FD
# order, each group's time after the one before), found by a seek per FN in the state index, the
# FNs by a skip over it. MIN(journaled_at) over the pending range looked up every pending row:
# 78 ms at 100,000 pending, asked every second by STATUS= all through an upstream outage.
_OLDEST_PENDING = (
    "WITH RECURSIVE fns(fn) AS ("
    " SELECT (SELECT MIN(fn) FROM documents WHERE state = 'pending')"
    " UNION ALL SELECT (SELECT MIN(fn) FROM documents WHERE state = 'pending' AND fn > fns.fn)"
    " FROM fns WHERE fns.fn IS NOT NULL)"
    " SELECT MIN((SELECT journaled_at FROM documents WHERE state = 'pending' AND fn = fns.fn"
    " ORDER BY fd LIMIT 1)) FROM fns WHERE fns.fn IS NOT NULL"
)

# rowid batches: SQLite (as Debian builds it) has no DELETE ... LIMIT
_PRUNE = (
    "DELETE FROM ofd_exchanges WHERE rowid IN"
    " (SELECT rowid FROM ofd_exchanges WHERE started_at < ? LIMIT ?)",
    "DELETE FROM documents WHERE rowid IN"
    " (SELECT rowid FROM documents WHERE state = 'synced' AND synced_at < ? LIMIT ?)",
)
PRUNE_BATCH = 1000


def _nothing() -> None:
    """No progress to report (a prune outside the retention task)."""


_RETRY = (
    "UPDATE documents SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE state = 'dead'"
)


async def _already_there(
    conn: aiosqlite.Connection, rows: Sequence[DocumentRow]
) -> set[tuple[str, int]]:
    """Which of `rows` (ascending FDs within each FN) are journaled already: one query per FN."""
    spans: dict[str, tuple[int, int]] = {}
    for fn, fd, *_ in rows:
        low, _high = spans.get(fn, (fd, fd))
        spans[fn] = (low, fd)
    there: set[tuple[str, int]] = set()
    for fn, (low, high) in spans.items():
        found = await conn.execute_fetchall(_EXISTING, (fn, low, high))
        there.update((fn, int(row[0])) for row in found)
    return there


class Journal(JournalFile):
    """The SQLite journal. Open with `Journal.open` (or build, `try_open` and `keep_open` it,
    as the daemon does, to start without it); one per process."""

    def __init__(self, path: Path, *, wall: Callable[[], float] = time.time) -> None:
        super().__init__(path, wall=wall)
        # The synced count, kept as FDs are marked and pruned: counting it walks the whole
        # state index (about 8 ms at 100,000 FDs), and STATUS= asks every second. None: count
        # it at the next ask (after each open: a replaced journal starts again).
        self._synced: int | None = None
        self.on_open.append(self._forget_synced)

    def _forget_synced(self) -> None:
        self._synced = None

    async def _moving_synced(self, write: Awaitable[int], sign: int) -> int:
        """Await a write that changes the synced count by `sign` per row it changes; the count
        kept follows. A write that fails or is cancelled may have committed all the same
        (SQLite's thread runs a COMMIT whatever happens to its caller): the count is then taken
        afresh the next time it is asked for."""
        try:
            changed = await write
        except BaseException:
            self._synced = None
            raise
        if self._synced is not None:
            self._synced += sign * changed
        return changed

    @classmethod
    async def open(cls, path: Path, *, wall: Callable[[], float] = time.time) -> Journal:
        """Open (creating and migrating as needed) the journal at `path`.

        A damaged file is moved aside and a fresh journal started (`recovered_from` says where
        the old one went): the FN still holds every document, so the poller refills it.
        Raises a classified `JournalError` when the file cannot be opened.
        """
        journal = cls(path, wall=wall)
        await journal.open_now()
        return journal

    async def reread_pending(self) -> bool:
        """True when this journal replaced a damaged one: the FN archive is read from FD 1."""
        rows = await self._rows("SELECT 1 FROM meta WHERE key = ?", (REREAD_KEY,))
        return bool(rows)

    async def acknowledge_recovery(self) -> RecoveryRecord | None:
        """The operator has seen the last recovery: status stops showing it. None if there was
        none to acknowledge (the record itself stays in the file, with the time of the ack)."""
        record = self.recovery
        if record is None or record.acknowledged_at is not None:
            return None
        acknowledged = record.acknowledged(self._wall())
        await self._execute(
            "UPDATE meta SET value = ? WHERE key = ?", (acknowledged.to_json(), RECOVERY_KEY)
        )
        self.recovery = acknowledged
        log.info("journal.recovery_acknowledged", at=record.at, moved_to=record.moved_to)
        return acknowledged

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- journaling (the poller) --

    async def store(
        self, fn: str, fd: int, doc_type: int, raw: bytes, fields: Mapping[str, Any]
    ) -> bool:
        """Journal an FD as pending and advance the FN's cursor, in one transaction.

        True when inserted; False when (fn, fd) was already there, which changes nothing but a
        lagging cursor. Raises `JournalFullError` when the disk is full (nothing is written).
        """
        (inserted,) = await self.store_many([NewFd(fn, fd, doc_type, raw, fields)])
        return inserted

    async def store_many(self, fds: Sequence[NewFd]) -> list[bool]:
        """Journal FDs read back to back, in order, and the cursor with them: one transaction.

        Each FD as `store` would (a flag per FD: inserted, or already there), and the cursor of
        each FN advanced to its last FD given, all in one commit: every FD counts as journaled
        once this returns, none of them if it raises. Within an FN the FDs must come in
        ascending order (the order they were read), so the cursor never passes an FD that is
        not in the same commit.
        """
        if not fds:
            return []
        last: dict[str, int] = {}
        for doc in fds:
            if doc.fd <= last.get(doc.fn, -1):
                previous = last[doc.fn]
                raise ValueError(f"FD {doc.fd} of FN {doc.fn} after FD {previous}: out of order")
            last[doc.fn] = doc.fd
        now = self._wall()
        # serialised first, so a value JSON cannot carry fails before any write
        rows = [insert_params(doc, now) for doc in fds]

        async def body(conn: aiosqlite.Connection) -> list[bool]:
            # A few calls to SQLite's thread per group, not two per FD: each is a hop that
            # wakes the event loop, taken while the poller reads the next FDs.
            there = await _already_there(conn, rows)
            inserted = [(row[0], row[1]) not in there for row in rows]
            new = [row for row in rows if (row[0], row[1]) not in there]
            for start in range(0, len(new), _INSERT_CHUNK):
                chunk = new[start : start + _INSERT_CHUNK]
                sql = _INSERT.format(rows=", ".join([_INSERT_ROW] * len(chunk)))
                await conn.execute(sql, [value for row in chunk for value in row])
            await conn.executemany(_ADVANCE_CURSOR, [(fn, fd, now) for fn, fd in last.items()])
            return inserted

        inserted = await self._write(body)
        logger = log.bind()  # one logger for the group: the module proxy builds one per call
        for doc, new in zip(fds, inserted, strict=True):
            if new:
                logger.debug("journal.stored", fn=doc.fn, fd=doc.fd, doc_type=doc.doc_type)
        return inserted

    async def cursor(self, fn: str) -> int | None:
        """The last FD read from this FN (journaled or skipped by `set_cursor`), if any."""
        rows = await self._rows("SELECT last_fd FROM cursors WHERE fn = ?", (fn,))
        return int(rows[0][0]) if rows else None

    async def known_fns(self) -> list[str]:
        """Every FN this journal has a cursor for: a new FN among them was a replaced FN."""
        rows = await self._rows("SELECT fn FROM cursors ORDER BY fn")
        return [str(row[0]) for row in rows]

    async def set_cursor(self, fn: str, fd: int) -> None:
        """Put the cursor at `fd` without journaling anything (``kkt.start_fd``)."""
        await self._execute(_SET_CURSOR, (fn, fd, self._wall()))

    async def last_fd(self, fn: str) -> int | None:
        """The highest FD of this FN actually in the journal. (Only the tests ask: the poller
        goes by the cursor, which moves in the same transaction as the FDs.)"""
        rows = await self._rows("SELECT MAX(fd) FROM documents WHERE fn = ?", (fn,))
        return None if rows[0][0] is None else int(rows[0][0])

    # -- delivery (the sync engine) --

    async def claim_due(
        self,
        limit: int,
        now: float | None,
        fn: str | None = None,
        *,
        horizon: float = math.inf,
        after: int | None = None,
    ) -> list[Outgoing]:
        """Up to `limit` pending FDs due at `now` (due or not when `now` is None), lowest first,
        each as its delivery needs it: the key and the stored request body.

        An FD due later than `now + horizon`, further ahead than any schedule the caller makes,
        is due now: the wall clock has been stepped back since its attempt was scheduled.
        `after` (with `fn`) claims only FDs above it: the next batch, claimed while the one
        before is still being sent. No row marks: one process owns the journal and the engine
        claims for one FN at a time, each batch above the last.
        """
        where = "WHERE state = 'pending'"
        params: tuple[Any, ...] = ()
        if now is not None:
            where += " AND (next_attempt_at <= ? OR next_attempt_at > ?)"
            params += (now, now + horizon)
        if fn is not None:
            where += " AND fn = ?"
            params += (fn,)
            if after is not None:
                where += " AND fd > ?"
                params += (after,)
        [(count, with_body, fns, fds, bodies)] = await self._rows(
            _CLAIM_JOINED.format(where=where), (*params, limit)
        )
        if count == 0:
            return []
        if with_body == count:
            # each list must come out `count` long: an FN as the KKT sent it might hold a comma
            fn_list, fd_list, body_list = fns.split(","), fds.split(","), bodies.split(b"\n")
            if len(fn_list) == len(fd_list) == len(body_list) == count:
                claimed = [
                    Outgoing(k, int(n), body)
                    for k, n, body in zip(fn_list, fd_list, body_list, strict=True)
                ]
                claimed.sort(key=lambda out: (out.fn, out.fd))  # an aggregate's order is its own
                return claimed
        rows = await self._rows(_CLAIM_ROWS.format(where=where), (*params, limit))
        return [
            Outgoing(k, n, bytes(body) if body is not None else _built(k, n, raw, fields))
            for k, n, raw, fields, body in rows
        ]

    async def pending_fns(self) -> list[str]:
        rows = await self._rows("SELECT DISTINCT fn FROM documents WHERE state = 'pending'")
        return sorted(str(row[0]) for row in rows)

    async def mark_synced(self, fn: str, fd: int, now: float) -> None:
        """The upstream has the FD. Attempts and last error stay as history. (For the tests: the
        engine records a round's accepted FDs with `mark_synced_many`.)"""
        await self.mark_synced_many([(fn, fd)], now)

    async def mark_synced_many(self, keys: Sequence[tuple[str, int]], now: float) -> None:
        """Several FDs the upstream has, in one transaction (a batch's worth: one commit).

        The stored request body goes: a synced FD is never sent again. One statement per FN
        (`fd IN (...)`, one SQLite step for the batch, where executemany stepped once per FD).
        """
        statements = [
            (_MARK_SYNCED.format(marks=", ".join("?" * len(fds))), (now, fn, *fds))
            for fn, fds in _by_fn(keys)
        ]
        if not statements:
            return

        async def body(conn: aiosqlite.Connection) -> int:
            changed = 0
            for sql, params in statements:
                changed += (await conn.execute(sql, params)).rowcount
            return changed

        await self._moving_synced(self._write(body), +1)

    async def mark_failed(
        self, fn: str, fd: int, error: str, next_attempt_at: float, max_attempts: int
    ) -> bool:
        """Count a failed delivery; the FD goes dead when attempts reach `max_attempts`.

        Only a pending FD is touched. Returns True when this attempt made it dead.
        """

        async def body(conn: aiosqlite.Connection) -> bool:
            args = (error[:ERROR_LIMIT], next_attempt_at, max_attempts, fn, fd)
            async with conn.execute(_FAIL, args) as cur:
                if cur.rowcount != 1:
                    return False
            async with conn.execute(
                "SELECT state FROM documents WHERE fn = ? AND fd = ?", (fn, fd)
            ) as cur:
                row = await cur.fetchone()
            return row is not None and row[0] == "dead"

        return await self._write(body)

    async def mark_dead(self, fn: str, fd: int, reason: str) -> None:
        """A permanent rejection: dead at once. The rejected delivery counts as an attempt."""
        await self._execute(
            "UPDATE documents SET state = 'dead', attempts = attempts + 1, last_error = ?"
            " WHERE fn = ? AND fd = ? AND state = 'pending'",
            (reason[:ERROR_LIMIT], fn, fd),
        )

    async def defer(self, fn: str, fd: int, next_attempt_at: float, error: str) -> None:
        """Postpone a pending FD without counting an attempt (the upstream was never reached)."""
        await self._execute(
            "UPDATE documents SET next_attempt_at = ?, last_error = ?"
            " WHERE fn = ? AND fd = ? AND state = 'pending'",
            (next_attempt_at, error[:ERROR_LIMIT], fn, fd),
        )

    # -- the operator (API, CLI, metrics) --

    async def counts(self) -> JournalCounts:
        # pending and dead are short ranges of the state index; synced is the long one
        by_state = dict(
            await self._rows(
                "SELECT state, COUNT(*) FROM documents"
                " WHERE state IN ('pending', 'dead') GROUP BY state"
            )
        )
        if self._synced is None:
            rows = await self._rows("SELECT COUNT(*) FROM documents WHERE state = 'synced'")
            self._synced = int(rows[0][0])
        oldest = await self._rows(_OLDEST_PENDING)
        return JournalCounts(
            pending=by_state.get("pending", 0),
            synced=self._synced,
            dead=by_state.get("dead", 0),
            oldest_pending_journaled_at=oldest[0][0],
        )

    async def get(self, fn: str, fd: int) -> JournalEntry | None:
        rows = await self._rows(_SELECT + "WHERE fn = ? AND fd = ?", (fn, fd))
        return JournalEntry.from_row(rows[0]) if rows else None

    async def list_dead(
        self, limit: int, after: tuple[str, int] | None = None
    ) -> list[JournalEntry]:
        """Dead FDs in (fn, fd) order, the page starting after `after`."""
        fn, fd = after if after is not None else ("", -1)
        rows = await self._rows(
            _SELECT + "WHERE state = 'dead' AND (fn, fd) > (?, ?) ORDER BY fn, fd LIMIT ?",
            (fn, fd, limit),
        )
        return [JournalEntry.from_row(row) for row in rows]

    async def retry_dead(self, fn: str, fd: int) -> bool:
        """Dead -> pending, attempts 0, due now. The last error stays until the next attempt.

        Returns False when the FD is not dead (or not there).
        """
        return await self._execute(_RETRY + " AND fn = ? AND fd = ?", (DUE_NOW, fn, fd)) == 1

    async def retry_all_dead(self) -> int:
        return await self._execute(_RETRY, (DUE_NOW,))

    async def prune(
        self, before: float, *, batch: int = PRUNE_BATCH, progress: Callable[[], None] = _nothing
    ) -> int:
        """Delete synced FDs synced before `before` (and OFD audit records started before it).
        Pending, dead and cursors are never touched.

        `batch` rows per transaction, the journal's lock released between them: a first prune of
        a large journal (retention_days just lowered) must not hold up journaling and delivery.
        `progress` is called after each batch (the retention task's beat).
        """
        total = 0
        for sql in _PRUNE:
            while True:
                if sql is _PRUNE[1]:  # synced FDs
                    deleted = await self._moving_synced(self._execute(sql, (before, batch)), -1)
                    total += deleted
                else:
                    deleted = await self._execute(sql, (before, batch))
                progress()
                if deleted < batch:
                    break
                await asyncio.sleep(0)  # let a task queued on the lock in before the next batch
        return total

    async def record_ofd_exchange(self, record: OfdExchange) -> None:
        """Keep one OFD relay exchange for audit (SPEC section 9): bytes, timings, outcome."""
        await self._execute(
            "INSERT INTO ofd_exchanges (started_at, fn, message, answer, outcome, error,"
            " read_seconds, ofd_seconds, write_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.started_at,
                record.fn,
                record.message,
                record.answer,
                record.outcome,
                record.error,
                record.read_seconds,
                record.ofd_seconds,
                record.write_seconds,
            ),
        )

    async def ofd_exchanges(self, limit: int = 100) -> list[tuple[Any, ...]]:
        """The newest OFD exchanges, newest first, as stored rows. (Only the tests read them
        back; the rows are there for an operator's sqlite3 session.)"""
        return await self._rows(
            "SELECT started_at, fn, message, answer, outcome, error, read_seconds, ofd_seconds,"
            " write_seconds FROM ofd_exchanges ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    async def iter_since(self, since: float, batch: int = 500) -> AsyncIterator[JournalEntry]:
        """FDs journaled at or after `since`, by (journaled_at, fn, fd), read `batch` at a time."""
        order = " ORDER BY journaled_at, fn, fd LIMIT ?"
        rows = await self._rows(_SELECT + "WHERE journaled_at >= ?" + order, (since, batch))
        while rows:
            for row in rows:
                yield JournalEntry.from_row(row)
            if len(rows) < batch:
                return
            fn, fd, at = rows[-1][0], rows[-1][1], rows[-1][5]
            rows = await self._rows(
                _SELECT + "WHERE (journaled_at, fn, fd) > (?, ?, ?)" + order, (at, fn, fd, batch)
            )


def _by_fn(keys: Sequence[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    """The keys grouped by FN, in chunks of at most `_MARK_CHUNK` FDs (each FD once)."""
    fds: dict[str, list[int]] = {}
    for fn, fd in dict.fromkeys(keys):
        fds.setdefault(fn, []).append(fd)
    return [
        (fn, numbers[start : start + _MARK_CHUNK])
        for fn, numbers in fds.items()
        for start in range(0, len(numbers), _MARK_CHUNK)
    ]


def _built(fn: str, fd: int, raw: bytes, fields: str) -> bytes:
    """The request body of a row journaled before bodies were stored."""
    return encode_body(fn, fd, bytes(raw), json.loads(fields))
