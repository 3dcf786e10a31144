"""The OFD relay's commands and the OFD session header, pure (SPEC section 9).

The FN prepares its messages for the OFD itself; when the KKT exchanges "through the driver" a
program on the PC carries them: FF30 says how many bytes wait, FF31 reads them block by block,
FF32 announces the size of the OFD's answer and FF33 writes it back block by block. 1F reads a
field of the KKT's settings tables (the OFD server, the exchange mode). Messages are opaque to
kktd except for the 30-byte session header every message and every answer starts with, which
carries the body length the relay needs to know where the OFD's answer ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from kktd.kkt.commands import PayloadError
from kktd.kkt.frames import MAX_BODY


class OfdCommand(IntEnum):
    READ_TABLE = 0x1F
    BUFFER_STATUS = 0xFF30
    READ_BLOCK = 0xFF31
    START_ANSWER = 0xFF32
    WRITE_BLOCK = 0xFF33


# FN error "the OFD's message cannot be accepted": an answer the FN refuses after FF33.
ANSWER_REJECTED = 0x20

# A frame body holds 255 bytes: FF31's answer spends 3 on command and error byte, FF33's
# request 9 on command, password, offset and size. Blocks never exceed these, whatever the FN
# says its block size is.
MAX_READ_BLOCK = MAX_BODY - 3
MAX_WRITE_BLOCK = MAX_BODY - 9
# FF30 and FF32 carry sizes as u16: no message and no answer can be longer.
MAX_MESSAGE = 0xFFFF

# Settings tables (1F): the exchange mode (0 = through the driver, the case the relay is for)
# and the OFD server the KKT itself would use.
EXCHANGE_MODE_FIELD = (21, 1, 2)
OFD_SERVER_FIELD = (19, 1, 1)
OFD_PORT_FIELD = (19, 1, 2)


def _unpack(layout: struct.Struct, data: bytes, what: str) -> tuple[int, ...]:
    if len(data) != layout.size:
        raise PayloadError(f"{what} needs {layout.size} bytes, got {len(data)}")
    return layout.unpack(data)


def _pack(layout: struct.Struct, what: str, *values: int | bytes) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise PayloadError(f"{what}: {exc}") from None


_BUFFER_STATUS = struct.Struct("<HB")
_BLOCK = struct.Struct("<HB")  # offset, size (FF31, FF33)
_SIZE = struct.Struct("<H")
_BLOCK_SIZE = struct.Struct("<B")
_TABLE = struct.Struct("<BHB")


@dataclass(frozen=True, slots=True)
class BufferStatus:
    """FF30 answer: bytes of the FN's message waiting for the OFD, and the block size to read."""

    pending: int
    block_size: int

    def encode(self) -> bytes:
        return _pack(_BUFFER_STATUS, "FF30 answer", self.pending, self.block_size)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        # Some firmware appends reserved bytes: only the first three are ours.
        if len(data) < _BUFFER_STATUS.size:
            raise PayloadError(f"FF30 answer needs 3 bytes, got {len(data)}")
        return cls(*_BUFFER_STATUS.unpack_from(data))


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """FF31 request: `size` bytes of the message from `offset`; the answer is the bytes."""

    offset: int
    size: int

    def encode(self) -> bytes:
        return _pack(_BLOCK, "FF31 request", self.offset, self.size)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*_unpack(_BLOCK, data, "FF31 request"))


@dataclass(frozen=True, slots=True)
class StartAnswer:
    """FF32 request: the OFD's answer of `size` bytes follows in FF33 blocks."""

    size: int

    def encode(self) -> bytes:
        return _pack(_SIZE, "FF32 request", self.size)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*_unpack(_SIZE, data, "FF32 request"))


@dataclass(frozen=True, slots=True)
class AnswerBlockSize:
    """FF32 answer: the largest FF33 block the FN takes."""

    block_size: int

    def encode(self) -> bytes:
        return _pack(_BLOCK_SIZE, "FF32 answer", self.block_size)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if not data:
            raise PayloadError("FF32 answer needs 1 byte, got 0")
        return cls(data[0])


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """FF33 request: `data` of the OFD's answer at `offset` (on the wire: offset, size, data)."""

    offset: int
    data: bytes

    def encode(self) -> bytes:
        if len(self.data) > MAX_WRITE_BLOCK:
            raise PayloadError(f"FF33 block of {len(self.data)} bytes, at most {MAX_WRITE_BLOCK}")
        return _pack(_BLOCK, "FF33 request", self.offset, len(self.data)) + self.data

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if len(data) < _BLOCK.size:
            raise PayloadError(f"FF33 request needs at least 3 bytes, got {len(data)}")
        offset, size = _BLOCK.unpack_from(data)
        block = data[_BLOCK.size :]
        if len(block) != size:
            raise PayloadError(f"FF33 request announces {size} bytes, carries {len(block)}")
        return cls(offset, block)


@dataclass(frozen=True, slots=True)
class TableField:
    """1F request: one field of a settings table; the answer is the field's bytes."""

    table: int
    row: int
    field: int

    def encode(self) -> bytes:
        return _pack(_TABLE, "1F request", self.table, self.row, self.field)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*_unpack(_TABLE, data, "1F request"))


def blocks(total: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, size) of each block covering `total` bytes; offsets fit FF31/FF33's u16."""
    if block_size < 1:
        raise PayloadError(f"block size must be at least 1, got {block_size}")
    if not 0 <= total <= MAX_MESSAGE:
        raise PayloadError(f"{total} bytes do not fit a u16 size")
    return [(offset, min(block_size, total - offset)) for offset in range(0, total, block_size)]


# --- the session header ----------------------------------------------------------------------

SIGNATURE = bytes([0x2A, 0x08, 0x41, 0x0A])
HEADER_SIZE = 30
# signature, session and application protocol versions, FN number, body length, flags, CRC
_HEADER = struct.Struct("<4sHH16sHHH")
BODY_LENGTH_AT = 24
MAX_SESSION_BODY = MAX_MESSAGE - HEADER_SIZE


class SessionError(PayloadError):
    """Bytes that are not a well-formed OFD session message."""


@dataclass(frozen=True, slots=True)
class SessionHeader:
    """The 30 bytes in front of every message between FN and OFD.

    kktd reads only the body length (to know where an answer ends) and the FN number (for the
    audit); the other fields are kept as read, never checked or recomputed, so nothing kktd
    writes back differs from what the OFD sent.
    """

    session_version: int
    app_version: int
    fn: str
    body_length: int
    flags: int
    crc: int

    def encode(self) -> bytes:
        try:
            fn = self.fn.encode("ascii")
        except UnicodeEncodeError:
            raise SessionError(f"FN number {self.fn!r} is not ASCII") from None
        if len(fn) > 16:
            raise SessionError(f"FN number {self.fn!r} is longer than 16 characters")
        return _pack(
            _HEADER,
            "session header",
            SIGNATURE,
            self.session_version,
            self.app_version,
            fn,
            self.body_length,
            self.flags,
            self.crc,
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and check the first 30 bytes of `data` (more may follow: the body)."""
        if len(data) < HEADER_SIZE:
            raise SessionError(f"session header needs {HEADER_SIZE} bytes, got {len(data)}")
        signature, session, app, fn, length, flags, crc = _HEADER.unpack_from(data)
        if signature != SIGNATURE:
            raise SessionError(f"bad session signature {signature.hex(' ')}")
        fn_text = fn.decode("ascii", errors="replace").rstrip("\x00 ")
        return cls(session, app, fn_text, length, flags, crc)


# Example versions for messages kktd itself makes up (the emulator, the mock OFD); the real
# values belong to the FN and the OFD and pass through kktd untouched.
SESSION_VERSION = 0xA281
APP_VERSION = 0x0001


def session_message(fn: str, body: bytes, *, flags: int = 0) -> bytes:
    """A well-formed session message: header for `fn` and `body`, then the body."""
    if len(body) > MAX_SESSION_BODY:
        raise SessionError(f"body of {len(body)} bytes, at most {MAX_SESSION_BODY}")
    header = SessionHeader(SESSION_VERSION, APP_VERSION, fn, len(body), flags, 0)
    return header.encode() + body


def split_session(data: bytes) -> tuple[SessionHeader, bytes]:
    """Header and body of one whole message; its length must be what the header says."""
    header = SessionHeader.decode(data)
    body = data[HEADER_SIZE:]
    if len(body) != header.body_length:
        raise SessionError(
            f"header announces a {header.body_length}-byte body, {len(body)} bytes follow"
        )
    return header, body
