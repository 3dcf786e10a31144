"""One FD out of the FN (SPEC section 1): the FF3B answers joined into the bytes FF3A announced.

FF3B answers are a byte stream, the way Shtrih-M's own drivers read them: usually one whole TLV
per answer, but a TLV longer than one frame can carry (a 1084 additional requisite with a
256-byte 1086 value is 332 bytes; a frame holds 252 bytes of data) arrives in pieces. So the
pieces are joined as they come, the total is checked against FF3A's length once FF3B says 08,
and only then is the run of TLVs parsed. The FD's own 1040 and 1041 must name the FD and the FN
that were asked for: a KKT that answers for another document is read again, never believed.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from kktd.kkt.commands import DocumentInfo
from kktd.kkt.frames import ProtocolError
from kktd.kkt.tlv import TlvError, identity


class DocumentStreamError(ProtocolError):
    """The answers do not add up to the FD FF3A announced: read it again from FF3A."""


class IdentityMismatch(DocumentStreamError):  # noqa: N818 - reads as what the KKT did
    """The FD read names another FD or another FN in its 1040/1041."""


class DocumentStream:
    """The FF3B answers of FD `fd` of FN `fn`, after FF3A answered `info`."""

    def __init__(self, fn: str, fd: int, info: DocumentInfo) -> None:
        self.fn = fn
        self.fd = fd
        self.info = info
        self.answers = 0
        self._data = bytearray()

    @property
    def received(self) -> int:
        return len(self._data)

    def add(self, piece: bytes) -> None:
        """One FF3B answer's data; raises as soon as the stream outgrows FF3A's length.

        Each answer must carry something, so a document is read in at most `info.length`
        answers: a KKT that never says 08 cannot keep the read going.
        """
        self.answers += 1
        if not piece:
            raise DocumentStreamError(f"FD {self.fd}: FF3B answer {self.answers} carries no data")
        if len(self._data) + len(piece) > self.info.length:
            raise DocumentStreamError(
                f"FD {self.fd}: {len(self._data) + len(piece)} bytes after {self.answers}"
                f" FF3B answers, FF3A said {self.info.length}"
            )
        self._data += piece

    def finish(self) -> bytes:
        """FF3B said 08: the FD's TLV bytes, checked whole and for identity."""
        raw = bytes(self._data)
        if len(raw) != self.info.length:
            # an answer lost or read twice on the line, or a document cut short
            raise DocumentStreamError(
                f"FD {self.fd}: {len(raw)} bytes in {self.answers} FF3B answers,"
                f" FF3A said {self.info.length}"
            )
        try:
            found = identity(raw)
        except TlvError as exc:
            raise DocumentStreamError(f"FD {self.fd}: the TLVs do not parse: {exc}") from exc
        # A tag that is absent cannot disagree: only a different number is another document.
        if (found.fd is not None and found.fd != self.fd) or (
            found.fn is not None and found.fn != self.fn
        ):
            raise IdentityMismatch(
                f"FD {self.fd} of FN {self.fn} asked, the KKT answered with"
                f" FD {found.fd} of FN {found.fn} (1040/1041)"
            )
        return raw
