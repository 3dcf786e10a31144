"""What the poller asks of a KKT: the line to it kept up, and over it the FN's state, its OFD
backlog, one FD read whole.

Typing only. `KktConnection` is the line (Shtrih-M: `kktd.kkt.link.KktLink`, over a serial port
or TCP); `Kkt` is the protocol spoken over it (Shtrih-M: `kktd.kkt.fd_read.FdReader`). A second
vendor brings one of each, answering with the same dataclasses (`FnStatus`, `OfdStatus`) and
raising the link's errors (`KktError`, `LinkError`, `ProtocolError`), and is handed to the
poller by the wiring (`Poller(connection, ..., kkt=...)`): the poller, the journal and the sync
loop stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from kktd.kkt.commands import FnStatus, OfdStatus

if TYPE_CHECKING:
    from kktd.kkt.link import LinkState


class KktConnection(Protocol):
    """The line to one KKT as the poller keeps it up: connected or not, why, one user at a time."""

    @property
    def connected(self) -> bool: ...

    @property
    def state(self) -> LinkState:
        """Connected or not, since when, the last error, the device, when to try again."""
        ...

    async def connect(self) -> object:
        """Open the line and greet the KKT; raises the link's errors when it cannot."""
        ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Hold the line for a sequence of requests nobody else may come between."""
        ...


class Kkt(Protocol):
    """One KKT as the poller reads it; `beat` is called while a busy KKT is waited out."""

    beat: Callable[[], None]

    async def fn_status(self) -> FnStatus:
        """The FN's number, phase, flags and last FD (Shtrih-M: FF01)."""
        ...

    async def ofd_status(self) -> OfdStatus:
        """The FN's own backlog toward the OFD (Shtrih-M: FF39)."""
        ...

    async def read_document(self, fn: str, fd: int) -> tuple[int, bytes]:
        """FD `fd` whole: its document type and raw bytes (Shtrih-M: FF3A, FF3B until 08)."""
        ...
