"""Shtrih-M commands, pure: codes, error bytes, request and answer bodies, typed payloads.

What a frame body (`frames.py`) carries: the command (FN commands go FF-prefixed), the password,
the error byte of an answer, and the typed data of the answers kktd reads (FC, FF01, FF39, FF3A,
FF0A). Shared by the host (link, poller) and the emulator's device side. SPEC section 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Self

from kktd.kkt.frames import FrameError, ProtocolError

DEFAULT_PASSWORD = 30
STATUS_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 30.0


class PayloadError(ProtocolError):
    """Response data too short or malformed for the command's typed payload."""


class Command(IntEnum):
    DEVICE_TYPE = 0xFC
    FN_STATUS = 0xFF01
    FIND_FD = 0xFF0A
    OFD_STATUS = 0xFF39
    OPEN_FD_TLV = 0xFF3A
    READ_TLV = 0xFF3B


class ErrorCode(IntEnum):
    OK = 0x00
    WRONG_FN_STATE = 0x02
    NO_DATA = 0x08
    NO_TRANSPORT = 0x11
    OFD_STORAGE_EXHAUSTED = 0x14
    BAD_PARAMETERS = 0x33
    NOT_SUPPORTED = 0x37
    PRINTING = 0x50
    PRINTING_CONTINUES = 0x58


BUSY_ERRORS = frozenset({ErrorCode.PRINTING, ErrorCode.PRINTING_CONTINUES})
STATUS_COMMANDS = frozenset(
    {Command.DEVICE_TYPE, Command.FN_STATUS, Command.OFD_STATUS, Command.FIND_FD}
)
NO_PASSWORD = frozenset({Command.DEVICE_TYPE})


def error_name(code: int) -> str:
    """The error byte by name: "no_data", … or "unknown_0x4f"."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"unknown_0x{code:02x}"


def answer_timeout(cmd: int) -> float:
    """How long the KKT may take to answer: short for status commands, long for the rest."""
    return STATUS_TIMEOUT if cmd in STATUS_COMMANDS else DEFAULT_TIMEOUT


def command_bytes(cmd: int) -> bytes:
    """0xFC -> b"\\xfc"; 0xFF01 -> b"\\xff\\x01" (FN commands go high byte first)."""
    if 0 <= cmd < 0xFF:
        return bytes([cmd])
    if 0xFF00 <= cmd <= 0xFFFF:
        return cmd.to_bytes(2, "big")
    raise FrameError(f"not a Shtrih-M command code: {cmd:#x}")


def split_command(body: bytes) -> tuple[int, bytes]:
    if not body:
        raise FrameError("empty frame body")
    if body[0] != 0xFF:
        return body[0], body[1:]
    if len(body) < 2:
        raise FrameError("FN command cut after its FF prefix")
    return 0xFF00 | body[1], body[2:]


@dataclass(frozen=True, slots=True)
class Request:
    cmd: int
    password: int | None
    data: bytes


@dataclass(frozen=True, slots=True)
class Response:
    cmd: int
    error: int
    data: bytes


def encode_request(cmd: int, password: int | None, data: bytes = b"") -> bytes:
    """The frame body of a request: command bytes, the 4-byte password if any, data."""
    pwd = b"" if password is None else struct.pack("<I", password)
    return command_bytes(cmd) + pwd + data


def decode_request(body: bytes) -> Request:
    """Device side: FC carries no password, every other command starts with one."""
    cmd, rest = split_command(body)
    if cmd in NO_PASSWORD:
        return Request(cmd, None, rest)
    if len(rest) < 4:
        raise FrameError(f"request {cmd:#x} without its 4-byte password")
    return Request(cmd, struct.unpack_from("<I", rest)[0], rest[4:])


def encode_response(cmd: int, error: int, data: bytes = b"") -> bytes:
    """The frame body of an answer; an error answer carries no data."""
    if error and data:
        raise FrameError("an error answer carries only the command and the error byte")
    return command_bytes(cmd) + bytes([error]) + data


def decode_response(body: bytes) -> Response:
    cmd, rest = split_command(body)
    if not rest:
        raise FrameError(f"answer to {cmd:#x} without its error byte")
    return Response(cmd, rest[0], rest[1:])


def fd_request(fd: int) -> bytes:
    """Request data of FF3A / FF0A: the FD number, u32 LE."""
    return struct.pack("<I", fd)


# --- typed payloads --------------------------------------------------------------------------

NO_DATE = datetime(2000, 1, 1)  # what an all-zero DATE_TIME5 (no document yet) decodes to


def _encode_date(value: datetime) -> bytes:
    return bytes([value.year - 2000, value.month, value.day, value.hour, value.minute])


def _decode_date(raw: bytes) -> datetime | None:
    if not any(raw):
        return None
    year, month, day, hour, minute = raw
    try:
        return datetime(2000 + year, month, day, hour, minute)
    except ValueError as exc:
        raise PayloadError(f"bad DATE_TIME5 {raw.hex(' ')}: {exc}") from exc


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise PayloadError(f"{what} needs {size} bytes, got {len(data)}")


@dataclass(frozen=True, slots=True)
class DeviceType:
    """FC answer: what is on the other end of the cable."""

    type: int
    subtype: int
    protocol: int
    subprotocol: int
    model: int
    language: int
    name: str

    def encode(self) -> bytes:
        head = (self.type, self.subtype, self.protocol, self.subprotocol, self.model)
        return bytes([*head, self.language]) + self.name.encode("cp1251")

    @classmethod
    def decode(cls, data: bytes) -> Self:
        _need(data, 6, "FC answer")
        kind, subtype, protocol, subprotocol, model, language = data[:6]
        name = data[6:].decode("cp1251", errors="replace")
        return cls(kind, subtype, protocol, subprotocol, model, language, name)


_FN_STATUS = struct.Struct("<BBBBB5s16sI")
FN_DIGITS = 16


@dataclass(frozen=True, slots=True)
class FnStatus:
    """FF01 answer: the FN's phase, flags, number and last FD."""

    phase: int
    current_doc: int
    doc_data: int
    shift_open: bool
    warning_flags: int
    at: datetime
    fn: str
    last_fd: int

    def encode(self) -> bytes:
        return _FN_STATUS.pack(
            self.phase,
            self.current_doc,
            self.doc_data,
            int(self.shift_open),
            self.warning_flags,
            _encode_date(self.at),
            self.fn.encode("ascii"),
            self.last_fd,
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        _need(data, _FN_STATUS.size, "FF01 answer")
        phase, doc, doc_data, shift, flags, at, fn, last = _FN_STATUS.unpack_from(data)
        # 16 ASCII digits and nothing else: the XOR LRC misses two flips of the same bit, and
        # a garbled FN number must never pass for a replaced FN
        if not (fn.isdigit() and len(fn) == FN_DIGITS):
            raise PayloadError(f"FF01 answer: the FN number is not 16 digits: {fn.hex(' ')}")
        at_value = _decode_date(at) or NO_DATE
        return cls(phase, doc, doc_data, bool(shift), flags, at_value, fn.decode("ascii"), last)


_OFD_STATUS = struct.Struct("<BBHI5s")


@dataclass(frozen=True, slots=True)
class OfdStatus:
    """FF39 answer: the FN's own backlog toward the OFD."""

    status: int
    read_in_progress: bool
    unsent_count: int
    first_unsent_fd: int
    first_unsent_at: datetime | None

    def encode(self) -> bytes:
        at = bytes(5) if self.first_unsent_at is None else _encode_date(self.first_unsent_at)
        return _OFD_STATUS.pack(
            self.status, int(self.read_in_progress), self.unsent_count, self.first_unsent_fd, at
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        _need(data, _OFD_STATUS.size, "FF39 answer")
        status, reading, count, first, at = _OFD_STATUS.unpack_from(data)
        first_at = _decode_date(at) if count else None
        return cls(status, bool(reading), count, first, first_at)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """FF3A answer: the STLV tag of the document and its length in bytes."""

    doc_type: int
    length: int

    def encode(self) -> bytes:
        return struct.pack("<HH", self.doc_type, self.length)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        _need(data, 4, "FF3A answer")
        return cls(*struct.unpack_from("<HH", data))


@dataclass(frozen=True, slots=True)
class FoundDocument:
    """FF0A answer: type, whether the OFD confirmed it, and the document's own data."""

    doc_type: int
    ofd_confirmed: bool
    data: bytes

    def encode(self) -> bytes:
        return bytes([self.doc_type, int(self.ofd_confirmed)]) + self.data

    @classmethod
    def decode(cls, data: bytes) -> Self:
        _need(data, 2, "FF0A answer")
        return cls(data[0], bool(data[1]), data[2:])
