"""The journal file: opening it, keeping it open, replacing it when it is damaged.

`JournalFile` owns the one aiosqlite connection. Every statement goes through `_rows` or
`_write`, and whatever SQLite raises leaves as a classified `JournalError`. Damage or an I/O
error at run time closes the connection and makes the journal *unavailable*: every call then
fails at once with `JournalUnavailableError` (callers pause; nothing loops on a broken file)
while `keep_open` runs the start-up path again — the integrity check, a damaged file moved aside
and replaced by a fresh one that asks for the FN's archive. The same loop retries an open that
failed at start (a full disk), every few seconds, until it succeeds: the daemon starts degraded
and carries on when space returns, with no restart.

An `asyncio.Lock` keeps one transaction at a time on the shared connection, and reads wait for
it too, so nobody sees another task's uncommitted rows. aiosqlite runs statements in FIFO order
on its thread, so a caller cancelled mid-transaction still gets its ROLLBACK run before the next
BEGIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from kktd.journal.errors import JournalError, JournalUnavailableError, classify
from kktd.journal.integrity import connect
from kktd.journal.recovery import RECOVERY_KEY, RecoveryRecord, replace_damaged

log = structlog.get_logger(__name__)

RETRY_EVERY = 3.0  # seconds between attempts to open an unavailable journal
_BEAT_EVERY = 1.0
_CLOSE_WITHIN = 10.0  # a connection to a failing disk may hang in close(): do not wait forever

_T = TypeVar("_T")
_Body = Callable[[aiosqlite.Connection], Awaitable[_T]]


class JournalFile:
    """The connection, its state (open, unavailable and why), and the loop that reopens it."""

    def __init__(self, path: Path, *, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._closed = False
        # what damage was seen, at run time or by a replacement that failed: the next open
        # replaces the file whatever quick_check says of it
        self._damage: str | None = None
        self._lost = asyncio.Event()
        self._unavailable_since: float | None = None
        self._attempts = 0
        #: why the journal is not open (None while it is)
        self.fault: JournalError | None = JournalError("the journal is not open yet")
        #: where a damaged journal was moved by this process's last open, if it was
        self.recovered_from: Path | None = None
        #: the last recovery, as the journal itself remembers it (across restarts)
        self.recovery: RecoveryRecord | None = None
        #: why the last write failed while the file stayed open (full, busy); None once one commits
        self.write_failure: JournalError | None = None
        #: called after each successful open (the wiring wakes the poller and the sync loop)
        self.on_open: list[Callable[[], None]] = []

    # -- opening and closing --

    async def open_now(self) -> None:
        """Open the file (or replace it, when damaged); a classified `JournalError` if not."""
        async with self._opening:
            if self._conn is not None:
                return
            if self._closed:
                raise JournalError("the journal is closed")
            self._attempts += 1
            try:
                conn, recovered = await self._connect_or_replace()
            except JournalError as exc:
                self._note_unavailable(exc)
                raise
            try:
                rows = await conn.execute_fetchall(
                    "SELECT value FROM meta WHERE key = ?", (RECOVERY_KEY,)
                )
            except sqlite3.Error as exc:
                await conn.close()
                if (error := classify(exc, self.path)) is None:
                    raise
                self._note_unavailable(error)
                raise error from exc
            async with self._lock:
                self._conn, self.fault, self._damage = conn, None, None
                self.write_failure = None
            self.recovered_from = recovered
            self.recovery = next((RecoveryRecord.from_json(r[0]) for r in rows), None)
            self._note_available()
        for callback in self.on_open:
            callback()

    async def try_open(self) -> JournalError | None:
        """`open_now`, but the failure is returned (and logged) rather than raised."""
        try:
            await self.open_now()
        except JournalError as exc:
            return exc
        return None

    async def _connect_or_replace(self) -> tuple[aiosqlite.Connection, Path | None]:
        if self._damage is not None:
            reason = self._damage
        else:
            try:
                return await connect(self.path), None
            except JournalError as exc:
                if exc.kind != "damaged":
                    raise
                reason = str(exc)
        try:
            record = await asyncio.to_thread(replace_damaged, self.path, self._wall(), reason)
        except (sqlite3.Error, OSError) as exc:
            self._damage = reason  # still in place: the next attempt replaces it, checked or not
            if (error := classify(exc, self.path)) is None:
                raise
            raise error from exc
        moved = Path(record.moved_to)
        log.error(
            "journal.corrupt_moved_aside",
            path=str(self.path),
            moved_to=str(moved),
            error=reason,
            action="a fresh journal is started and the FN's archive is read again",
        )
        # the fresh file; should even that fail, the caller keeps retrying: never a crash loop
        return await connect(self.path), moved

    async def close(self) -> None:
        self._closed = True
        async with self._opening, self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    # -- staying open --

    async def keep_open(
        self, beat: Callable[[], None], *, retry_every: float = RETRY_EVERY
    ) -> None:
        """A supervised component: reopen the journal whenever it is not open, until cancelled."""
        while True:
            beat()
            if self._conn is None:
                self._lost.clear()
                await self.try_open()
            await self._wait(retry_every if self._conn is None else float("inf"), beat)

    async def _wait(self, seconds: float, beat: Callable[[], None]) -> None:
        """`seconds`, or until the connection is lost, beating at least once a second."""
        # asyncio.wait, not asyncio.timeout: nothing here cancels and uncancels this task,
        # which on 3.11 can swallow the daemon's stop request (see SyncEngine._sleep)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            left = seconds
            while left > 0 and not lost.done():
                beat()
                step = min(left, _BEAT_EVERY)
                await asyncio.wait({lost}, timeout=step)
                left -= step
        finally:
            lost.cancel()
        beat()

    def unavailable(self) -> JournalUnavailableError | None:
        """The error every call gets now, or None while the journal is open."""
        return None if self.fault is None else JournalUnavailableError(self.fault)

    # -- statements --

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            if self._closed:
                raise JournalError("the journal is closed")
            assert self.fault is not None
            raise JournalUnavailableError(self.fault)
        return self._conn

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            conn = self._connection()
            try:
                return list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                if (error := await self._failed(exc)) is None:
                    raise
                raise error from exc

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement in its own transaction; returns the rows it changed."""

        async def body(conn: aiosqlite.Connection) -> int:
            async with conn.execute(sql, params) as cur:
                return cur.rowcount

        return await self._write(body)

    async def _write(self, body: _Body[_T]) -> _T:
        """Run `body` in one BEGIN IMMEDIATE transaction: all of it commits, or none of it."""
        async with self._lock:
            conn = self._connection()
            try:
                # inside the try: a caller cancelled while BEGIN is queued still gets its ROLLBACK
                await conn.execute("BEGIN IMMEDIATE")
                result = await body(conn)
                await conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # a failing disk may refuse this too
                    await conn.rollback()  # a no-op when SQLite already rolled back on its own
                if isinstance(exc, sqlite3.Error) and (error := await self._failed(exc)):
                    self.write_failure = error
                    raise error from exc
                raise
            self.write_failure = None
            return result

    async def _failed(self, exc: sqlite3.Error) -> JournalError | None:
        """Classify; on damage or an I/O error give the connection up (the lock is held)."""
        error = classify(exc, self.path)
        if error is None or error.kind not in ("damaged", "io"):
            return error  # full or busy: the same call may work later on the same file
        conn, self._conn = self._conn, None
        if error.kind == "damaged":
            self._damage = self._damage or str(error)
        self._note_unavailable(error)
        self._lost.set()
        if conn is not None:
            closing = asyncio.ensure_future(conn.close())
            await asyncio.wait({closing}, timeout=_CLOSE_WITHIN)
            if closing.done() and not closing.cancelled():
                closing.exception()  # a close that failed too: nothing more to do with it
        return error

    # -- saying so, once per change --

    def _note_unavailable(self, error: JournalError) -> None:
        previous = self.fault
        self.fault = error
        if self._unavailable_since is None:
            self._unavailable_since = self._wall()
        elif previous is not None and previous.kind == error.kind:
            return
        action = (
            "the damaged journal is moved aside and a fresh one re-read from the FN"
            if error.kind == "damaged"
            else f"KKT reads paused (the FN keeps the FDs); retrying every {RETRY_EVERY:g} s"
        )
        log.error("journal.unavailable", kind=error.kind, error=str(error), action=action)

    def _note_available(self) -> None:
        since, self._unavailable_since = self._unavailable_since, None
        attempts, self._attempts = self._attempts, 0
        if since is not None:
            log.info(
                "journal.available",
                path=str(self.path),
                after_seconds=round(self._wall() - since, 3),
                attempts=attempts,
            )
