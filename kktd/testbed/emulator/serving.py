"""What every way of serving an emulated KKT shares: the line's timing and its faults.

A `Serving` feeds what the host writes on one file descriptor (a pty's master side, or one
accepted TCP connection) to the `KktDevice` and writes the device's answers back. Timing lives
here, not in the device: the byte timeout on host frames, the pause between the chunks the
device asks for, a line throttled to a baud rate, and documents issued at a rate. So do the
faults of the line itself: the port vanishing and coming back, a KKT that hangs without closing
anything (`freeze`), and the periodic faults (`busy_every`, `bad_lrc_every`). `pty.py` and
`tcp.py` only open, attach and release the descriptor.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from types import TracebackType
from typing import Self

import structlog

from kktd.testbed.emulator.device import KktDevice

log = structlog.get_logger(__name__)

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
PACE_STEP = 0.01  # a throttled line writes in slices of about this many seconds
READ_SIZE = 4096


class Serving:
    """A `KktDevice` on a line: `await start()`, point kktd at `.port`, `await stop()`."""

    def __init__(
        self,
        device: KktDevice | None = None,
        *,
        baud: int | None = None,
        rate_per_second: float = 0.0,
        pause: float = 0.2,
        byte_timeout: float = 0.1,
    ) -> None:
        self.device = device if device is not None else KktDevice()
        self.baud = baud  # None: as fast as the line goes; may be changed at any time
        self.rate_per_second = rate_per_second
        self.pause = pause  # between the device's chunks: longer than the host's byte timeout
        self.byte_timeout = byte_timeout
        self.busy_every = 0  # every n-th host frame answered busy (0: never)
        self.bad_lrc_every = 0  # every n-th answer to a host frame sent with a wrong LRC
        self.ff_after_ack = False  # a stray FF after each host ACK, as over RNDIS/TCP (SPEC 1)
        self.frozen = False
        self._line: int | None = None  # the descriptor being served
        self._armed_for = 0  # the host frame the periodic faults were last armed for
        self._out: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._issuer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # to await them on stop
        self._frame_timer: asyncio.TimerHandle | None = None

    @property
    def port(self) -> str:
        """The `kkt.port` value that reaches this KKT."""
        raise NotImplementedError

    @property
    def serving(self) -> bool:
        """The port is there (it may still be frozen)."""
        raise NotImplementedError

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._open()
        if self.rate_per_second > 0:
            self.issue_at_rate(self.rate_per_second)
        log.info("emulator.started", port=self.port, fn=self.device.fn)

    async def stop(self) -> None:
        self.stop_issuing()
        if self.serving:
            self._close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("emulator.stopped", fds=self.device.last_fd)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def vanish(self) -> None:
        """The port goes away (the cable is pulled, the KKT is switched off)."""
        self._close()
        log.info("emulator.vanished", port=self.port)

    def reappear(self) -> None:
        """The port comes back under the same name."""
        if self.serving:
            raise RuntimeError("the port is already there")
        self._open()
        log.info("emulator.reappeared", port=self.port)

    def freeze(self) -> None:
        """The KKT hangs: the line stays open, nothing is read or answered."""
        self.frozen = True
        if self._line is not None:
            asyncio.get_running_loop().remove_reader(self._line)
        self._drop_output()
        log.info("emulator.frozen", port=self.port)

    def thaw(self) -> None:
        self.frozen = False
        if self._line is not None:
            asyncio.get_running_loop().add_reader(self._line, self._on_readable, self._line)
        log.info("emulator.thawed", port=self.port)

    # --- documents ---------------------------------------------------------------------------

    def issue_at_rate(self, rate_per_second: float, count: int | None = None) -> asyncio.Task[None]:
        """Issue FDs in the background (all of `count`, or until stopped); await the task."""
        self.stop_issuing()
        self._issuer = self._spawn(self._issue(rate_per_second, count))
        return self._issuer

    def stop_issuing(self) -> None:
        if self._issuer is not None:
            self._issuer.cancel()
            self._issuer = None

    async def _issue(self, rate_per_second: float, count: int | None) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate_per_second
        due = loop.time() + interval
        issued = 0
        while count is None or issued < count:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.device.issue()
            issued += 1
            due += interval

    # --- the line ----------------------------------------------------------------------------

    def _attach(self, line: int) -> None:
        """Serve `line` (a non-blocking descriptor) from now on."""
        self._line = line
        if not self.frozen:
            asyncio.get_running_loop().add_reader(line, self._on_readable, line)
        self._writer = self._spawn(self._write_loop(line))

    def _detach(self) -> None:
        """Stop serving the line (the caller closes it); a frame cut by this is gone."""
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._drop_output()
        if self._line is not None:
            asyncio.get_running_loop().remove_reader(self._line)
            self._line = None
        self.device.byte_timeout()

    def _hung_up(self, line: int, why: str) -> None:
        """The host's end of `line` is gone; a pty cannot get here while we hold its slave."""
        log.warning("emulator.read_failed", error=why)

    def _drop_output(self) -> None:
        while not self._out.empty():
            self._out.get_nowait()

    def _spawn(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_readable(self, line: int) -> None:
        try:
            data = os.read(line, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._hung_up(line, str(exc))
            return
        if not data:
            self._hung_up(line, "end of input")
            return
        self._arm_periodic_faults()
        acks = self.device.stats["ack"]
        chunks = self.device.feed(data)
        if self.ff_after_ack and (stray := self.device.stats["ack"] - acks):
            chunks = [b"\xff" * stray + (chunks[0] if chunks else b""), *chunks[1:]]
        for index, chunk in enumerate(chunks):
            self._out.put_nowait((index > 0, chunk))
        self._arm_frame_timer()

    def _arm_periodic_faults(self) -> None:
        """Before the n-th host frame completes, set the one-shot switch that answers it."""
        upcoming = self.device.stats["frames"] + 1
        if upcoming == self._armed_for:
            return
        self._armed_for = upcoming
        faults = self.device.faults
        if self.busy_every and upcoming % self.busy_every == 0:
            faults.busy = max(faults.busy, 1)
        if self.bad_lrc_every and upcoming % self.bad_lrc_every == 0:
            faults.bad_lrc = max(faults.bad_lrc, 1)

    def _arm_frame_timer(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self.device.receiving:
            loop = asyncio.get_running_loop()
            self._frame_timer = loop.call_later(self.byte_timeout, self.device.byte_timeout)

    async def _write_loop(self, line: int) -> None:
        try:
            while True:
                paused, chunk = await self._out.get()
                if paused:
                    await asyncio.sleep(self.pause)
                await self._write(line, chunk)
        except OSError as exc:  # the host went away while we answered (TCP: EPIPE, ECONNRESET)
            asyncio.get_running_loop().call_soon(self._hung_up, line, str(exc))

    async def _write(self, line: int, data: bytes) -> None:
        """Write all of `data`, paced to `baud` when set."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while sent < len(data):
            step = len(data) if self.baud is None else max(1, int(self.baud * PACE_STEP / 10))
            sent += await self._write_some(line, data[sent : sent + step])
            if self.baud is not None:
                await asyncio.sleep(
                    max(0.0, started + sent * BITS_PER_BYTE / self.baud - loop.time())
                )

    async def _write_some(self, line: int, data: bytes) -> int:
        # _detach cancels this task before the line is closed
        try:
            return os.write(line, data)
        except BlockingIOError:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_writer(line, wake)
            try:
                await ready  # the host reads slower than we write: wait for room
            finally:
                loop.remove_writer(line)
            return 0
