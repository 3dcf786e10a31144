"""The relay against an emulated KKT on a real pty and a mock OFD on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
from typing import Any

import pytest
from structlog.testing import capture_logs

from kktd.config import OfdConfig
from kktd.kkt.link import KktLink
from kktd.kkt.ofd_protocol import OfdCommand, TableField, split_session
from kktd.ofd import relay as relay_module
from kktd.ofd.audit import ExchangeRecord, MemoryAudit, sha256
from kktd.ofd.client import exchange as client_exchange
from kktd.ofd.mock_ofd import Fault, MockOfd
from kktd.ofd.relay import OfdRelay
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from tests.ofd.conftest import UNSENT, RelayFactory, run_until, unsent
from tests.support.clock import FakeClock
from tests.support.wait import wait_until


def offered_messages(device: KktDevice) -> list[bytes]:
    """The FN's messages for the FDs the OFD has not confirmed, oldest first."""
    return [device.ofd.message(d) for d in device.documents if d.fd > device.ofd_confirmed_fd]


async def steps_until_drained(relay: OfdRelay, device: KktDevice, limit: int = 20) -> None:
    for _ in range(limit):
        if not unsent(device):
            return
        await relay.step()
    raise AssertionError(f"{unsent(device)} messages left after {limit} steps")


async def test_every_message_is_relayed_byte_for_byte_and_the_backlog_reaches_zero(
    device: KktDevice, ofd: MockOfd, audit: MemoryAudit, make_relay: RelayFactory
) -> None:
    messages = offered_messages(device)
    fds = [d.fd for d in device.documents[-UNSENT:]]
    relay = make_relay()
    # done once the relay itself has seen the FN's buffer empty (its FF30 after the last
    # answer), not when the emulator has the last answer: the relay is still auditing then
    await run_until(relay, lambda: unsent(device) == 0 and relay.status().pending_bytes == 0)
    assert ofd.messages == messages  # each sent once, unchanged, oldest first
    assert [device.ofd.answers[fd] for fd in fds] == ofd.answers  # written back byte for byte
    assert device.ofd.refused == []
    assert [r.outcome for r in audit.records] == ["relayed"] * UNSENT
    assert [(r.message, r.answer) for r in audit.records] == list(
        zip(messages, ofd.answers, strict=True)
    )
    status = relay.status()
    assert (status.relayed, status.failed, status.consecutive_failures) == (UNSENT, 0, 0)
    assert status.outcomes == {"relayed": UNSENT}
    assert (status.backlog, status.backlog_trend, status.pending_bytes) == (0, "falling", 0)
    assert (status.last_outcome, status.last_success_at, status.breaker) == (
        "relayed",
        1_700_000_000.0,
        "closed",
    )
    assert (status.exchange_mode, status.kkt_ofd_server) == (0, "ofd.example:7777")
    assert status.to_dict()["enabled"] is True


async def test_the_exchange_is_logged_with_sizes_hashes_and_timings(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory
) -> None:
    message = offered_messages(device)[0]
    with capture_logs() as logs:
        await make_relay().step()
    [line] = [e for e in logs if e["event"] == "ofd.exchanged"]
    assert line["outcome"] == "relayed"
    assert (line["message_bytes"], line["message_sha256"]) == (len(message), sha256(message))
    assert (line["answer_bytes"], line["answer_sha256"]) == (288, sha256(ofd.answers[0]))
    assert line["fn"] == device.fn
    assert line["backlog"] == UNSENT - 1
    assert {"read_seconds", "ofd_seconds", "write_seconds"} <= line.keys()
    assert all(not isinstance(value, bytes) for value in line.values())


@pytest.mark.parametrize(
    ("fault", "outcome", "timeout"),
    [
        ("refuse", "unreachable", 2.0),
        ("reset", "reset", 2.0),
        ("garbage", "malformed", 2.0),
        ("silence", "timeout", 0.3),
        ("slow", "timeout", 0.3),
    ],
)
async def test_an_ofd_fault_leaves_the_fn_queue_intact_and_the_relay_recovers(
    device: KktDevice,
    ofd: MockOfd,
    audit: MemoryAudit,
    make_relay: RelayFactory,
    fault: Fault,
    outcome: str,
    timeout: float,
) -> None:
    messages = offered_messages(device)
    relay = make_relay(timeout=timeout)
    await ofd.set_fault(fault)
    for _ in range(2):
        await relay.step()
    assert [r.outcome for r in audit.records] == [outcome, outcome]
    assert all(r.answer is None for r in audit.records)
    assert unsent(device) == UNSENT
    assert (device.ofd.answers, device.ofd.refused, device.ofd.stats["blocks_written"]) == (
        {},
        [],
        0,
    )
    assert ofd.messages == ([] if fault == "refuse" else [messages[0]] * 2)  # offered again
    assert relay.status().consecutive_failures == 2
    assert relay.status().outcomes == {outcome: 2}
    await ofd.set_fault(None)
    await steps_until_drained(relay, device)
    assert ofd.messages[-UNSENT:] == messages
    assert sorted(device.ofd.answers.values()) == sorted(ofd.answers)
    assert relay.status().consecutive_failures == 0


async def test_the_breaker_opens_after_three_failures_and_a_probe_closes_it(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory, clock: FakeClock
) -> None:
    relay = make_relay()
    await ofd.set_fault("garbage")
    delays = [(await relay.step())[0] for _ in range(3)]
    assert delays == [0.05, 0.1, 0.2]  # backoff base 0.05, max 0.2, no jitter
    assert relay.status().breaker == "open"
    executed = device.executed[OfdCommand.BUFFER_STATUS]
    assert await relay.step() == (5.0, False)  # open: no OFD call and no FN read at all
    assert (ofd.connections, device.executed[OfdCommand.BUFFER_STATUS]) == (3, executed)
    await ofd.set_fault(None)
    clock.now += 5.0
    assert await relay.step() == (0.0, False)  # the probe relayed a message
    assert (relay.status().breaker, relay.status().backoff_seconds) == ("closed", 0.0)
    assert unsent(device) == UNSENT - 1


async def test_an_answer_the_fn_refuses_is_audited_and_the_message_offered_again(
    device: KktDevice, ofd: MockOfd, audit: MemoryAudit, make_relay: RelayFactory
) -> None:
    device.ofd.reject_answers = 1
    relay = make_relay()
    assert await relay.step() == (0.05, False)
    refused = audit.records[-1]
    assert (refused.outcome, refused.answer) == ("fn_refused", ofd.answers[0])
    assert "0x20" in str(refused.error)
    assert relay.status().breaker == "closed"  # the OFD did answer well
    await relay.step()
    assert audit.records[-1].outcome == "relayed"
    assert ofd.messages[0] == ofd.messages[1]
    assert unsent(device) == UNSENT - 1


async def test_a_busy_kkt_is_asked_again(
    device: KktDevice, link: KktLink, audit: MemoryAudit, make_relay: RelayFactory
) -> None:
    await link.connect()
    device.busy(3)  # "printing": FF30 answered 50h three times
    await make_relay().step()
    assert [r.outcome for r in audit.records] == ["relayed"]
    assert device.faults.busy == 0


async def test_nothing_on_offer_means_no_ofd_call(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory
) -> None:
    device.confirm_ofd()
    relay = make_relay()
    assert await relay.step() == (0.05, True)
    assert ofd.connections == 0
    assert relay.status().pending_bytes == 0
    assert relay.status().backlog == 0


async def test_mode_off_touches_neither_the_kkt_nor_the_ofd(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory
) -> None:
    relay = make_relay(mode="off")
    assert await relay.step() == (0.05, True)
    assert (sum(device.executed.values()), ofd.connections) == (0, 0)
    assert relay.status().enabled is False


async def test_reconfigure_turns_the_relay_on_and_points_it_at_another_ofd(
    device: KktDevice, make_relay: RelayFactory
) -> None:
    relay = make_relay(mode="off")
    async with MockOfd() as other:
        relay.reconfigure(OfdConfig("relay", "127.0.0.1", other.port, 2.0))
        await relay.step()
        assert len(other.messages) == 1
        assert relay.status().ofd == f"127.0.0.1:{other.port}"
    assert unsent(device) == UNSENT - 1


async def test_the_kkt_vanishing_is_waited_out_and_nothing_is_lost(
    device: KktDevice, kkt: PtyEmulator, ofd: MockOfd, make_relay: RelayFactory
) -> None:
    relay = make_relay()
    await relay.step()
    kkt.vanish()
    with capture_logs() as logs:
        assert await relay.step() == (0.05, True)
    assert [e["event"] for e in logs if e["event"].startswith("ofd.")] == ["ofd.fn_unavailable"]
    kkt.reappear()

    async def relayed() -> bool:
        if not unsent(device):
            return True
        await relay.step()
        return False

    # the link reconnects after its own backoff (1 s)
    await wait_until(relayed, timeout=20, interval=0.05, detail=lambda: f"{unsent(device)} left")
    assert unsent(device) == 0
    assert len(set(ofd.messages)) == UNSENT


async def test_it_beats_at_least_once_a_second_while_the_ofd_is_slow(
    device: KktDevice, ofd: MockOfd, audit: MemoryAudit, make_relay: RelayFactory
) -> None:
    ofd.slow_seconds = 2.5
    await ofd.set_fault("slow", times=1)
    beats = await run_until(make_relay(timeout=10), lambda: len(audit.records) >= 1)
    assert audit.records[0].outcome == "relayed"
    assert audit.records[0].ofd_seconds >= 0  # injected clock: exact timings are not the point
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 3
    assert max(gaps) < 1.5


async def test_a_failing_audit_sink_does_not_stop_the_relay(
    device: KktDevice, make_relay: RelayFactory
) -> None:
    class Broken:
        async def record_ofd_exchange(self, record: ExchangeRecord) -> None:
            raise OSError("disk full")

    relay = make_relay()
    relay._audit = Broken()  # the fixture's wiring, another sink
    with capture_logs() as logs:
        await steps_until_drained(relay, device)
    assert sum(e["event"] == "ofd.audit_failed" for e in logs) == UNSENT


def test_the_session_messages_carry_the_fds_in_order(device: KktDevice) -> None:
    bodies = [split_session(m)[1] for m in offered_messages(device)]
    assert [int.from_bytes(b[:4], "little") for b in bodies] == [
        d.fd for d in device.documents[-UNSENT:]
    ]


async def test_a_kkt_set_to_talk_to_the_ofd_itself_is_reported(
    device: KktDevice, make_relay: RelayFactory
) -> None:
    device.ofd.tables[TableField(21, 1, 2)] = b"\x01"
    relay = make_relay()
    with capture_logs() as logs:
        await relay.step()
    assert "ofd.kkt_not_in_relay_mode" in [e["event"] for e in logs]
    assert relay.status().exchange_mode == 1


async def test_firmware_without_the_tables_still_relays(
    device: KktDevice, audit: MemoryAudit, make_relay: RelayFactory
) -> None:
    device.ofd.tables.clear()  # every 1F answered 33h
    relay = make_relay()
    await relay.step()
    assert (relay.status().exchange_mode, relay.status().kkt_ofd_server) == (None, None)
    assert [r.outcome for r in audit.records] == ["relayed"]


async def _open_breaker(relay: OfdRelay, ofd: MockOfd, clock: FakeClock) -> None:
    """Three failed exchanges open the breaker; 5 s later it is half open."""
    await ofd.set_fault("garbage")
    for _ in range(3):
        await relay.step()
    assert relay.status().breaker == "open"
    await ofd.set_fault(None)
    clock.now += 5.0
    assert relay.breaker.state.value == "half_open"


async def test_a_probe_that_raises_oserror_reopens_the_breaker_and_the_next_probe_relays(
    device: KktDevice,
    ofd: MockOfd,
    audit: MemoryAudit,
    make_relay: RelayFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = make_relay()
    await _open_breaker(relay, ofd, clock)

    async def no_route(*args: object, **kwargs: object) -> bytes:
        raise OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))

    monkeypatch.setattr(relay_module, "exchange", no_route)
    with contextlib.suppress(OSError):  # main let it escape; the breaker must not care either way
        await relay.step()
    monkeypatch.undo()
    clock.now += 5.0
    assert await relay.step() == (0.0, False)  # the next probe reaches the OFD
    assert relay.status().breaker == "closed"
    assert unsent(device) == UNSENT - 1
    failed = audit.records[-2]  # the probe: a failure of the OFD leg, audited and backed off
    assert (failed.outcome, failed.answer) == ("unreachable", None)
    assert "No route to host" in str(failed.error)


async def test_a_probe_that_raises_anything_frees_the_probe_slot(
    device: KktDevice,
    ofd: MockOfd,
    make_relay: RelayFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = make_relay()
    await _open_breaker(relay, ofd, clock)

    async def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(relay_module, "exchange", broken)
    with pytest.raises(RuntimeError):
        await relay.step()  # the supervisor logs it and runs the relay again
    monkeypatch.undo()
    assert relay.breaker.state.value == "half_open"  # no verdict, but the slot is free
    assert await relay.step() == (0.0, False)
    assert relay.status().breaker == "closed"
    assert unsent(device) == UNSENT - 1


async def test_a_wedged_step_is_cancelled_at_its_deadline_and_the_relay_carries_on(
    device: KktDevice,
    ofd: MockOfd,
    audit: MemoryAudit,
    make_relay: RelayFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wedged = asyncio.Event()
    real = client_exchange  # what kktd.ofd.relay calls

    async def wedge_once(*args: Any, **kwargs: Any) -> bytes:
        if not wedged.is_set():
            wedged.set()
            await asyncio.Event().wait()  # an await with no timeout of its own that never ends
        return await real(*args, **kwargs)

    monkeypatch.setattr(relay_module, "exchange", wedge_once)
    relay = make_relay(step_deadline=0.5)
    with capture_logs() as logs:
        await run_until(relay, lambda: len(audit.records) == UNSENT, seconds=20)
    assert [e["event"] for e in logs].count("ofd.step_timed_out") == 1
    assert relay.breaker.state.value == "closed"
    assert [r.outcome for r in audit.records] == ["relayed"] * UNSENT
    assert unsent(device) == 0
