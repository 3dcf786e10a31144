"""What the poller asks of a KKT: the FN's state, its OFD backlog, one FD read whole.

Typing only. `kktd.kkt.fd_read.FdReader` is the Shtrih-M side; a second vendor's protocol
would be another class with these methods, answering with the same dataclasses (`FnStatus`,
`OfdStatus`) and raising the link's errors (`KktError`, `LinkError`, `ProtocolError`), so the
poller, the journal and the sync loop stay as they are. Connecting, the link's state and
`exclusive()` are still `KktLink`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kktd.kkt.commands import FnStatus, OfdStatus


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
