"""Reading from the FN through the link: one FD whole, a document left open read out, and
every request retried while the KKT is printing (SPEC section 1, Polling).

An FD read is FF3A, then FF3B until 08, the answers joined as a byte stream into the raw FD
(`kktd.kkt.fd_stream`); FF3A and its FF3B run in one run of the link. On any error
mid-document the whole read restarts at FF3A, and a read that fails for good is read out to its
08 so the KKT is not left in data-output mode. The poller decides what to read and journals it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import structlog

from kktd.kkt.commands import (
    BUSY_ERRORS,
    Command,
    DocumentInfo,
    ErrorCode,
    FnStatus,
    OfdStatus,
    Response,
    fd_request,
)
from kktd.kkt.fd_stream import DocumentStream
from kktd.kkt.frames import ProtocolError
from kktd.kkt.link import KktError, KktLink, busy_delays
from kktd.kkt.poller_state import DocumentReadError
from kktd.kkt.transport import LinkDown, LinkError

log = structlog.get_logger(__name__)

BUSY_WAIT = 10.0  # of "printing" before the poll gives up and tries again later
DOCUMENT_TRIES = 5
DRAIN_ANSWERS = 4096  # reading a document out to its 08: a KKT that never says 08 is left alone


class FdReader:
    """The Shtrih-M side of `kktd.kkt.interface.Kkt`: busy answers waited out, FDs read whole.

    `beat` is the poller's (set when it runs): a wait for a busy KKT beats before it sleeps.
    """

    def __init__(
        self, link: KktLink, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self._link = link
        self._sleep = sleep
        self.beat: Callable[[], None] = _nothing
        self._open_length: int | None = None  # FF3A's length while FF3B has not said 08 yet

    async def request(self, cmd: int, data: bytes = b"") -> Response:
        """A request, retried shortly while the KKT is printing (busy 50/58)."""
        for delay in busy_delays(BUSY_WAIT):
            try:
                return await self._link.request(cmd, data)
            except KktError as exc:
                if not exc.busy:
                    raise
            self.beat()
            await self._sleep(delay)
        return await self._link.request(cmd, data)

    async def fn_status(self) -> FnStatus:
        """FF01; an FN that refuses it while a document is left open is read out first."""
        try:
            response = await self.request(Command.FN_STATUS)
        except KktError as exc:
            if exc.code != ErrorCode.WRONG_FN_STATE:
                raise
            # Some FNs refuse queries while an FD read is left open (a kktd killed mid-read):
            # read that document out to its 08, then ask again.
            await self.drain_output()
            response = await self.request(Command.FN_STATUS)
        return FnStatus.decode(response.data)

    async def ofd_status(self) -> OfdStatus:
        """FF39."""
        return OfdStatus.decode((await self.request(Command.OFD_STATUS)).data)

    async def drain_output(self, answers: int = DRAIN_ANSWERS) -> None:
        """Read the open document out to its 08 (at most `answers` FF3B)."""
        async with self._link.exclusive():
            for _ in range(answers):
                try:
                    await self.request(Command.READ_TLV)
                except KktError:
                    break
        self._open_length = None
        log.info("kkt.output_drained")

    async def read_document(self, fn: str, fd: int) -> tuple[int, bytes]:
        """FF3A then FF3B until 08; restarted whole on any error, never left half read."""
        error = ""
        for attempt in range(1, DOCUMENT_TRIES + 1):
            try:
                return await self._read_document_once(fn, fd)
            except LinkDown:
                raise  # the port is gone: the next poll after the reconnect restarts this FD
            except (KktError, LinkError, ProtocolError) as exc:
                error = str(exc)
            log.warning("kkt.document_restarted", fd=fd, attempt=attempt, error=error)
        if self._open_length is not None:
            # The last try stopped mid-document: finish it (an FN refuses FF01 meanwhile).
            # Each answer carries a byte at least: a KKT that never says 08 is left to FF3A.
            with contextlib.suppress(KktError, LinkError, ProtocolError):
                await self.drain_output(self._open_length + 1)
        raise DocumentReadError(fn, fd, f"FD {fd} not read after {DOCUMENT_TRIES} tries: {error}")

    async def _read_document_once(self, fn: str, fd: int) -> tuple[int, bytes]:
        """FF3A, and FF3B in the same run of the link when FF3A opened the document."""
        self._open_length = None
        opened: list[DocumentInfo] = []

        def opens(answer: Response) -> bool:  # FF3A's answer, in the link's reader callback
            if answer.error != ErrorCode.OK:
                return False
            try:
                info = DocumentInfo.decode(answer.data)
            except ProtocolError:
                return False  # raised again below, outside the callback
            opened.append(info)
            self._open_length = info.length  # FF3B starts now: read out to 08 if this fails
            return True

        request = fd_request(fd)
        for delay in busy_delays(BUSY_WAIT):  # busy answers waited out as `request` does
            opened.clear()
            answers = await self._follow(request, opens)
            if answers[0].error not in BUSY_ERRORS:
                break
            self.beat()
            await self._sleep(delay)
        else:
            opened.clear()
            answers = await self._follow(request, opens)
        first, *tlvs = answers
        if first.error:
            raise KktError(Command.OPEN_FD_TLV, first.error)
        info = opened[0] if opened else DocumentInfo.decode(first.data)  # raises PayloadError
        self._open_length = info.length
        stream = DocumentStream(fn, fd, info)
        await self._read_tlvs(stream, tlvs)
        self._open_length = None
        return info.doc_type, stream.finish()

    async def _follow(self, request: bytes, opens: Callable[[Response], bool]) -> list[Response]:
        """FF3A for `request`, then FF3B while the answers carry data within FF3A's length."""
        left = 0

        def more(answer: Response) -> bool:
            nonlocal left
            if answer.cmd == Command.OPEN_FD_TLV:
                if not opens(answer):
                    return False
                left = self._open_length or 0
                return True
            left -= len(answer.data)
            return answer.error == ErrorCode.OK and bool(answer.data) and left >= 0

        return await self._link.requests(
            Command.OPEN_FD_TLV, request, again=more, then=Command.READ_TLV
        )

    async def _read_tlvs(self, stream: DocumentStream, answers: list[Response]) -> None:
        """FF3B until 08, the answers into `stream`; busy answers waited out as `request` does.

        `answers` are the FF3B answers of FF3A's run. The FF3B run goes on inside the link
        while the answers carry data and stay within FF3A's length (bounded, as
        `DocumentStream.add`); the first answer that does not ends the run and is dealt with
        here.
        """
        left = 0

        def more(answer: Response) -> bool:
            nonlocal left
            left -= len(answer.data)
            return answer.error == ErrorCode.OK and bool(answer.data) and left >= 0

        delays: Iterator[float] | None = None
        while True:
            if not answers:
                left = stream.info.length - stream.received
                answers = await self._link.requests(Command.READ_TLV, again=more)
            *pieces, last = answers
            answers = []
            for answer in pieces:
                stream.add(answer.data)
            if last.error == ErrorCode.OK:
                stream.add(last.data)  # raises: empty, or past FF3A's length
                delays = None
                continue
            if last.error == ErrorCode.NO_DATA:
                return
            if last.error not in BUSY_ERRORS:
                raise KktError(Command.READ_TLV, last.error)
            delays = busy_delays(BUSY_WAIT) if delays is None else delays
            delay = next(delays, None)
            if delay is None:
                raise KktError(Command.READ_TLV, last.error)  # printing for too long
            self.beat()
            await self._sleep(delay)


def _nothing() -> None:
    """The beat before the poller's `run` supplies one (a bare `poll()` in tests and tools)."""
