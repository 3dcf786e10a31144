"""The KKT side of the Shtrih-M link: bytes in, bytes to write out, no I/O (SPEC sections 1, 8).

`KktDevice.feed()` takes what the host wrote and returns the chunks to write back; the pty layer
writes them with a pause between chunks (so that garbage cannot swallow the frame after it) and
calls `byte_timeout()` when a frame stops arriving. Time enters only through the injected clock
(for "busy for T seconds").
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from kktd.kkt.commands import (
    DEFAULT_PASSWORD,
    Command,
    DeviceType,
    DocumentInfo,
    ErrorCode,
    FnStatus,
    FoundDocument,
    OfdStatus,
    Request,
    decode_request,
    encode_response,
)
from kktd.kkt.frames import (
    ACK,
    ENQ,
    MAX_BODY,
    NAK,
    BadFrame,
    ControlByte,
    Frame,
    FrameError,
    FrameParser,
    Noise,
    encode_frame,
)
from kktd.kkt.tlv import encode_tlv, iter_tlv
from kktd.testbed.emulator.documents import DocumentGenerator, EmulatedDocument
from kktd.testbed.emulator.ofd import OFD_COMMANDS, FnOfd

WRONG_PASSWORD = 0x4F  # Shtrih-M's "wrong password"; the host only needs its number
STRAY = 0xFF
FN_PHASE_FISCAL = 0x03
OFD_MESSAGE_PENDING = 0x02
DEFAULT_DEVICE_TYPE = DeviceType(0, 0, 1, 0, 0, 0, "ШТРИХ-М-01Ф (эмулятор kktd)")
# commands that read the FN state; with `strict_output` they fail mid-document like on some FNs
FN_QUERIES = frozenset({Command.FN_STATUS, Command.OFD_STATUS, Command.FIND_FD})
SUPPORTED = frozenset(Command) | OFD_COMMANDS
MAX_PIECE = MAX_BODY - 3  # FF3B answer data: the frame body less FF 3B and the error

# How FF3B hands out an FD's TLV stream (SPEC section 1; hosts must join the answers):
# "split": one TLV per answer, a TLV longer than an answer holds in several pieces (Shtrih-M);
# "tlv": one whole TLV per answer, the old shape: an FD with a longer TLV cannot be added;
# "blocks": pieces of `ff3b_block` bytes, cutting through TLVs wherever they fall.
Ff3bShape = Literal["split", "tlv", "blocks"]


@dataclass(slots=True)
class Faults:
    """Fault switches; set them at any time, each counter runs down as it fires."""

    bad_lrc: int = 0  # answer frames sent with a wrong LRC (resends count too)
    lost_acks: int = 0  # host frames not ACKed: executed, the answer held until the host ENQs
    stray_ff: int = 0  # control bytes written with a stray FF before them
    busy: int = 0  # commands answered 0x50 (printing) without being executed
    busy_until: float = 0.0  # ... and every command until this clock time
    garbage: list[bytes] = field(default_factory=list)  # bursts, one before each next answer
    garbled_fn: int = 0  # FF01 answers whose FN number is garbled past the LRC (two bit flips)
    wrong_fd: int = 0  # FF3A/FF3B reads that serve the neighbouring FD instead of the one asked


@dataclass(slots=True)
class _Output:
    """Data-output mode after FF3A: the pieces of one FD's TLV stream, one per FF3B."""

    fd: int
    pieces: list[bytes]
    position: int = 0


class KktDevice:
    """A Shtrih-M KKT with an FN archive, speaking the device side of the handshake."""

    def __init__(
        self,
        generator: DocumentGenerator | None = None,
        *,
        archive: int = 0,
        documents: Iterable[EmulatedDocument] = (),
        password: int = DEFAULT_PASSWORD,
        monotonic: Callable[[], float] = time.monotonic,
        device_type: DeviceType = DEFAULT_DEVICE_TYPE,
        strict_output: bool = False,
        ff3b: Ff3bShape = "split",
        ff3b_block: int = MAX_PIECE,
    ) -> None:
        if not 1 <= ff3b_block <= MAX_PIECE:
            raise ValueError(f"ff3b_block must be 1..{MAX_PIECE} bytes, got {ff3b_block}")
        self.generator = generator if generator is not None else DocumentGenerator()
        self.password = password
        self.monotonic = monotonic
        self.device_type = device_type
        self.strict_output = strict_output
        self.ff3b: Ff3bShape = ff3b
        self.ff3b_block = ff3b_block
        self.faults = Faults()
        self.warning_flags = 0
        self.stats: Counter[str] = Counter()  # enq, ack, nak, frames, bad_frames, noise, resent
        self.executed: Counter[int] = Counter()  # commands executed (busy answers excluded)
        self.documents: list[EmulatedDocument] = []
        self._by_fd: dict[int, EmulatedDocument] = {}
        self.ofd_confirmed_fd = 0
        self.ofd = FnOfd(self)  # the FN's messages for the OFD and the answers written back
        self._parser = FrameParser()
        self._pending: bytes | None = None  # the answer frame the host has not ACKed yet
        self._output: _Output | None = None
        for document in documents:
            self.add(document)
        for _ in range(archive):
            self.issue()
        self.confirm_ofd()

    # --- the FN archive ----------------------------------------------------------------------

    @property
    def fn(self) -> str:
        return self.generator.fn

    @property
    def last_fd(self) -> int:
        return self.documents[-1].fd if self.documents else 0

    def document(self, fd: int) -> EmulatedDocument | None:
        return self._by_fd.get(fd)

    def add(self, document: EmulatedDocument) -> EmulatedDocument:
        """Append an FD (from fixtures); the generator continues after it."""
        if document.fd <= self.last_fd:
            raise ValueError(f"FD {document.fd} does not follow FD {self.last_fd}")
        if self.ff3b == "tlv" and any(
            4 + len(item.value) > MAX_PIECE for item in iter_tlv(document.raw)
        ):
            raise ValueError(f"FD {document.fd} has a TLV longer than one FF3B answer holds")
        self.documents.append(document)
        self._by_fd[document.fd] = document
        self.generator.next_fd = max(self.generator.next_fd, document.fd + 1)
        return document

    def issue(self) -> EmulatedDocument:
        """The next FD of a working shop: shift open, a receipt, or shift close."""
        return self.add(self.generator.next_document())

    def issue_receipt(
        self, operation: int | None = None, *, requisite: tuple[str, str] | None = None
    ) -> EmulatedDocument:
        """A receipt now; opens a shift first (one more FD) if none is open."""
        if not self.generator.shift_open:
            self.add(self.generator.open_shift())
        return self.add(self.generator.receipt(operation, requisite=requisite))

    def replace_fn(self, fn: str) -> None:
        """A new FN in the KKT: an empty archive numbered from FD 1."""
        self.generator.fn = fn
        self.generator.next_fd = 1
        self.generator.shift_open = False
        self.documents.clear()
        self._by_fd.clear()
        self._output = None
        self.ofd_confirmed_fd = 0
        self.ofd.reset()

    def confirm_ofd(self, up_to: int | None = None) -> None:
        """The OFD has receipted every FD up to `up_to` (default: all issued so far)."""
        self.ofd_confirmed_fd = self.last_fd if up_to is None else up_to

    # --- fault switches ----------------------------------------------------------------------

    def corrupt_lrc(self, answers: int = 1) -> None:
        self.faults.bad_lrc += answers

    def lose_acks(self, frames: int = 1) -> None:
        self.faults.lost_acks += frames

    def stray_ff(self, control_bytes: int = 1) -> None:
        self.faults.stray_ff += control_bytes

    def busy(self, commands: int = 1) -> None:
        self.faults.busy += commands

    def busy_for(self, seconds: float) -> None:
        self.faults.busy_until = self.monotonic() + seconds

    def inject_garbage(self, data: bytes) -> None:
        """Write `data` on the line before the next answer frame (after its ACK)."""
        self.faults.garbage.append(data)

    def garble_fn(self, answers: int = 1) -> None:
        """The next FF01 answers carry another 16-digit FN number, with a valid LRC."""
        self.faults.garbled_fn += answers

    def answer_wrong_fd(self, reads: int = 1) -> None:
        """The next FD reads (FF3A) serve a neighbouring FD: its 1040 names another FD."""
        self.faults.wrong_fd += reads

    def clear_faults(self) -> None:
        self.faults = Faults()

    # --- the line ----------------------------------------------------------------------------

    @property
    def receiving(self) -> bool:
        """Inside a host frame: the transport applies the byte timeout."""
        return self._parser.busy

    def byte_timeout(self) -> None:
        """The host stopped in the middle of a frame: forget it."""
        self._parser.reset()

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes from the host -> chunks to write back, in order, with a pause between them."""
        chunks: list[bytes] = []
        for event in self._parser.feed(data):
            match event:
                case ControlByte(value):
                    chunks = _join(chunks, self._on_control(value))
                case Frame(body):
                    chunks = _join(chunks, self._on_frame(body))
                case BadFrame():
                    self.stats["bad_frames"] += 1
                    chunks = _join(chunks, [self._control(NAK)])
                case Noise(noise):
                    self.stats["noise"] += len(noise)
        return chunks

    def _on_control(self, value: int) -> list[bytes]:
        if value == ACK:
            self.stats["ack"] += 1
            self._pending = None
        elif value == NAK:
            # SPEC: the KKT resends on the host's next ENQ, not on the NAK
            self.stats["nak"] += 1
        elif value == ENQ:
            self.stats["enq"] += 1
            if self._pending is None:
                return [self._control(NAK)]
            self.stats["resent"] += 1
            return [self._control(ACK) + self._send(self._pending)]
        return []

    def _on_frame(self, body: bytes) -> list[bytes]:
        self.stats["frames"] += 1
        answer = encode_frame(self._answer(body))
        self._pending = answer  # a new command supersedes an answer the host never took
        if self.faults.lost_acks > 0:
            self.faults.lost_acks -= 1
            return []
        head = self._control(ACK)
        if self.faults.garbage:
            return [head + self.faults.garbage.pop(0), self._send(answer)]
        return [head + self._send(answer)]

    def _control(self, value: int) -> bytes:
        if self.faults.stray_ff > 0:
            self.faults.stray_ff -= 1
            return bytes([STRAY, value])
        return bytes([value])

    def _send(self, frame: bytes) -> bytes:
        if self.faults.bad_lrc > 0:
            self.faults.bad_lrc -= 1
            return frame[:-1] + bytes([frame[-1] ^ 0x5A])
        return frame

    # --- commands ----------------------------------------------------------------------------

    def _answer(self, body: bytes) -> bytes:
        """The frame body answering one host frame."""
        cmd = _command_of(body)
        if cmd not in SUPPORTED:
            return encode_response(cmd, ErrorCode.NOT_SUPPORTED)
        if self.faults.busy > 0 or self.monotonic() < self.faults.busy_until:
            self.faults.busy = max(0, self.faults.busy - 1)
            return encode_response(cmd, ErrorCode.PRINTING)
        try:
            request = decode_request(body)
        except FrameError:
            return encode_response(cmd, ErrorCode.BAD_PARAMETERS)
        if request.password is not None and request.password != self.password:
            return encode_response(cmd, WRONG_PASSWORD)
        if self.strict_output and self._output is not None and cmd in FN_QUERIES:
            return encode_response(cmd, ErrorCode.WRONG_FN_STATE)
        self.executed[cmd] += 1
        error, data = self._execute(request)
        return encode_response(cmd, error, data if error == ErrorCode.OK else b"")

    def _execute(self, request: Request) -> tuple[int, bytes]:
        match request.cmd:
            case Command.DEVICE_TYPE:
                return ErrorCode.OK, self.device_type.encode()
            case Command.FN_STATUS:
                return self._no_data(request) or (ErrorCode.OK, self._fn_status().encode())
            case Command.OFD_STATUS:
                return self._no_data(request) or (ErrorCode.OK, self._ofd_status().encode())
            case Command.FIND_FD:
                return self._find_fd(request)
            case Command.OPEN_FD_TLV:
                return self._open_fd(request)
            case Command.READ_TLV:
                return self._no_data(request) or self._read_tlv()
        if request.cmd in OFD_COMMANDS:
            return self.ofd.execute(request)
        return ErrorCode.NOT_SUPPORTED, b""

    @staticmethod
    def _no_data(request: Request) -> tuple[int, bytes] | None:
        """Bad parameters when a command that takes no data got some."""
        return (ErrorCode.BAD_PARAMETERS, b"") if request.data else None

    def _fn_status(self) -> FnStatus:
        last = self.documents[-1].issued_at if self.documents else None
        return FnStatus(
            phase=FN_PHASE_FISCAL,
            current_doc=0,
            doc_data=0,
            shift_open=self.generator.shift_open,
            warning_flags=self.warning_flags,
            at=last or self.generator.wall(),
            fn=self._answered_fn(),
            last_fd=self.last_fd,
        )

    def _answered_fn(self) -> str:
        if self.faults.garbled_fn <= 0:
            return self.fn
        self.faults.garbled_fn -= 1
        return garbled(self.fn)

    def _ofd_status(self) -> OfdStatus:
        unsent = [d for d in self.documents if d.fd > self.ofd_confirmed_fd]
        if not unsent:
            return OfdStatus(0, False, 0, 0, None)
        first = unsent[0]
        count = min(len(unsent), 0xFFFF)
        return OfdStatus(OFD_MESSAGE_PENDING, False, count, first.fd, first.issued_at)

    def _requested_fd(self, request: Request) -> EmulatedDocument | int:
        """The FD a request asks for, or the error to answer."""
        if len(request.data) != 4:
            return ErrorCode.BAD_PARAMETERS
        document = self._by_fd.get(struct.unpack("<I", request.data)[0])
        return ErrorCode.NO_DATA if document is None else document

    def _find_fd(self, request: Request) -> tuple[int, bytes]:
        document = self._requested_fd(request)
        if isinstance(document, int):
            return document, b""
        confirmed = document.fd <= self.ofd_confirmed_fd
        return ErrorCode.OK, FoundDocument(
            document.doc_type, confirmed, _summary(document)
        ).encode()

    def _open_fd(self, request: Request) -> tuple[int, bytes]:
        document = self._requested_fd(request)
        if isinstance(document, int):
            return document, b""
        if self.faults.wrong_fd > 0:
            neighbour = self._by_fd.get(document.fd - 1) or self._by_fd.get(document.fd + 1)
            if neighbour is not None:
                self.faults.wrong_fd -= 1
                document = neighbour
        self._output = _Output(document.fd, self._pieces(document.raw))
        return ErrorCode.OK, DocumentInfo(document.doc_type, len(document.raw)).encode()

    def _pieces(self, raw: bytes) -> list[bytes]:
        """An FD's TLV stream cut into FF3B answers, in the shape `ff3b` names."""
        if self.ff3b == "blocks":
            return _cut(raw, self.ff3b_block)
        return [
            piece
            for item in iter_tlv(raw)
            for piece in _cut(encode_tlv(item.tag, item.value), MAX_PIECE)
        ]

    def _read_tlv(self) -> tuple[int, bytes]:
        output = self._output
        if output is None:
            return ErrorCode.WRONG_FN_STATE, b""
        if output.position >= len(output.pieces):
            self._output = None
            return ErrorCode.NO_DATA, b""
        output.position += 1
        return ErrorCode.OK, output.pieces[output.position - 1]


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def garbled(fn: str) -> str:
    """`fn` as two flips of the same bit leave it: other digits, the same XOR LRC."""
    flipped = bytearray(fn.encode("ascii"))
    for position in (3, 11):
        flipped[position] ^= 0x01  # "0".."9" stay digits: 0x30..0x39 differ in the low bits
    return flipped.decode("ascii")


def _command_of(body: bytes) -> int:
    """The command a frame body names (FN commands are FF xx); a lone FF names FF00."""
    if body[0] != 0xFF:
        return body[0]
    return 0xFF00 | (body[1] if len(body) > 1 else 0)


def _date_time5(when: datetime | None) -> bytes:
    if when is None:
        return bytes(5)
    return bytes([when.year - 2000, when.month, when.day, when.hour, when.minute])


def _summary(document: EmulatedDocument) -> bytes:
    """FF0A document data: DATE_TIME5, FD, fiscal sign; receipts add operation and total."""
    record = document.record
    data = _date_time5(document.issued_at) + struct.pack(
        "<II", document.fd, record.get("fiscal_sign", 0)
    )
    if "operation" in record and "total" in record:
        data += bytes([record["operation"]]) + int(record["total"]).to_bytes(5, "little")
    return data


def _join(chunks: list[bytes], more: list[bytes]) -> list[bytes]:
    """Append chunks, merging the first new one into the last (no pause is needed between)."""
    if not more:
        return chunks
    if not chunks:
        return list(more)
    return [*chunks[:-1], chunks[-1] + more[0], *more[1:]]
