"""The host side of a Shtrih-M exchange, pure: ENQ, send, ACK/NAK, answer, ACK (SPEC section 1).

`Exchange` is a state machine that never reads a clock: bytes go in (`receive`), a timer's
expiry goes in (`timeout`), and actions come out (`Send`, `ArmTimeout`, `Done`, `Failed`,
`Discarded`). The transport (`transport.py`) drives it from the port's read callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kktd.kkt.commands import Response, decode_response, split_command
from kktd.kkt.frames import (
    ACK,
    ENQ,
    NAK,
    STX,
    BadFrame,
    ControlByte,
    Event,
    Frame,
    FrameError,
    FrameParser,
    Noise,
    encode_frame,
    lrc,
)

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
        self.cmd, _ = split_command(body)
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
