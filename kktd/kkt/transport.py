"""A byte pipe to a Shtrih-M on the event loop, driving the pure handshake of `handshake.py`.

`FdTransport` is the driver every transport shares: a non-blocking file descriptor whose reads
come through `loop.add_reader` and whose writes go straight to the fd (frames are at most 258
bytes; EAGAIN waits on `loop.add_writer`). No thread per byte, and no pyserial-asyncio, which is
unmaintained. Everything the protocol decides (what to send, how long to wait, which stray bytes
to skip) comes from `handshake.Exchange`; a transport only moves bytes and keeps time, so the
serial port (`serial_port.py`) and TCP (`tcp.py`) differ only in how the fd is opened and
released.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Protocol

from kktd.kkt.commands import Response
from kktd.kkt.frames import ACK, ENQ
from kktd.kkt.handshake import (
    Action,
    ArmTimeout,
    Discarded,
    Done,
    Exchange,
    Failed,
    FailReason,
    Send,
    leftover,
)

BYTE_TIMEOUT = 0.1
CONTROL_TIMEOUT = 0.5
WRITE_STALL = 2.0  # no flow control on the line: output that cannot drain means no port
MAX_BUFFERED = 4096  # unread input kept; more than this between exchanges is noise anyway
_ACK = bytes([ACK])
_SEND_ENQ = Send(bytes([ENQ]))
_SEND_ACK_ENQ = Send(bytes([ACK, ENQ]))


class LinkError(Exception):
    """The link could not carry an exchange (the caller decides whether to reconnect)."""


class LinkDown(LinkError):  # noqa: N818 - the name the team codes against (issue 3)
    """The port is gone, cannot be opened, or failed an I/O call."""


class ExchangeError(LinkError):
    """The handshake gave up (see `handshake.Failed` for the reasons)."""

    def __init__(self, reason: FailReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailReason = reason
        self.detail = detail


class Transport(Protocol):
    """What the link needs of a byte pipe to the KKT (link.py's `open_transport` makes one)."""

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    async def exchange(self, body: bytes, *, answer_timeout: float) -> Response: ...

    async def exchanges(
        self,
        body: bytes,
        *,
        answer_timeout: float,
        again: Callable[[Response], bool],
        then: bytes | None = None,
    ) -> list[Response]: ...


class FdTransport:
    """One open byte pipe. Runs one `Exchange` at a time; the link serializes callers.

    A subclass opens the fd and releases it in `_release` (called once, by `close`).
    """

    hung_up = "the port hung up"  # what an empty read means on this kind of pipe

    def __init__(
        self,
        fd: int,
        *,
        byte_time: float = 0.0,
        byte_timeout: float = BYTE_TIMEOUT,
        control_timeout: float = CONTROL_TIMEOUT,
        on_discard: Callable[[Discarded], None] | None = None,
    ) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self.byte_timeout = byte_timeout
        self.control_timeout = control_timeout
        self._on_discard = on_discard
        self._byte_time = byte_time  # seconds per byte on the line; 0 where no baud rate applies
        self._input = bytearray()  # bytes that came with no exchange ready to take them
        self._error: LinkDown | None = None
        self._run: _Run | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._run is not None:
            _settle(self._run.result, LinkDown("the port is closed"))
        self._release()

    def _release(self) -> None:
        os.close(self._fd)

    async def exchange(self, body: bytes, *, answer_timeout: float) -> Response:
        """Send one request body and return its answer, whatever the error byte says.

        The exchange runs in the reader's callback: each chunk of input goes to the machine the
        moment it arrives and its actions (the frame after a NAK, the ACK after the answer) are
        written at once, so the task wakes only for the result. One timer serves the deadline.
        """
        return (await self.exchanges(body, answer_timeout=answer_timeout, again=_once))[0]

    async def exchanges(
        self,
        body: bytes,
        *,
        answer_timeout: float,
        again: Callable[[Response], bool],
        then: bytes | None = None,
    ) -> list[Response]:
        """The request, then `then` (or the same request) while `again(answer)` says so: every
        answer.

        Each exchange is whole and on its own (ENQ first, as `exchange`), but the next one
        starts in the callback that took the answer before it, so an FD's FF3A and its run of
        FF3B cost the task one wake-up, not one per answer. `again` runs in that callback:
        quick, and it must not raise.
        """
        self._check()
        if self._run is not None:
            raise RuntimeError("one exchange at a time (the link serializes callers)")
        self._drop_stale_input()
        machine = self._machine(body, answer_timeout)
        run = _Run(machine, self._loop.create_future())
        run.again = again
        run.follow = machine if then is None else self._machine(then, answer_timeout)
        self._run = run
        try:
            self._apply(run, run.machine.start())
            await run.result
            return run.answers
        finally:
            self._run = None
            if run.stalled is not None:
                run.stalled.cancel()
                self._loop.remove_writer(self._fd)

    def _machine(self, body: bytes, answer_timeout: float) -> Exchange:
        return Exchange(
            body,
            answer_timeout=answer_timeout,
            control_timeout=self.control_timeout,
            byte_timeout=self.byte_timeout,
        )

    # --- driving the machine ---

    def _apply(self, run: _Run, actions: list[Action], on_the_wire: float = 0.0) -> None:
        """Carry out `actions` in order; a write the port cannot take yet suspends the rest."""
        try:
            held = b""  # the ACK of an answer, written with the next exchange's ENQ if one follows
            last = len(actions) - 1
            for index, action in enumerate(actions):
                # isinstance, not match: no attribute extraction per case
                if isinstance(action, Send):
                    data = action.data
                    if index < last and isinstance(actions[index + 1], Done):
                        held = data
                        continue
                    written = self._write_now(data)
                    # the KKT answers after our bytes have crossed a slow line
                    on_the_wire += len(data) * self._byte_time
                    if written < len(data):
                        self._suspend(run, data[written:], actions[index + 1 :], on_the_wire)
                        return
                elif isinstance(action, ArmTimeout):
                    self._arm(run, self._loop.time() + action.seconds + on_the_wire)
                elif isinstance(action, Done):
                    self._done(run, action.response, held, on_the_wire)
                    return
                elif isinstance(action, Failed):
                    _settle(run.result, ExchangeError(action.reason, action.detail))
                    return
                elif isinstance(action, Discarded):
                    self._discarded(action)
            if self._input:  # what came while we were writing
                data = bytes(self._input)
                self._input.clear()
                self._apply(run, run.machine.receive(data))
        except Exception as exc:  # noqa: BLE001 - whatever broke, the waiting caller gets it
            _settle(run.result, exc)

    def _done(self, run: _Run, response: Response, ack: bytes, on_the_wire: float) -> None:
        """An answer is in: ACK it, then settle the caller or start the next exchange.

        When `again` asks for another exchange, its first bytes (ENQ) go out in one write with
        the ACK: the same bytes in the same order, one wake-up of the KKT's side instead of two.
        """
        if run.settling is response:  # back after a suspended write of the ACK
            _settle(run.result, response)
            return
        run.answers.append(response)
        if run.again(response):
            run.machine = run.follow.fresh()
            start = run.machine.start()
            first = start[0]
            if ack == _ACK and first == _SEND_ENQ:
                start[0] = _SEND_ACK_ENQ  # the usual case: built once
            elif ack and isinstance(first, Send):
                start[0] = Send(ack + first.data)
            elif ack:
                start.insert(0, Send(ack))
            self._apply(run, start, on_the_wire)
            return
        run.settling = response
        if ack:
            written = self._write_now(ack)
            if written < len(ack):
                self._suspend(run, ack[written:], [Done(response)], on_the_wire)
                return
        _settle(run.result, response)

    def _arm(self, run: _Run, deadline: float) -> None:
        """Set the deadline; the timer is only re-created when it would fire too late.

        A later deadline (the usual case: the next step of the handshake) keeps the timer, which
        re-arms itself when it fires early.
        """
        run.deadline = deadline
        if self._timer is not None and self._timer.when() <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._timer_fired, deadline)

    def _timer_fired(self, when: float) -> None:
        self._timer = None
        run = self._run
        if run is None or run.result.done() or run.stalled is not None:
            return  # no exchange waiting, or one waiting on its write (it has its own timer)
        if when < run.deadline:  # the deadline moved on since this timer was set
            self._timer = self._loop.call_at(run.deadline, self._timer_fired, run.deadline)
            return
        run.deadline = float("inf")  # until the machine's next ArmTimeout
        self._apply(run, run.machine.timeout())

    # --- reading ---

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(LinkDown(f"read failed: {exc}"))
            return
        if not data:  # readable yet empty: the other end hung up
            self._fail(LinkDown(self.hung_up))
            return
        run = self._run
        if run is not None and run.stalled is None and not run.result.done():
            self._apply(run, run.machine.receive(data))
            return
        self._input += data
        if len(self._input) > MAX_BUFFERED:
            del self._input[:-MAX_BUFFERED]

    def _fail(self, error: LinkDown) -> None:
        self._error = error
        self._loop.remove_reader(self._fd)
        if self._run is not None:
            _settle(self._run.result, error)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed:
            raise LinkDown("the port is closed")

    def _drop_stale_input(self) -> None:
        """Bytes left from before this exchange belong to nobody; the ENQ recovers any answer."""
        if self._input:
            self._discarded(leftover(bytes(self._input)))
            self._input.clear()

    def _discarded(self, what: Discarded) -> None:
        if self._on_discard is not None:
            self._on_discard(what)

    # --- writing ---

    def _write_now(self, data: bytes) -> int:
        """Write what the port takes now (all of it, but for a full output queue)."""
        self._check()
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            error = LinkDown(f"write failed: {exc}")
            self._fail(error)
            raise error from exc

    def _suspend(self, run: _Run, rest: bytes, then: list[Action], on_the_wire: float) -> None:
        """The port's output queue is full: finish the write when it drains, then go on."""
        run.stalled = self._loop.call_later(WRITE_STALL, self._stall_expired, run)
        self._loop.add_writer(self._fd, self._writable, run, rest, then, on_the_wire)

    def _writable(self, run: _Run, rest: bytes, then: list[Action], wire: float) -> None:
        self._loop.remove_writer(self._fd)
        if run.stalled is not None:
            run.stalled.cancel()
            run.stalled = None
        if run.result.done():
            return
        try:
            written = self._write_now(rest)
        except LinkDown as exc:
            _settle(run.result, exc)
            return
        if written < len(rest):
            self._suspend(run, rest[written:], then, wire)
            return
        if self._timer is None and run.deadline < float("inf"):
            self._arm(run, run.deadline)  # it fired while we waited to write: the deadline holds
        self._apply(run, then, wire)

    def _stall_expired(self, run: _Run) -> None:
        run.stalled = None
        self._loop.remove_writer(self._fd)
        _settle(run.result, LinkDown(f"the port took no output for {WRITE_STALL} s"))


class _Run:
    """The exchange in progress: its machine, the caller's future, its deadline."""

    __slots__ = (
        "again",
        "answers",
        "deadline",
        "follow",
        "machine",
        "result",
        "settling",
        "stalled",
    )

    def __init__(self, machine: Exchange, result: asyncio.Future[Response]) -> None:
        self.machine = machine
        self.follow = machine  # what each exchange after the first asks (its frame built once)
        self.result = result
        self.again: Callable[[Response], bool] = _once
        self.answers: list[Response] = []
        self.settling: Response | None = None  # the last answer, its ACK being written
        self.deadline = float("inf")
        self.stalled: asyncio.TimerHandle | None = None  # waiting for room to write


def _once(_: Response) -> bool:
    """One exchange: no answer asks for another."""
    return False


def _settle(result: asyncio.Future[Response], outcome: Response | BaseException) -> None:
    if result.done():
        return
    if isinstance(outcome, BaseException):
        result.set_exception(outcome)
    else:
        result.set_result(outcome)
