"""The sender pool: `max_in_flight` senders fed from one queue, batch after batch (issue 14).

The engine claims a batch and queues its FDs; while they are in flight it claims the next batch
and queues that too, so a sender that finishes takes the next FD at once: no tail of a round with
idle slots, and no task per delivery. Each FD is asked `may_start` (lease, breaker, stop rules)
right before it is sent; one that may not is dropped unsent (a claim marks nothing, so a dropped
FD is simply claimed again later). A batch is done when each of its FDs was sent or dropped; the
engine then records the batch's outcomes, while the senders go on with the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from kktd.journal import Outgoing

T = TypeVar("T")


@dataclass(eq=False)
class Batch(Generic[T]):
    """One claim's FDs, in (fn, fd) order, and what their deliveries say (`tally`)."""

    index: int  # 0, 1, ... within one hold of the lock
    entries: list[Outgoing]
    tally: T
    started_at: float
    sent: int = 0  # FDs the pool started (the rest were dropped)
    left: int = 0  # FDs neither sent nor dropped yet
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.left = len(self.entries)
        if not self.entries:
            self.done.set()

    def finish_one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


class SenderPool(Generic[T]):
    """`width` sender tasks taking (batch, FD) pairs from one queue, in order.

    `cancel_others` (a 412: the FN is someone else's now) cancels the deliveries in flight but
    the caller's; the senders left drop what is queued. Leaving `async with` by an exception (or
    a cancellation) cancels every sender and lets the exception go on as it is; a bug in a sender
    is raised when the pool is left.
    """

    def __init__(
        self,
        width: int,
        *,
        may_start: Callable[[Batch[T]], bool],
        send: Callable[[Batch[T], Outgoing], Awaitable[None]],
    ) -> None:
        self._width = max(1, width)
        self._may_start = may_start
        self._send = send
        self._queue: asyncio.Queue[tuple[Batch[T], Outgoing] | None] = asyncio.Queue()
        self._senders: list[asyncio.Task[None]] = []
        self._error: Exception | None = None
        self._sending = 0  # senders with a delivery in flight
        self._closing = False  # left by an exception: a sender takes nothing more

    def add(self, batch: Batch[T]) -> None:
        """Queue a batch's FDs behind those already queued."""
        for entry in batch.entries:
            self._queue.put_nowait((batch, entry))

    @property
    def broken(self) -> bool:
        """A sender failed (a bug): queue nothing more; leaving the pool raises it."""
        return self._error is not None

    def cancel_others(self) -> None:
        """Cancel every sender but the calling one (and so the delivery it has in flight)."""
        me = asyncio.current_task()
        for sender in self._senders:
            if sender is not me:
                sender.cancel()

    async def __aenter__(self) -> SenderPool[T]:
        self._senders = [
            asyncio.create_task(self._sender(), name=f"sync-sender-{n}") for n in range(self._width)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            for _ in self._senders:
                self._queue.put_nowait(None)  # each sender still there ends at one
        else:
            # On 3.11 a cancellation that lands as an HTTP timeout expires can be lost (the
            # timeout's uncancel swallows it): such a sender finishes its delivery and comes
            # back for more. It must find nothing, or the pool would wait for it forever.
            self._closing = True
            for sender in self._senders:
                sender.cancel()
                self._queue.put_nowait(None)
            if self._sending == 0:
                # idle senders hold nothing: their cancellation needs no wait, and the error
                # reaches the caller with no loop turn in between
                return
        await asyncio.wait(self._senders)
        if exc is None and self._error is not None:
            raise self._error

    async def _sender(self) -> None:
        while not self._closing and (item := await self._queue.get()) is not None:
            batch, entry = item
            try:
                if self._error is None and self._may_start(batch):
                    batch.sent += 1
                    self._sending += 1
                    try:
                        await self._send(batch, entry)
                    finally:
                        self._sending -= 1
            except Exception as exc:  # noqa: BLE001 - a bug: kept for the pool's owner
                self._error = self._error or exc
                self.cancel_others()
            finally:
                batch.finish_one()
