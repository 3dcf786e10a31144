"""Serving an emulated KKT on a pseudo-terminal, in asyncio (SPEC section 8).

The host opens `PtyEmulator.path` like a serial port. That path is a symlink (when `link` is
given) so the port can vanish (the pty is closed: the host sees a hangup and the path is gone)
and return under the same name. Timing lives here, not in the device: the byte timeout on host
frames, the pause between the chunks the device asks for, a line throttled to a baud rate, and
documents issued at a rate.
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from kktd.emulator.device import KktDevice

log = structlog.get_logger(__name__)

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
PACE_STEP = 0.01  # a throttled line writes in slices of about this many seconds
READ_SIZE = 4096


class PtyEmulator:
    """A `KktDevice` on a pty: `await start()`, open `.path`, `await stop()` (or `async with`)."""

    def __init__(
        self,
        device: KktDevice | None = None,
        *,
        link: Path | None = None,
        baud: int | None = None,
        rate_per_second: float = 0.0,
        pause: float = 0.2,
        byte_timeout: float = 0.1,
    ) -> None:
        self.device = device if device is not None else KktDevice()
        self.link = link
        self.baud = baud  # None: as fast as the pty goes; may be changed at any time
        self.rate_per_second = rate_per_second
        self.pause = pause  # between the device's chunks: longer than the host's byte timeout
        self.byte_timeout = byte_timeout
        self.pty_name: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._out: asyncio.Queue[tuple[bool, bytes]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._issuer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # to await them on stop
        self._frame_timer: asyncio.TimerHandle | None = None

    @property
    def path(self) -> Path:
        """What the host opens: the stable link, or the pty itself when there is no link."""
        if self.link is not None:
            return self.link
        if self.pty_name is None:
            raise RuntimeError("the emulator is not serving a pty")
        return Path(self.pty_name)

    @property
    def serving(self) -> bool:
        return self._master is not None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._open()
        if self.rate_per_second > 0:
            self.issue_at_rate(self.rate_per_second)
        log.info("emulator.started", path=str(self.path), pty=self.pty_name, fn=self.device.fn)

    async def stop(self) -> None:
        self.stop_issuing()
        self._close()
        if self.link is not None:
            self.link.unlink(missing_ok=True)
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
        """The port goes away: the pty is closed under the host and the link removed."""
        self._close()
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        log.info("emulator.vanished", path=str(self.link or ""))

    def reappear(self) -> None:
        """The port comes back: a new pty behind the same link."""
        if self.serving:
            raise RuntimeError("the port is already there")
        self._open()
        log.info("emulator.reappeared", path=str(self.path), pty=self.pty_name)

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

    # --- the pty -----------------------------------------------------------------------------

    def _open(self) -> None:
        master, slave = os.openpty()
        # Raw on our side too: no echo, no line editing, no CR/LF translation of frame bytes.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_name = os.ttyname(slave)
        if self.link is not None:
            fresh = self.link.with_name(f".{self.link.name}.new")
            fresh.unlink(missing_ok=True)
            fresh.symlink_to(self.pty_name)
            fresh.replace(self.link)  # atomic: the host never sees a half-made link
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._on_readable)
        self._writer = self._spawn(self._write_loop())

    def _spawn(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        while not self._out.empty():
            self._out.get_nowait()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        self.device.byte_timeout()  # a frame cut by the hangup is gone

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no one holds the slave side (cannot happen while we do)
            log.warning("emulator.read_failed", error=str(exc))
            return
        for index, chunk in enumerate(self.device.feed(data)):
            self._out.put_nowait((index > 0, chunk))
        self._arm_frame_timer()

    def _arm_frame_timer(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if self.device.receiving:
            loop = asyncio.get_running_loop()
            self._frame_timer = loop.call_later(self.byte_timeout, self.device.byte_timeout)

    async def _write_loop(self) -> None:
        while True:
            paused, chunk = await self._out.get()
            if paused:
                await asyncio.sleep(self.pause)
            await self._write(chunk)

    async def _write(self, data: bytes) -> None:
        """Write all of `data`, paced to `baud` when set."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while sent < len(data):
            step = len(data) if self.baud is None else max(1, int(self.baud * PACE_STEP / 10))
            sent += await self._write_some(data[sent : sent + step])
            if self.baud is not None:
                await asyncio.sleep(
                    max(0.0, started + sent * BITS_PER_BYTE / self.baud - loop.time())
                )

    async def _write_some(self, data: bytes) -> int:
        master = self._master
        assert master is not None  # _close cancels this task before closing the pty
        try:
            return os.write(master, data)
        except BlockingIOError:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_writer(master, wake)
            try:
                await ready  # the host reads slower than we write: wait for room
            finally:
                loop.remove_writer(master)
            return 0
