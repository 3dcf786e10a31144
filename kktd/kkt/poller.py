"""The poller: read every FD from the FN and journal it with its cursor (SPEC section 1, Polling).

On connect the link probes with ENQ and identifies the KKT (FC); each poll then reads FF01 (FN
number, last FD), FF39 when due (at connect and at least once a minute), and every FD after the
journal's cursor: FF3A, then FF3B until error 08, the answers joined as a byte stream into the raw
FD (`kktd.kkt.fd_stream`). Each FD is stored together with its cursor advance, so a crash loses
nothing and duplicates nothing. An FD read is one unit of work holding the link: on any error
mid-document the whole read restarts at FF3A, and a read that fails for good is read out to its
08 so the KKT is not left in data-output mode (`kktd.kkt.fd_read`); the daemon's shutdown waits
for that unit through `link.exclusive()`.

What the KKT says is checked before it is believed: an FN number that differs from the one
known is believed only when two FF01 answers in a row agree (a garbled answer the XOR LRC misses
is not a replaced FN), and an FD whose 1040/1041 name another FD or FN is read again, never
journaled. An FD that can never be read keeps the poller at it (`stuck`) until the operator
skips it (`kktd skip`, audited in the journal); nothing is ever skipped automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from kktd.config import KktConfig
from kktd.journal import Journal, JournalError
from kktd.journal.rows import NewFd
from kktd.journal.skips import Requester, SkipRecord, SkipRefused, record_skip
from kktd.kkt.commands import FnStatus, OfdStatus
from kktd.kkt.fd_read import FdReader
from kktd.kkt.frames import ProtocolError
from kktd.kkt.interface import Kkt, KktConnection
from kktd.kkt.link import KktError, KktLink
from kktd.kkt.poller_state import DocumentReadError, PollerStatus, StuckFd
from kktd.kkt.tlv import decode_document, doc_kind
from kktd.kkt.transport import LinkDown, LinkError
from kktd.lifecycle.supervisor import sleep_beating

__all__ = ["DocumentReadError", "Poller", "PollerStatus", "StuckFd"]

log = structlog.get_logger(__name__)

OFD_STATUS_EVERY = 60.0
FN_CONFIRM_READS = 3  # FF01 answers read to find two in a row that agree on a new FN number
SKIP_WAIT = 20.0  # a skip waits this long for an FD read in progress to end
# Failed polls before an FD may be skipped: one failure can be a garbled FF01 last FD (an FD not
# issued yet), which the next poll corrects; a skipped FD is never read again.
SKIP_AFTER_POLLS = 2
# Group commit: up to GROUP_SIZE FDs read back to back, or what GROUP_WAIT seconds of reading
# brought, go in one transaction; reading waits for the journal past GROUP_MAX uncommitted FDs.
GROUP_SIZE = 16
GROUP_WAIT = 0.1
GROUP_MAX = 64


class Poller:
    """Polls one KKT every `kkt.poll_interval` and journals each new FD."""

    def __init__(
        self,
        link: KktConnection,
        journal: Journal,
        kkt_config: KktConfig,
        *,
        on_journaled: Callable[[], None],
        kkt: Kkt | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._link = link
        self._journal = journal
        self._config = kkt_config
        self._on_journaled = on_journaled
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep  # None: real time (a test's fake clock brings its own)
        if kkt is None:  # Shtrih-M, the one vendor kktd speaks today
            if not isinstance(link, KktLink):
                raise TypeError("a connection other than KktLink needs its own Kkt (kkt=...)")
            kkt = FdReader(link, sleep=sleep or asyncio.sleep)
        self._kkt: Kkt = kkt
        self._beat: Callable[[], None] = _nothing
        self._fn_status: FnStatus | None = None
        self._cursor: int | None = None
        self._ofd: OfdStatus | None = None
        self._ofd_read_at: float | None = None
        self._ofd_due = float("-inf")
        self._last_error: str | None = None
        self._journal_blocked: str | None = None
        self._journaled = 0
        self._stuck: StuckFd | None = None
        self._skipped: tuple[str, int] | None = None  # the last FD the operator skipped

    def reconfigure(self, kkt_config: KktConfig) -> None:
        """Takes effect from the next poll (port and baud rate need a restart)."""
        self._config = kkt_config

    def status(self) -> PollerStatus:
        link = self._link.state
        device = link.device
        fn_status = self._fn_status
        return PollerStatus(
            connected=link.connected,
            since=link.since,
            device_model=None if device is None else device.model,
            device_name=None if device is None else device.name,
            fn=None if fn_status is None else fn_status.fn,
            last_fd=None if fn_status is None else fn_status.last_fd,
            cursor=self._cursor,
            warning_flags=None if fn_status is None else fn_status.warning_flags,
            ofd=self._ofd,
            ofd_read_at=self._ofd_read_at,
            last_error=self._last_error or link.last_error,
            journal_blocked=self._journal_blocked,
            journaled=self._journaled,
            stuck=self._stuck,
        )

    async def run(self, beat: Callable[[], None]) -> None:
        """Poll until cancelled, beating at least once a second (idle waits included)."""
        self._beat = beat
        self._kkt.beat = beat
        while True:
            beat()
            await self.poll()
            wait = self._config.poll_interval
            if not self._link.connected:
                wait = max(wait, self._link.state.reconnect_in)
            await sleep_beating(wait, beat, monotonic=self._monotonic, sleep=self._sleep)

    async def poll(self) -> int:
        """One poll: connect if needed, FF01, FF39 when due, every new FD. Returns FDs stored."""
        try:
            if not self._link.connected:
                await self._link.connect()
                self._ofd_due = float("-inf")  # a fresh link: read the FN's backlog at once
            status = await self._read_fn_status()
            if self._monotonic() >= self._ofd_due:
                await self._read_ofd_status()
            stored = await self._catch_up(status)
        except LinkDown as exc:
            self._last_error = str(exc)  # the link logged the disconnect
        except JournalError as exc:
            self._block(exc)
        except (LinkError, DocumentReadError, ProtocolError) as exc:
            if str(exc) != self._last_error:  # once per distinct failure, not once a second
                log.warning("kkt.poll_failed", error=str(exc))
            self._last_error = str(exc)
            if isinstance(exc, DocumentReadError):
                self._on_stuck(exc)
        except KktError as exc:
            self._last_error = str(exc)
            log.warning("kkt.error", cmd=f"{exc.cmd:#x}", code=f"{exc.code:#04x}", name=exc.name)
        else:
            if self._last_error is not None and self._link.connected:
                log.info("kkt.poll_recovered", after=self._last_error)
            self._last_error = None
            self._stuck = None  # every FD up to the FN's last is read (or skipped)
            return stored
        return 0

    def _on_stuck(self, exc: DocumentReadError) -> None:
        stuck = self._stuck
        if stuck is not None and (stuck.fn, stuck.fd) == (exc.fn, exc.fd):
            self._stuck = StuckFd(exc.fn, exc.fd, str(exc), stuck.since, stuck.polls + 1)
        else:
            self._stuck = StuckFd(exc.fn, exc.fd, str(exc), self._wall(), 1)

    # --- FN state ---

    async def _read_fn_status(self) -> FnStatus:
        status = await self._kkt.fn_status()
        believed = None if self._fn_status is None else self._fn_status.fn
        if status.fn != believed:
            status = await self._confirm_fn(status, believed)
        self._fn_status = status
        return status

    async def _confirm_fn(self, first: FnStatus, believed: str | None) -> FnStatus:
        """A new FN number counts once the next FF01 answer says it too (SPEC section 1).

        The XOR LRC misses two flips of the same bit: one garbled answer must neither pass for
        a replaced FN (a re-read of the archive under a bogus number) nor stop the poll.
        """
        previous = first
        for _ in range(FN_CONFIRM_READS):
            status = await self._kkt.fn_status()
            if status.fn == previous.fn:
                return status  # two answers in a row agree
            if status.fn == believed:
                log.warning("kkt.fn_garbled", answered=previous.fn, fn=believed)
                return status
            previous = status
        raise ProtocolError(f"FF01: no two answers in a row agree on the FN number ({previous.fn})")

    async def _read_ofd_status(self) -> None:
        try:
            self._ofd = await self._kkt.ofd_status()
        except (KktError, ProtocolError) as exc:
            log.warning("kkt.ofd_status_failed", error=str(exc))
        else:
            self._ofd_read_at = self._wall()
        self._ofd_due = self._monotonic() + OFD_STATUS_EVERY

    # --- documents ---

    async def _catch_up(self, status: FnStatus) -> int:
        fn = status.fn
        cursor = await self._start_cursor(fn, status.last_fd)
        self._cursor = cursor
        # Group commit: the FDs read while one commit runs go in the next, together. Commits
        # run one at a time and in FD order, each advancing the cursor with its own FDs, so
        # the cursor never passes an FD that is not in the journal.
        group = _Group(fn)
        try:
            for fd in range(cursor + 1, status.last_fd + 1):
                async with self._link.exclusive():
                    if self._skipped == (fn, fd):
                        continue  # skipped by the operator while this poll waited for the link
                    doc_type, raw = await self._kkt.read_document(fn, fd)
                if not group.read:
                    group.since = self._monotonic()
                group.read.append((fd, doc_type, raw))
                await self._commit(group, wait=len(group.read) >= GROUP_MAX)
            await self._commit_all(group)
            self._unblock(fn, status.last_fd)  # all read and stored (or nothing was new)
        except JournalError as exc:
            group.read.clear()  # not journaled: the cursor is before them, the next poll reads them
            self._block(exc)
        finally:
            if group.read or group.committing is not None:
                # a read failed or we are being stopped: the FDs already read still get their
                # commit, so a shutdown finishes the FDs in progress
                with contextlib.suppress(Exception):
                    await self._commit_all(group)
        return group.stored

    async def _commit(self, group: _Group, *, wait: bool) -> None:
        """Start a commit of what is read when none is running; with `wait`, see it end.

        A commit still running is left to run (the FDs read meanwhile wait for the next one)
        unless `wait` says reading must not get further ahead of the journal. FDs read back to
        back are gathered into one commit of up to `GROUP_SIZE` FDs, or of what `GROUP_WAIT`
        seconds brought: a commit costs the same for one FD as for several, and until it is
        done none of them counts as journaled (a crash re-reads them from the FN).
        """
        committing = group.committing
        if committing is not None:
            if not (wait or committing.done()):
                return
            try:
                group.stored += await asyncio.shield(committing)  # a stop must not cut it short
            finally:
                if committing.done():  # a stop while waiting: the caller's `finally` waits again
                    group.committing = None
        if group.read and (
            wait or len(group.read) >= GROUP_SIZE or self._monotonic() - group.since >= GROUP_WAIT
        ):
            batch, group.read = group.read, []
            group.committing = asyncio.create_task(self._store_group(group.fn, batch))

    async def _commit_all(self, group: _Group) -> None:
        """Every FD read is journaled (or this raises): the commit in flight, then the rest."""
        while group.read or group.committing is not None:
            await self._commit(group, wait=True)

    async def _start_cursor(self, fn: str, last_fd: int) -> int:
        cursor = await self._journal.cursor(fn)
        if cursor is not None:
            return cursor
        # The journal, not this process's memory, tells a replaced FN from a first start, so a
        # restart right after the FN was swapped still reads the new FN from its first FD.
        known = await self._journal.known_fns()
        if known:
            log.warning("kkt.fn_replaced", old_fns=known, fn=fn, from_fd=1)
            # SPEC: a new FN is read from its first FD, whatever start_fd says. The cursor is
            # stored at once, so an FN still empty is not "replaced" again at every poll.
            await self._journal.set_cursor(fn, 0)
            return 0
        if await self._journal.reread_pending():
            # SPEC section 2: a damaged journal was replaced; the FN is the source of truth
            log.warning("kkt.archive_reread", fn=fn, from_fd=1, reason="journal recovered")
            await self._journal.set_cursor(fn, 0)
            return 0
        start = self._config.start_fd
        if start == "next":
            await self._journal.set_cursor(fn, last_fd)
            cursor = last_fd
        else:
            cursor = 0 if start == "first" else max(0, start - 1)
        log.info("kkt.cursor_started", fn=fn, start_fd=start, after_fd=cursor)
        return cursor

    async def _store_group(self, fn: str, batch: list[tuple[int, int, bytes]]) -> int:
        """Decode and journal FDs read back to back, the cursor with them: one transaction.

        Nothing is accounted before the commit: the cursor, the count and `on_journaled` move
        only once every FD of the group is in the journal. Returns how many were new.
        """
        docs = [NewFd(fn, fd, kind, raw, _fields(fn, fd, kind, raw)) for fd, kind, raw in batch]
        inserted = await self._journal.store_many(docs)
        self._unblock(fn, docs[-1].fd)
        self._cursor = docs[-1].fd
        self._beat()
        new = sum(inserted)
        for _ in range(new):
            self._journaled += 1
            self._on_journaled()
        return new

    def _unblock(self, fn: str, fd: int) -> None:
        if self._journal_blocked is not None:
            self._journal_blocked = None
            log.info("journal.unblocked", fn=fn, fd=fd)

    # --- the operator's last resort ---

    async def skip(
        self, fn: str, fd: int, reason: str, requester: Requester, *, wait: float = SKIP_WAIT
    ) -> SkipRecord:
        """Skip the FD this poller is stuck on (`kktd skip`): audited, never automatic.

        Holding the link, so no read of that FD is under way, and a poll that was waiting for
        the link to read it passes it by. `SkipRefused` says why anything else is refused,
        including a link still busy after `wait` seconds (a long read of the backlog).
        """
        async with contextlib.AsyncExitStack() as held:
            try:
                async with asyncio.timeout(wait):
                    await held.enter_async_context(self._link.exclusive())
            except TimeoutError:
                raise SkipRefused(
                    "busy", f"the KKT link stayed busy for {wait:g} s: try again"
                ) from None
            stuck = self._stuck
            if stuck is None or (stuck.fn, stuck.fd) != (fn, fd):
                at = "no FD" if stuck is None else f"FD {stuck.fd} of FN {stuck.fn}"
                raise SkipRefused(
                    "not_stuck",
                    f"FD {fd} of FN {fn} is not the FD kktd is stuck on ({at}): only an FD that"
                    " every read failed on can be skipped",
                )
            if stuck.polls < SKIP_AFTER_POLLS:
                raise SkipRefused(
                    "not_stuck",
                    f"FD {fd} of FN {fn} failed in {stuck.polls} poll so far: wait for the next"
                    " poll to fail on it too, then try again",
                )
            record = await record_skip(
                self._journal, fn, fd, reason=reason, requester=requester, read_error=stuck.error
            )
            self._stuck = None
            self._skipped = (fn, fd)
            if self._fn_status is not None and self._fn_status.fn == fn:
                self._cursor = fd
        log.warning("kkt.fd_skipped", **record.to_dict())
        return record

    def _block(self, exc: JournalError) -> None:
        """The journal cannot take FDs (full, unavailable …): reading pauses till it can."""
        if self._journal_blocked is None:
            event = "journal.full" if exc.kind == "full" else "kkt.reads_paused"
            log.error(event, error=str(exc), action="KKT reading paused; the FN keeps FDs")
        self._journal_blocked = str(exc)


def _fields(fn: str, fd: int, doc_type: int, raw: bytes) -> dict[str, Any]:
    """The FD's decoded fields; a decoder bug must never lose an FD: raw is kept, logged."""
    try:
        return decode_document(doc_type, raw).to_fields()
    except Exception as exc:
        # doc_type and its kind are facts from FF3A; the error is for `kktd doc`, and the
        # upstream client sends only SPEC's body fields, so nothing is invented upstream
        log.exception("kkt.decode_failed", fn=fn, fd=fd, doc_type=doc_type, error=str(exc))
        return {"doc_type": doc_type, "doc_kind": doc_kind(doc_type), "decode_error": str(exc)}


class _Group:
    """The FDs of one catch-up read but not journaled yet, and the commit in flight."""

    __slots__ = ("committing", "fn", "read", "since", "stored")

    def __init__(self, fn: str) -> None:
        self.fn = fn
        self.read: list[tuple[int, int, bytes]] = []  # (fd, doc_type, raw), in FD order
        self.committing: asyncio.Task[int] | None = None
        self.since = 0.0  # when the first FD of `read` was read
        self.stored = 0


def _nothing() -> None:
    """The beat before `run` supplies one (a bare `poll()` in tests and tools)."""
