"""The poller: read every FD from the FN and journal it with its cursor (SPEC section 1, Polling).

On connect the link probes with ENQ and identifies the KKT (FC); each poll then reads FF01 (FN
number, last FD), FF39 when due (at connect and at least once a minute), and every FD after the
journal's cursor: FF3A, then FF3B until error 08, the TLVs concatenated into the raw FD. Each FD
is stored together with its cursor advance, so a crash loses nothing and duplicates nothing. An
FD read is one unit of work holding the link: on any error mid-document the whole read restarts
at FF3A; the daemon's shutdown waits for that unit through `link.exclusive()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from kktd.config import KktConfig
from kktd.journal import Journal, JournalError
from kktd.kkt.link import KktError, KktLink
from kktd.kkt.protocol import (
    Command,
    DocumentInfo,
    ErrorCode,
    FnStatus,
    OfdStatus,
    ProtocolError,
    Response,
    fd_request,
)
from kktd.kkt.tlv import decode_document, doc_kind
from kktd.kkt.transport import LinkDown, LinkError

log = structlog.get_logger(__name__)

OFD_STATUS_EVERY = 60.0
BUSY_RETRY = 0.2
BUSY_RETRIES = 50  # 10 s of "printing" before the poll gives up and tries again later
DOCUMENT_TRIES = 5
MAX_TLVS = 4096  # an FD is at most 64 KiB: more TLVs than this is a KKT that never says 08
BEAT_EVERY = 1.0
TLV_HEADER = 4  # tag u16 LE, length u16 LE


class DocumentReadError(Exception):
    """An FD could not be read whole after every restart; the next poll tries again."""


@dataclass(frozen=True, slots=True)
class PollerStatus:
    connected: bool
    since: float | None
    device_model: int | None
    device_name: str | None
    fn: str | None
    last_fd: int | None
    cursor: int | None
    warning_flags: int | None
    ofd: OfdStatus | None
    ofd_read_at: float | None
    last_error: str | None
    journal_blocked: str | None
    journaled: int  # FDs stored by this process since it started

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for /v1/status."""
        data = asdict(self)
        if self.ofd is not None:
            at = self.ofd.first_unsent_at
            data["ofd"] = {
                "unsent_count": self.ofd.unsent_count,
                "first_unsent_fd": self.ofd.first_unsent_fd if self.ofd.unsent_count else None,
                "first_unsent_at": None if at is None else at.isoformat(timespec="seconds"),
                "status": self.ofd.status,
            }
        return data


class Poller:
    """Polls one KKT every `kkt.poll_interval` and journals each new FD."""

    def __init__(
        self,
        link: KktLink,
        journal: Journal,
        kkt_config: KktConfig,
        *,
        on_journaled: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._link = link
        self._journal = journal
        self._config = kkt_config
        self._on_journaled = on_journaled
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._beat: Callable[[], None] = _nothing
        self._fn_status: FnStatus | None = None
        self._cursor: int | None = None
        self._ofd: OfdStatus | None = None
        self._ofd_read_at: float | None = None
        self._ofd_due = float("-inf")
        self._last_error: str | None = None
        self._journal_blocked: str | None = None
        self._journaled = 0

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
        )

    async def run(self, beat: Callable[[], None]) -> None:
        """Poll until cancelled, beating at least once a second (idle waits included)."""
        self._beat = beat
        while True:
            beat()
            await self.poll()
            wait = self._config.poll_interval
            if not self._link.connected:
                wait = max(wait, self._link.state.reconnect_in)
            await self._idle(wait)

    async def poll(self) -> int:
        """One poll: connect if needed, FF01, FF39 when due, every new FD. Returns FDs stored."""
        try:
            if not self._link.connected:
                await self._link.connect()
                self._ofd_due = float("-inf")  # a fresh link: read the FN's backlog at once
            status = await self._read_fn_status()
            if self._clock() >= self._ofd_due:
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
        except KktError as exc:
            self._last_error = str(exc)
            log.warning("kkt.error", cmd=f"{exc.cmd:#x}", code=f"{exc.code:#04x}", name=exc.name)
        else:
            if self._last_error is not None and self._link.connected:
                log.info("kkt.poll_recovered", after=self._last_error)
            self._last_error = None
            return stored
        return 0

    # --- FN state ---

    async def _read_fn_status(self) -> FnStatus:
        try:
            response = await self._request(Command.FN_STATUS)
        except KktError as exc:
            if exc.code != ErrorCode.WRONG_FN_STATE:
                raise
            # Some FNs refuse queries while an FD read is left open (a kktd killed mid-read):
            # read that document out to its 08, then ask again.
            await self._drain_output()
            response = await self._request(Command.FN_STATUS)
        status = FnStatus.decode(response.data)
        self._fn_status = status
        return status

    async def _drain_output(self) -> None:
        async with self._link.exclusive():
            for _ in range(MAX_TLVS):
                try:
                    await self._request(Command.READ_TLV)
                except KktError:
                    break
        log.info("kkt.output_drained")

    async def _read_ofd_status(self) -> None:
        try:
            response = await self._request(Command.OFD_STATUS)
            self._ofd = OfdStatus.decode(response.data)
        except (KktError, ProtocolError) as exc:
            log.warning("kkt.ofd_status_failed", error=str(exc))
        else:
            self._ofd_read_at = self._wall_clock()
        self._ofd_due = self._clock() + OFD_STATUS_EVERY

    # --- documents ---

    async def _catch_up(self, status: FnStatus) -> int:
        fn = status.fn
        cursor = await self._start_cursor(fn, status.last_fd)
        self._cursor = cursor
        stored = 0
        # The store of one FD overlaps the read of the next (the journal's commit is the slow
        # part); stores still run one at a time and in FD order, so the cursor never passes an
        # FD that is not in the journal.
        storing: tuple[int, asyncio.Task[bool]] | None = None
        try:
            for fd in range(cursor + 1, status.last_fd + 1):
                async with self._link.exclusive():
                    doc_type, raw = await self._read_document(fd)
                if storing is not None:
                    stored += await self._stored(*storing)
                storing = fd, asyncio.create_task(self._store(fn, fd, doc_type, raw))
            if storing is not None:
                stored += await self._stored(*storing)
            storing = None
            self._unblock(fn, status.last_fd)  # all read and stored (or nothing was new)
        except JournalError as exc:
            storing = None
            self._block(exc)
        finally:
            if storing is not None:
                # a read failed or we are being stopped: the FD already read still gets its
                # commit, so a shutdown finishes the FD in progress
                with contextlib.suppress(Exception):
                    stored += await self._stored(*storing)
        return stored

    async def _stored(self, fd: int, storing: asyncio.Task[bool]) -> int:
        """Wait for one FD's commit and account for it; 1 when it was new."""
        inserted = await asyncio.shield(storing)  # a stop request must not cut a commit short
        self._cursor = fd
        self._beat()
        if not inserted:
            return 0
        self._journaled += 1
        self._on_journaled()
        return 1

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

    async def _read_document(self, fd: int) -> tuple[int, bytes]:
        """FF3A then FF3B until 08; restarted whole on any error, never left half read."""
        error = ""
        for attempt in range(1, DOCUMENT_TRIES + 1):
            try:
                return await self._read_document_once(fd)
            except LinkDown:
                raise  # the port is gone: the next poll after the reconnect restarts this FD
            except (KktError, LinkError, DocumentReadError, ProtocolError) as exc:
                error = str(exc)
            log.warning("kkt.document_restarted", fd=fd, attempt=attempt, error=error)
        raise DocumentReadError(f"FD {fd} not read after {DOCUMENT_TRIES} tries: {error}")

    async def _read_document_once(self, fd: int) -> tuple[int, bytes]:
        info = DocumentInfo.decode((await self._request(Command.OPEN_FD_TLV, fd_request(fd))).data)
        chunks: list[bytes] = []
        for _ in range(MAX_TLVS):
            try:
                tlv = (await self._request(Command.READ_TLV)).data
            except KktError as exc:
                if exc.code != ErrorCode.NO_DATA:
                    raise
                break
            if len(tlv) < TLV_HEADER or TLV_HEADER + int.from_bytes(tlv[2:4], "little") != len(tlv):
                # each FF3B answer is one whole TLV; anything else is an answer out of place
                raise DocumentReadError(f"FD {fd}: FF3B answer is not one TLV: {tlv[:8].hex()}")
            chunks.append(tlv)
        else:
            raise DocumentReadError(f"FD {fd}: no end of document after {MAX_TLVS} TLVs")
        raw = b"".join(chunks)
        if len(raw) != info.length:
            # a TLV lost or read twice (an answer lost on the line): read it again
            raise DocumentReadError(f"FD {fd}: {len(raw)} bytes read, FF3A said {info.length}")
        return info.doc_type, raw

    async def _store(self, fn: str, fd: int, doc_type: int, raw: bytes) -> bool:
        try:
            fields = decode_document(doc_type, raw).to_fields()
        except Exception as exc:  # a decoder bug must never lose an FD: raw is kept, logged
            # doc_type and its kind are facts from FF3A; the error is for `kktd doc`, and the
            # upstream client sends only SPEC's body fields, so nothing is invented upstream
            fields = {
                "doc_type": doc_type,
                "doc_kind": doc_kind(doc_type),
                "decode_error": str(exc),
            }
            log.exception("kkt.decode_failed", fn=fn, fd=fd, doc_type=doc_type, error=str(exc))
        inserted = await self._journal.store(fn, fd, doc_type, raw, fields)
        self._unblock(fn, fd)
        return inserted

    def _unblock(self, fn: str, fd: int) -> None:
        if self._journal_blocked is not None:
            self._journal_blocked = None
            log.info("journal.unblocked", fn=fn, fd=fd)

    def _block(self, exc: JournalError) -> None:
        """The journal cannot take FDs (full, unavailable …): reading pauses till it can."""
        if self._journal_blocked is None:
            event = "journal.full" if exc.kind == "full" else "kkt.reads_paused"
            log.error(event, error=str(exc), action="KKT reading paused; the FN keeps FDs")
        self._journal_blocked = str(exc)

    # --- plumbing ---

    async def _request(self, cmd: int, data: bytes = b"") -> Response:
        """A request, retried shortly while the KKT is printing (busy 50/58)."""
        for _ in range(BUSY_RETRIES):
            try:
                return await self._link.request(cmd, data)
            except KktError as exc:
                if not exc.busy:
                    raise
            self._beat()
            await self._sleep(BUSY_RETRY)
        return await self._link.request(cmd, data)

    async def _idle(self, seconds: float) -> None:
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            self._beat()
            await self._sleep(min(left, BEAT_EVERY))
        self._beat()


def _nothing() -> None:
    """The beat before `run` supplies one (a bare `poll()` in tests and tools)."""
