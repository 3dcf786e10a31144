"""Serving an emulated KKT on a pseudo-terminal, in asyncio (SPEC section 8).

The host opens `PtyEmulator.path` like a serial port. That path is a symlink (when `link` is
given) so the port can vanish (the pty is closed: the host sees a hangup and the path is gone)
and return under the same name. The line's timing and faults are `Serving`'s.
"""

from __future__ import annotations

import os
import tty
from pathlib import Path

from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.serving import Serving


class PtyEmulator(Serving):
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
        super().__init__(
            device,
            baud=baud,
            rate_per_second=rate_per_second,
            pause=pause,
            byte_timeout=byte_timeout,
        )
        self.link = link
        self.pty_name: str | None = None
        self._master: int | None = None
        self._slave: int | None = None

    @property
    def path(self) -> Path:
        """What the host opens: the stable link, or the pty itself when there is no link."""
        if self.link is not None:
            return self.link
        if self.pty_name is None:
            raise RuntimeError("the emulator is not serving a pty")
        return Path(self.pty_name)

    @property
    def port(self) -> str:
        return str(self.path)

    @property
    def serving(self) -> bool:
        return self._master is not None

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
        self._attach(master)

    def _close(self) -> None:
        self._detach()
        if self._master is not None:
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link is not None:
            self.link.unlink(missing_ok=True)
