"""The emulated FN's exchange with the OFD "through the driver" (SPEC sections 8 and 9).

Every FD the OFD has not confirmed yet has a prepared message, offered oldest first: FF30
says its size, FF31 serves it in blocks. FF32 and FF33 take the OFD's answer back; a complete,
well-formed answer confirms the FD (FF39's unsent count drops, FF0A's flag is set) and the next
message is offered. A malformed answer is refused with the FN's error 20h and the same message
stays on offer, as on a real FN. Pure like the device: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kktd.kkt.commands import ErrorCode, PayloadError, Request
from kktd.kkt.ofd_protocol import (
    ANSWER_REJECTED,
    EXCHANGE_MODE_FIELD,
    OFD_PORT_FIELD,
    OFD_SERVER_FIELD,
    AnswerBlockSize,
    BufferStatus,
    OfdCommand,
    ReadBlock,
    SessionError,
    StartAnswer,
    TableField,
    WriteBlock,
    session_message,
    split_session,
)
from kktd.testbed.emulator.documents import EmulatedDocument

OFD_COMMANDS = frozenset(OfdCommand)
DEFAULT_BLOCK_SIZE = 240

Result = tuple[int, bytes]  # error byte, answer data


class FnArchive(Protocol):
    """What the OFD side needs of the device: the FN, its FDs and the OFD confirmations."""

    @property
    def fn(self) -> str: ...

    @property
    def documents(self) -> Sequence[EmulatedDocument]: ...

    @property
    def ofd_confirmed_fd(self) -> int: ...

    def confirm_ofd(self, up_to: int | None = None) -> None: ...


def default_tables() -> dict[TableField, bytes]:
    """Settings of a KKT that exchanges through the driver (mode 0) with an example OFD."""
    return {
        TableField(*EXCHANGE_MODE_FIELD): b"\x00",
        TableField(*OFD_SERVER_FIELD): b"ofd.example".ljust(64, b"\x00"),
        TableField(*OFD_PORT_FIELD): struct.pack("<H", 7777),
    }


@dataclass(slots=True)
class _Answer:
    """An OFD answer being written with FF33, for the message of one FD."""

    fd: int
    size: int
    data: bytearray = field(default_factory=bytearray)


class FnOfd:
    """The FN's OFD buffer: one prepared message out, one answer in, per unconfirmed FD."""

    def __init__(self, archive: FnArchive, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.archive = archive
        self.block_size = block_size
        self.strict = True  # refuse malformed answers (off: take anything, like a lax FN)
        self.reject_answers = 0  # fault: refuse this many next answers, however well-formed
        self.padding = 0  # bytes added to every message body (long messages span many blocks)
        self.tables = default_tables()
        self.answers: dict[int, bytes] = {}  # FD -> the answer that confirmed it
        self.refused: list[bytes] = []  # answers refused, in order
        self.stats: Counter[str] = Counter()  # blocks_read, blocks_written, confirmed, refused
        self._answer: _Answer | None = None

    def offered(self) -> EmulatedDocument | None:
        """The oldest FD the OFD has not confirmed: its message is the one on offer."""
        documents = self.archive.documents
        index = bisect.bisect_right(documents, self.archive.ofd_confirmed_fd, key=lambda d: d.fd)
        return documents[index] if index < len(documents) else None

    def message(self, document: EmulatedDocument) -> bytes:
        """The FN's message for one FD: a session header and an opaque body carrying the FD."""
        body = struct.pack("<I", document.fd) + document.raw + bytes(self.padding)
        return session_message(self.archive.fn, body)

    def reset(self) -> None:
        """A new FN: an answer half written to the old one is gone."""
        self._answer = None

    def execute(self, request: Request) -> Result:
        try:
            match request.cmd:
                case OfdCommand.BUFFER_STATUS:
                    return self._buffer_status(request)
                case OfdCommand.READ_BLOCK:
                    return self._read_block(ReadBlock.decode(request.data))
                case OfdCommand.START_ANSWER:
                    return self._start_answer(StartAnswer.decode(request.data))
                case OfdCommand.WRITE_BLOCK:
                    return self._write_block(WriteBlock.decode(request.data))
                case OfdCommand.READ_TABLE:
                    value = self.tables.get(TableField.decode(request.data))
                    return (ErrorCode.BAD_PARAMETERS, b"") if value is None else (0, value)
        except PayloadError:
            return ErrorCode.BAD_PARAMETERS, b""
        return ErrorCode.NOT_SUPPORTED, b""

    def _buffer_status(self, request: Request) -> Result:
        if request.data:
            return ErrorCode.BAD_PARAMETERS, b""
        document = self.offered()
        pending = 0 if document is None else len(self.message(document))
        return ErrorCode.OK, BufferStatus(pending, self.block_size).encode()

    def _read_block(self, block: ReadBlock) -> Result:
        document = self.offered()
        if document is None:
            return ErrorCode.NO_DATA, b""
        message = self.message(document)
        end = block.offset + block.size
        if block.size == 0 or block.size > self.block_size or end > len(message):
            return ErrorCode.BAD_PARAMETERS, b""
        self.stats["blocks_read"] += 1
        return ErrorCode.OK, message[block.offset : end]

    def _start_answer(self, start: StartAnswer) -> Result:
        document = self.offered()
        if document is None:
            return ErrorCode.NO_DATA, b""
        if start.size == 0:
            return ErrorCode.BAD_PARAMETERS, b""
        self._answer = _Answer(document.fd, start.size)  # a new start drops a half-written one
        return ErrorCode.OK, AnswerBlockSize(self.block_size).encode()

    def _write_block(self, block: WriteBlock) -> Result:
        answer = self._answer
        if answer is None:
            return ErrorCode.WRONG_FN_STATE, b""
        fits = len(answer.data) + len(block.data) <= answer.size
        if block.offset != len(answer.data) or not fits or len(block.data) > self.block_size:
            return ErrorCode.BAD_PARAMETERS, b""
        answer.data += block.data
        self.stats["blocks_written"] += 1
        if len(answer.data) < answer.size:
            return ErrorCode.OK, b""
        self._answer = None
        return self._take(answer.fd, bytes(answer.data))

    def _take(self, fd: int, answer: bytes) -> Result:
        """A whole answer arrived: confirm its FD, or refuse it and keep the message on offer."""
        if self.reject_answers > 0 or (self.strict and not _well_formed(answer)):
            self.reject_answers = max(0, self.reject_answers - 1)
            self.refused.append(answer)
            self.stats["refused"] += 1
            return ANSWER_REJECTED, b""
        self.answers[fd] = answer
        self.stats["confirmed"] += 1
        self.archive.confirm_ofd(fd)
        return ErrorCode.OK, b""


def _well_formed(answer: bytes) -> bool:
    try:
        split_session(answer)
    except SessionError:
        return False
    return True
