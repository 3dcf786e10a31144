"""The emulated FN's OFD buffer: messages offered oldest first, answers confirm or are refused."""

from __future__ import annotations

import pytest

from kktd.kkt.commands import (
    Command,
    ErrorCode,
    FoundDocument,
    OfdStatus,
    Response,
    decode_response,
    encode_request,
    fd_request,
)
from kktd.kkt.frames import ACK, encode_frame
from kktd.kkt.ofd_protocol import (
    ANSWER_REJECTED,
    AnswerBlockSize,
    BufferStatus,
    OfdCommand,
    ReadBlock,
    StartAnswer,
    TableField,
    WriteBlock,
    blocks,
    session_message,
    split_session,
)
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator

PWD = 30


def ask(device: KktDevice, cmd: int, data: bytes = b"") -> Response:
    """One command by hand: expect ACK + the answer frame, ACK it, decode it."""
    out = b"".join(device.feed(encode_frame(encode_request(cmd, PWD, data))))
    assert out[:1] == bytes([ACK]), out.hex(" ")
    device.feed(bytes([ACK]))
    return decode_response(out[3:-1])


def ok(device: KktDevice, cmd: int, data: bytes = b"") -> bytes:
    response = ask(device, cmd, data)
    assert response.error == 0, f"{cmd:#x} failed with {response.error:#04x}"
    return response.data


def read_message(device: KktDevice) -> bytes:
    status = BufferStatus.decode(ok(device, OfdCommand.BUFFER_STATUS))
    parts = [
        ok(device, OfdCommand.READ_BLOCK, ReadBlock(offset, size).encode())
        for offset, size in blocks(status.pending, status.block_size)
    ]
    return b"".join(parts)


def write_answer(device: KktDevice, answer: bytes) -> int:
    """FF32 then FF33 blocks; the error byte of the last FF33."""
    start = AnswerBlockSize.decode(
        ok(device, OfdCommand.START_ANSWER, StartAnswer(len(answer)).encode())
    )
    error = 0
    for offset, size in blocks(len(answer), start.block_size):
        block = WriteBlock(offset, answer[offset : offset + size]).encode()
        error = ask(device, OfdCommand.WRITE_BLOCK, block).error
    return error


def unsent(device: KktDevice) -> OfdStatus:
    return OfdStatus.decode(ok(device, Command.OFD_STATUS))


@pytest.fixture
def device() -> KktDevice:
    """An FN with 3 FDs the OFD has confirmed and 3 it has not."""
    kkt = KktDevice(DocumentGenerator(), archive=3)
    for _ in range(3):
        kkt.issue()
    assert kkt.last_fd - kkt.ofd_confirmed_fd == 3
    return kkt


def test_the_oldest_unconfirmed_fd_is_offered_as_a_session_message(device: KktDevice) -> None:
    device.ofd.block_size = 50  # several FF31 blocks per message
    message = read_message(device)
    header, body = split_session(message)
    assert header.fn == device.fn
    assert body.startswith((device.ofd_confirmed_fd + 1).to_bytes(4, "little"))
    assert device.ofd.stats["blocks_read"] == len(blocks(len(message), 50)) > 1


def test_a_well_formed_answer_confirms_the_fd_and_the_next_is_offered(device: KktDevice) -> None:
    first = device.ofd_confirmed_fd + 1
    before = unsent(device)
    message = read_message(device)
    answer = session_message(device.fn, b"receipt for " + message[-8:])
    assert write_answer(device, answer) == 0
    after = unsent(device)
    assert (before.unsent_count, after.unsent_count) == (3, 2)
    assert (before.first_unsent_fd, after.first_unsent_fd) == (first, first + 1)
    assert device.ofd.answers == {first: answer}
    assert FoundDocument.decode(ok(device, Command.FIND_FD, fd_request(first))).ofd_confirmed
    assert not FoundDocument.decode(
        ok(device, Command.FIND_FD, fd_request(first + 1))
    ).ofd_confirmed
    assert read_message(device) != message


def test_answering_every_message_empties_the_backlog(device: KktDevice) -> None:
    for _ in range(3):
        read_message(device)
        assert write_answer(device, session_message(device.fn, b"ok")) == 0
    assert unsent(device).unsent_count == 0
    assert BufferStatus.decode(ok(device, OfdCommand.BUFFER_STATUS)).pending == 0
    assert ask(device, OfdCommand.READ_BLOCK, ReadBlock(0, 10).encode()).error == ErrorCode.NO_DATA
    assert ask(device, OfdCommand.START_ANSWER, StartAnswer(40).encode()).error == ErrorCode.NO_DATA


@pytest.mark.parametrize(
    "answer",
    [b"\x00" * 40, session_message("9999078900005488", b"body")[:-1], b"\x2a\x08\x41\x0a"],
)
def test_a_malformed_answer_is_refused_and_the_message_stays_on_offer(
    device: KktDevice, answer: bytes
) -> None:
    message = read_message(device)
    assert write_answer(device, answer) == ANSWER_REJECTED
    assert device.ofd.refused == [answer]
    assert device.ofd.answers == {}
    assert unsent(device).unsent_count == 3
    assert read_message(device) == message


def test_a_lax_fn_takes_a_malformed_answer(device: KktDevice) -> None:
    device.ofd.strict = False
    assert write_answer(device, b"garbage") == 0
    assert unsent(device).unsent_count == 2


def test_the_reject_switch_refuses_well_formed_answers_then_runs_out(device: KktDevice) -> None:
    device.ofd.reject_answers = 1
    answer = session_message(device.fn, b"ok")
    assert write_answer(device, answer) == ANSWER_REJECTED
    assert write_answer(device, answer) == 0
    assert device.ofd.stats["refused"] == device.ofd.stats["confirmed"] == 1


def test_blocks_out_of_order_too_long_or_without_ff32_are_refused(device: KktDevice) -> None:
    assert ask(device, OfdCommand.WRITE_BLOCK, WriteBlock(0, b"x").encode()).error == (
        ErrorCode.WRONG_FN_STATE
    )
    ok(device, OfdCommand.START_ANSWER, StartAnswer(4).encode())
    assert ask(device, OfdCommand.WRITE_BLOCK, WriteBlock(1, b"x").encode()).error == (
        ErrorCode.BAD_PARAMETERS
    )
    assert ask(device, OfdCommand.WRITE_BLOCK, WriteBlock(0, b"12345").encode()).error == (
        ErrorCode.BAD_PARAMETERS
    )
    assert ask(device, OfdCommand.READ_BLOCK, ReadBlock(0, 241).encode()).error == (
        ErrorCode.BAD_PARAMETERS
    )
    assert ask(device, OfdCommand.START_ANSWER, b"\x01").error == ErrorCode.BAD_PARAMETERS


def test_a_new_ff32_drops_a_half_written_answer(device: KktDevice) -> None:
    answer = session_message(device.fn, b"x" * 300)
    ok(device, OfdCommand.START_ANSWER, StartAnswer(len(answer)).encode())
    ok(device, OfdCommand.WRITE_BLOCK, WriteBlock(0, answer[:100]).encode())
    assert write_answer(device, answer) == 0
    assert list(device.ofd.answers.values()) == [answer]


def test_tables_show_exchange_through_the_driver(device: KktDevice) -> None:
    assert ok(device, OfdCommand.READ_TABLE, TableField(21, 1, 2).encode()) == b"\x00"
    assert ask(device, OfdCommand.READ_TABLE, TableField(99, 1, 1).encode()).error == (
        ErrorCode.BAD_PARAMETERS
    )


def test_a_new_fn_forgets_the_answer_in_progress(device: KktDevice) -> None:
    ok(device, OfdCommand.START_ANSWER, StartAnswer(40).encode())
    device.replace_fn("9999078900009999")
    assert ask(device, OfdCommand.WRITE_BLOCK, WriteBlock(0, b"x").encode()).error == (
        ErrorCode.WRONG_FN_STATE
    )
    assert BufferStatus.decode(ok(device, OfdCommand.BUFFER_STATUS)).pending == 0
