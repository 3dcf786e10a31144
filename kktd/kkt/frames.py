"""Shtrih-M standard protocol (v1) frames, pure: STX LEN body LRC, the LRC, the frame parser.

No serial port, no asyncio and no clock in here (the h11 way): bytes go in, events come out.
The handshake (`handshake.py`) and the emulator's device side parse with the same
`FrameParser`; what a frame body means is `commands.py`'s. SPEC section 1 is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STX, ENQ, ACK, NAK = 0x02, 0x05, 0x06, 0x15
CONTROL_BYTES = frozenset({ENQ, ACK, NAK})
MAX_BODY = 255
MAX_FRAME = MAX_BODY + 3  # STX LEN body LRC


class ProtocolError(Exception):
    """Base of every error the protocol core raises."""


class FrameError(ProtocolError):
    """A frame or frame body that cannot be what the protocol allows."""


def lrc(data: bytes) -> int:
    """XOR of the bytes given (the frame checksum runs over LEN and the body).

    Folded as one integer (halves XORed together until a byte is left): a 255-byte body costs
    8 big-int steps instead of 255 interpreted ones, on every frame read.
    """
    size = len(data)
    if size <= 1:
        return data[0] if size else 0
    value = int.from_bytes(data)
    width = 1 << (size - 1).bit_length()  # bytes, a power of two >= size (zero-padded above)
    while width > 1:
        width >>= 1
        bits = width * 8
        value = (value >> bits) ^ (value & ((1 << bits) - 1))
    return value


def encode_frame(body: bytes) -> bytes:
    """CMD+DATA -> STX LEN body LRC."""
    if not 1 <= len(body) <= MAX_BODY:
        raise FrameError(f"frame body must be 1..{MAX_BODY} bytes, got {len(body)}")
    head = bytes([len(body)]) + body
    return bytes([STX]) + head + bytes([lrc(head)])


# --- incremental frame parser ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlByte:
    value: int


@dataclass(frozen=True, slots=True)
class Frame:
    body: bytes


@dataclass(frozen=True, slots=True)
class BadFrame:
    body: bytes
    reason: Literal["bad_lrc", "zero_length"]


@dataclass(frozen=True, slots=True)
class Noise:
    data: bytes


Event = ControlByte | Frame | BadFrame | Noise


class FrameParser:
    """Splits a byte stream into control bytes, frames, bad frames and noise.

    Holds at most one frame body (255 bytes), whatever it is fed. A frame cut short is only
    noticed by the byte timeout, which lives with the caller: it calls `reset()`.
    """

    def __init__(self) -> None:
        self._length: int | None = None  # None: outside a frame; -1: STX seen, LEN not yet
        self._body = bytearray()

    @property
    def busy(self) -> bool:
        """Inside a frame: the byte timeout applies."""
        return self._length is not None

    @property
    def buffered(self) -> int:
        """Bytes held for the frame in progress (STX and LEN included)."""
        if self._length is None:
            return 0
        return 1 + (self._length >= 0) + len(self._body)

    def reset(self) -> None:
        """Drop a frame in progress (the byte timeout expired)."""
        self._length = None
        self._body.clear()

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by `data`, in order.

        A frame's body is taken by slices, not byte by byte: an answer that arrives whole (the
        usual case) costs a few steps whatever its length. Bytes outside a frame are scanned one
        by one, as noise is rare and every control byte there is an event.
        """
        events: list[Event] = []
        size = len(data)
        at = 0
        while at < size:
            length = self._length
            if length is None:
                at = self._between_frames(data, at, events)
            elif length == -1:  # STX seen: this is LEN
                if data[at] == 0:
                    self.reset()
                    events.append(BadFrame(b"", "zero_length"))
                else:
                    self._length = data[at]
                at += 1
            else:
                at = self._in_frame(data, at, length, events)
        return events

    def _between_frames(self, data: bytes, at: int, events: list[Event]) -> int:
        byte = data[at]
        if byte == STX:
            self._length = -1
            return at + 1
        if byte in CONTROL_BYTES:
            events.append(_CONTROL_EVENTS[byte])
            return at + 1
        end = at + 1
        size = len(data)
        while end < size and data[end] != STX and data[end] not in CONTROL_BYTES:
            end += 1
        events.append(Noise(bytes(data[at:end])))
        return end

    def _in_frame(self, data: bytes, at: int, length: int, events: list[Event]) -> int:
        """Body bytes, then the LRC: where the frame ends in `data`, or `len(data)`."""
        body = self._body
        missing = length - len(body)
        if missing:
            piece = data[at : at + missing]
            body += piece
            at += len(piece)
            if at == len(data):
                return at  # the rest of the body, or the LRC, comes in a later read
        check = data[at]
        whole = bytes(body)
        good = lrc(bytes((length,)) + whole) == check
        self.reset()
        events.append(Frame(whole) if good else BadFrame(whole, "bad_lrc"))
        return at + 1


_CONTROL_EVENTS = {value: ControlByte(value) for value in CONTROL_BYTES}  # frozen: shared
