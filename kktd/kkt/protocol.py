"""Shtrih-M standard protocol (v1), pure: frames, command codecs and the host-side handshake.

No serial port, no asyncio and no clock in here (the h11 way): bytes go in, events and actions
come out. The transport (`transport.py`) drives this core; the emulator uses the same frame
parser and codecs from the device side. SPEC section 1 is the contract.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Literal, Self

STX, ENQ, ACK, NAK = 0x02, 0x05, 0x06, 0x15
CONTROL_BYTES = frozenset({ENQ, ACK, NAK})
MAX_BODY = 255
MAX_FRAME = MAX_BODY + 3  # STX LEN body LRC

DEFAULT_PASSWORD = 30
STATUS_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 30.0


class ProtocolError(Exception):
    """Base of every error the protocol core raises."""


class FrameError(ProtocolError):
    """A frame or frame body that cannot be what the protocol allows."""


class PayloadError(ProtocolError):
    """Response data too short or malformed for the command's typed payload."""


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


# --- commands, errors, request and response bodies -----------------------------------------


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


def _split_command(body: bytes) -> tuple[int, bytes]:
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
    cmd, rest = _split_command(body)
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
    cmd, rest = _split_command(body)
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


# --- host-side handshake ---------------------------------------------------------------------


FailReason = Literal["no_link", "rejected", "bad_answer", "answer_lost", "wrong_answer", "wedged"]


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the line."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ArmTimeout:
    """(Re)arm the one timer: call `Exchange.timeout()` if nothing arrives for this long."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Done:
    response: Response


@dataclass(frozen=True, slots=True)
class Failed:
    reason: FailReason
    detail: str


@dataclass(frozen=True, slots=True)
class Discarded:
    """Something on the line that was not for us (the caller counts it; see `leftover`)."""

    kind: Literal["noise", "bad_frame", "stale_answer", "stray_ff"]
    data: bytes


STRAY_FF = 0xFF
MAX_STRAY = 2  # a line stuck at mark reads as a run of FF: that is noise, not the quirk


def leftover(data: bytes) -> Discarded:
    """Bytes outside any frame: the KKT's stray FF, or noise.

    Over USB and RNDIS/TCP a Shtrih-M sends a lone FF before a control byte or after the host's
    ACK (SPEC section 1); it is skipped like noise but is no sign of a bad line.
    """
    stray = 0 < len(data) <= MAX_STRAY and data.count(STRAY_FF) == len(data)
    return Discarded("stray_ff" if stray else "noise", data)


Action = Send | ArmTimeout | Done | Failed | Discarded
_NAK_ALONE = bytes([NAK])


def _whole_answer(data: bytes) -> bool:
    """ACK followed by exactly one frame, its LRC good: what a KKT's answer usually reads as."""
    size = len(data)
    return (
        size > 4
        and data[0] == ACK
        and data[1] == STX
        and data[2] == size - 4
        and lrc(data[2:-1]) == data[-1]
    )


_SEND_ENQ, _SEND_ACK = Send(bytes([ENQ])), Send(bytes([ACK]))  # frozen: shared
_SEND_NAK_ENQ = Send(bytes([NAK, ENQ]))
State = Literal["idle", "enq", "sent", "answer", "drain", "done", "failed"]


class Exchange:
    """One request and its answer, host side: ENQ, send, ACK/NAK, answer, ACK.

    - ENQ answered NAK: the KKT is idle, send the frame. ACK: it holds an answer; before our
      frame went out that answer is stale (read, ACK, discard, ENQ again), after, it is ours.
    - Frame answered NAK: resend (at most `max_tries` sends). No ACK: ENQ to ask whether the
      KKT got it (lost ACK); an answer frame arriving instead of the ACK is taken as ours.
    - Answer with a bad LRC or cut short: NAK, then ENQ (the KKT resends on the ENQ).
    - Noise (a stray FF over USB) is skipped wherever it appears.
    """

    def __init__(
        self,
        body: bytes,
        *,
        answer_timeout: float,
        control_timeout: float = 0.5,
        byte_timeout: float = 0.1,
        max_tries: int = 10,
        enq_tries: int = 3,
    ) -> None:
        self.cmd, _ = _split_command(body)
        self._frame = encode_frame(body)
        self._answer_timeout = answer_timeout
        self._control_timeout = control_timeout
        self._byte_timeout = byte_timeout
        self._max_tries = max_tries
        self._enq_tries = enq_tries
        # The actions this exchange repeats, built once (frozen, so shared): every FF3B of a
        # run took five new objects per exchange for the same three timeouts and one frame.
        self._send = Send(self._frame)
        self._wait_answer = ArmTimeout(answer_timeout)
        self._wait_control = ArmTimeout(control_timeout)
        self._wait_byte = ArmTimeout(byte_timeout)
        self.state: State = "idle"
        self._reset()

    def fresh(self) -> Exchange:
        """The same request as a new exchange (the next FF3B of a run): frame built once."""
        twin = Exchange.__new__(Exchange)
        twin.cmd = self.cmd
        twin._frame = self._frame
        twin._answer_timeout = self._answer_timeout
        twin._control_timeout = self._control_timeout
        twin._byte_timeout = self._byte_timeout
        twin._max_tries = self._max_tries
        twin._enq_tries = self._enq_tries
        twin._send = self._send
        twin._wait_answer = self._wait_answer
        twin._wait_control = self._wait_control
        twin._wait_byte = self._wait_byte
        twin._reset()
        return twin

    def _reset(self) -> None:
        self._parser = FrameParser()
        self.state = "idle"
        self._sends = 0  # frames sent (the NAK budget)
        self._bad = 0  # bad or cut answers, stale answers drained
        self._silent = 0  # ENQs in a row left unanswered
        self._sent_once = False
        self._accepted = False

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def start(self) -> list[Action]:
        assert self.state == "idle", "an exchange runs once"
        return self._enq()

    def receive(self, data: bytes) -> list[Action]:
        if not self._parser.busy:
            # The two usual inputs, taken without the parser's events: the same actions as the
            # general path below gives for them (tests/kkt/test_protocol.py checks both ways).
            if self.state == "enq" and data == _NAK_ALONE:
                self._silent = 0
                return self._on_control(NAK)
            if self.state == "sent" and _whole_answer(data):  # ACK, then one good frame
                self._silent = 0
                self._accepted = True
                self.state = "answer"
                return [self._wait_answer, *self._on_frame(bytes(data[3:-1]))]
        actions: list[Action] = []
        for event in self._parser.feed(data):
            if self.finished:
                break
            actions += self._on_event(event)
        if not self.finished and self._parser.busy:
            actions.append(self._wait_byte)
        return actions

    def timeout(self) -> list[Action]:
        if self.finished:
            return []
        if self._parser.busy:
            self._parser.reset()
            return [Discarded("bad_frame", b""), *self._bad_answer("cut short")]
        if self.state == "enq":
            self._silent += 1
            if self._silent >= self._enq_tries:
                return self._fail("no_link", f"no answer to {self._silent} ENQs")
        elif self.state in ("answer", "drain"):
            # The KKT keeps saying it is preparing an answer that never comes.
            self._bad += 1
            if self._bad > self._max_tries:
                return self._fail("no_link", "the announced answer never came")
        return self._enq()

    # --- transitions ---

    def _on_event(self, event: Event) -> list[Action]:
        match event:  # the usual events first
            case ControlByte(value):
                self._silent = 0
                return self._on_control(value)
            case Frame(body):
                return self._on_frame(body)
            case Noise(data):
                return [leftover(data)]
            case BadFrame(body, reason):
                return [Discarded("bad_frame", body), *self._bad_answer(reason)]

    def _on_control(self, value: int) -> list[Action]:
        if self.state == "enq" and value == NAK:
            if self._accepted:
                return self._fail("answer_lost", "the KKT is idle after accepting the command")
            return self._send_frame()
        if self.state == "enq" and value == ACK:
            self.state = "answer" if self._sent_once else "drain"
            return [self._wait_answer]
        if self.state == "sent" and value == ACK:
            self._accepted = True
            self.state = "answer"
            return [self._wait_answer]
        if self.state == "sent" and value == NAK:
            return self._send_frame()
        return []  # a repeated ACK while waiting for the answer changes nothing

    def _on_frame(self, body: bytes) -> list[Action]:
        if self.state == "drain" or not self._sent_once:
            self._bad += 1
            if self._bad > self._max_tries:
                return [_SEND_ACK, *self._fail("wedged", "stale answers keep coming")]
            return [_SEND_ACK, Discarded("stale_answer", body), *self._enq()]
        try:
            response = decode_response(body)
        except FrameError as exc:
            return [_SEND_ACK, *self._fail("bad_answer", str(exc))]
        if response.cmd != self.cmd:
            detail = f"answer to {response.cmd:#x} while waiting for {self.cmd:#x}"
            return [_SEND_ACK, *self._fail("wrong_answer", detail)]
        self.state = "done"
        return [_SEND_ACK, Done(response)]

    def _bad_answer(self, reason: str) -> list[Action]:
        self._bad += 1
        if self._bad > self._max_tries:
            return self._fail("bad_answer", f"{self._bad} bad answers, last {reason}")
        self.state = "enq"
        return [_SEND_NAK_ENQ, self._wait_control]

    def _enq(self) -> list[Action]:
        self.state = "enq"
        return [_SEND_ENQ, self._wait_control]

    def _send_frame(self) -> list[Action]:
        if self._sends >= self._max_tries:
            return self._fail("rejected", f"frame refused {self._sends} times")
        self._sends += 1
        self._sent_once = True
        self.state = "sent"
        return [self._send, self._wait_control]

    def _fail(self, reason: FailReason, detail: str) -> list[Action]:
        self.state = "failed"
        return [Failed(reason, detail)]
