"""Skipped FDs (`kktd skip`): the audited last resort for an FD the KKT can never produce.

Nothing is ever skipped automatically. An FD the poller cannot read keeps every later FD
unread; when the KKT's service centre confirms that this one FD cannot be read out of the FN,
the operator skips it by FN and FD with a reason. The journal keeps who asked, when, why and
what the reads of it failed with (`skips`, schema version 3), and moves the FN's cursor past
the FD in the same transaction, so the poller reads on from the next one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

if TYPE_CHECKING:
    from kktd.journal.store import Journal

REASON_LIMIT = 500  # characters of the operator's reason kept

_COLUMNS = "fn, fd, skipped_at, reason, operator, peer, auth, read_error"


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for a skip, as far as the local API can tell."""

    operator: str  # what the client says it runs as (`kktd skip` sends the OS user)
    peer: str  # what the API saw: peer credentials on a unix socket, else the address
    auth: str  # "api token" when the call carried the configured token, else "none"


@dataclass(frozen=True, slots=True)
class SkipRecord:
    fn: str
    fd: int
    skipped_at: float  # wall clock
    reason: str
    operator: str
    peer: str
    auth: str
    read_error: str | None  # what the last reads of the FD failed with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SkipRefused(Exception):  # noqa: N818 - reads as the answer the operator gets
    """This FD cannot be skipped; `name` is the API's error name, the message says why."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name


async def record_skip(
    journal: Journal,
    fn: str,
    fd: int,
    *,
    reason: str,
    requester: Requester,
    read_error: str | None,
) -> SkipRecord:
    """Record the skip and move the FN's cursor to `fd`, in one transaction.

    Refused (`SkipRefused`) when the FD is journaled or skipped already, or when the cursor is
    not right before it: only the next FD to read can be skipped, never a gap.
    """
    who = requester.operator, requester.peer, requester.auth
    # the journal's own wall clock and transaction: this module is the journal's, kept apart only
    # to keep store.py small
    record = SkipRecord(fn, fd, journal._wall(), reason[:REASON_LIMIT], *who, read_error)

    async def body(conn: aiosqlite.Connection) -> None:
        if await _one(conn, "SELECT 1 FROM documents WHERE fn = ? AND fd = ?", (fn, fd)):
            raise SkipRefused("journaled", f"FD {fd} of FN {fn} is in the journal already")
        if await _one(conn, "SELECT 1 FROM skips WHERE fn = ? AND fd = ?", (fn, fd)):
            raise SkipRefused("skipped", f"FD {fd} of FN {fn} was skipped already")
        cursor = await _one(conn, "SELECT last_fd FROM cursors WHERE fn = ?", (fn,))
        if cursor is not None and cursor[0] != fd - 1:
            raise SkipRefused(
                "not_next",
                f"FN {fn} is read up to FD {cursor[0]}: only FD {cursor[0] + 1} can be skipped",
            )
        await conn.execute(
            f"INSERT INTO skips ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            tuple(asdict(record).values()),
        )
        await conn.execute(
            "INSERT INTO cursors (fn, last_fd, updated_at) VALUES (?, ?, ?) ON CONFLICT (fn)"
            " DO UPDATE SET last_fd = excluded.last_fd, updated_at = excluded.updated_at",
            (fn, fd, record.skipped_at),
        )

    await journal._write(body)
    return record


async def list_skips(journal: Journal, limit: int = 20) -> list[SkipRecord]:
    """The newest skips first."""
    rows = await journal._rows(
        f"SELECT {_COLUMNS} FROM skips ORDER BY skipped_at DESC, fn, fd LIMIT ?",  # noqa: S608
        (limit,),
    )
    return [SkipRecord(*row) for row in rows]


async def skipped_count(journal: Journal) -> int:
    rows = await journal._rows("SELECT COUNT(*) FROM skips")
    return int(rows[0][0])


async def _one(
    conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]
) -> tuple[Any, ...] | None:
    async with conn.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else tuple(row)
