"""The poller and the relay share one KktLink while receipts are issued: neither corrupts the other.

Every multi-command sequence holds the link, so an FD read (FF3A, FF3B ...) and a message read
(FF30, FF31 ...) or an answer write (FF32, FF33 ...) never have a foreign command inside them.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from kktd.config import KktConfig
from kktd.journal import Journal
from kktd.kkt.commands import Command, Response
from kktd.kkt.link import KktLink
from kktd.kkt.ofd_protocol import OfdCommand
from kktd.kkt.poller import Poller
from kktd.ofd.audit import MemoryAudit
from kktd.ofd.mock_ofd import MockOfd, receipt_for
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from tests.ofd.conftest import UNSENT, RelayFactory, unsent
from tests.support.wait import wait_until

RECEIPTS = 30
RATE = 25.0  # FDs per second, issued while the relay works

# command -> the commands that may come just before it on the line
SEQUENCES: dict[int, set[int]] = {
    OfdCommand.READ_BLOCK: {OfdCommand.BUFFER_STATUS, OfdCommand.READ_BLOCK},
    OfdCommand.WRITE_BLOCK: {OfdCommand.START_ANSWER, OfdCommand.WRITE_BLOCK},
    Command.READ_TLV: {Command.OPEN_FD_TLV, Command.READ_TLV},
}
POLLER: set[int] = {Command.FN_STATUS, Command.OPEN_FD_TLV, Command.READ_TLV}
RELAY: set[int] = {OfdCommand.BUFFER_STATUS, OfdCommand.READ_BLOCK, OfdCommand.START_ANSWER}


def spy_on(link: KktLink) -> list[int]:
    """Record every command the link sends, in the order they go on the line."""
    sent: list[int] = []
    request = link.request

    async def recording(cmd: int, data: bytes = b"", **kwargs: Any) -> Response:
        async with link.exclusive():  # the order of the line, not of the callers' wishes
            sent.append(cmd)
            return await request(cmd, data, **kwargs)

    link.request = recording  # type: ignore[method-assign]
    return sent


async def test_receipts_issued_while_messages_are_relayed_all_arrive_intact(
    device: KktDevice,
    kkt: PtyEmulator,
    link: KktLink,
    journal: Journal,
    ofd: MockOfd,
    audit: MemoryAudit,
    make_relay: RelayFactory,
) -> None:
    sent = spy_on(link)
    relay = make_relay()
    config = KktConfig(port=str(kkt.path), poll_interval=0.05, start_fd="first")
    poller = Poller(link, journal, config, on_journaled=relay.wake)
    issuing = kkt.issue_at_rate(RATE, count=RECEIPTS)
    tasks = [
        asyncio.create_task(poller.run(lambda: None)),
        asyncio.create_task(relay.run(lambda: None)),
    ]

    def settled() -> bool:
        assert not any(task.done() for task in tasks)
        return issuing.done() and unsent(device) == 0 and poller.status().cursor == device.last_fd

    try:
        await wait_until(
            settled, timeout=60, interval=0.05, detail=lambda: (unsent(device), poller.status())
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # The poller journaled every FD exactly as the FN holds it.
    for document in device.documents:
        entry = await journal.get(device.fn, document.fd)
        assert entry is not None
        assert entry.raw == document.raw
    # The relay carried every message once and every answer went back whole.
    relayed = device.documents[-(UNSENT + RECEIPTS) :]
    assert ofd.messages == [device.ofd.message(d) for d in relayed]
    assert [device.ofd.answers[d.fd] for d in relayed] == [receipt_for(m) for m in ofd.messages]
    assert device.ofd.refused == []
    assert {r.outcome for r in audit.records} == {"relayed"}
    assert device.stats["bad_frames"] == 0
    # No foreign command ever landed inside a sequence ...
    for before, cmd in itertools.pairwise(sent):
        assert before in SEQUENCES.get(cmd, {before}), (hex(before), hex(cmd))
    # ... and the two really took turns on the line.
    owners = [("poller" if c in POLLER else "relay") for c in sent if c in POLLER | RELAY]
    turns = sum(a != b for a, b in itertools.pairwise(owners))
    assert turns >= 10
