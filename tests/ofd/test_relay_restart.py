"""A relay stopped dead mid-exchange (task cancelled, or its process SIGKILLed) loses nothing.

The FN keeps its message until it has the OFD's answer, so a relay started afterwards finds
the same message on offer, relays it again and the backlog drains. Two moments are pinned:
while the OFD is being waited for, and after the first FF33 block of the answer went in.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Literal

import pytest

from kktd.ofd.mock_ofd import MockOfd
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from tests.ofd.conftest import UNSENT, RelayFactory, Stop, Tripwire, run_until, unsent

WORKER = Path(__file__).with_name("relay_worker.py")
ROOT = Path(__file__).parents[2]

Moment = Literal["awaiting_ofd", "writing_answer"]


def arm(moment: Moment, device: KktDevice, ofd: MockOfd, stop: Stop) -> asyncio.Task[None] | None:
    """Make `stop` happen at `moment` of the first exchange; the watcher task, if one is needed.

    The OFD is set to silence first when the moment is while it is awaited.
    """
    if moment == "writing_answer":
        tripwire = Tripwire(device, device.ofd.block_size)
        tripwire.trip = stop
        device.ofd = tripwire
        return None

    async def on_message() -> None:
        await ofd.received.wait()
        stop()

    return asyncio.create_task(on_message())


async def check_nothing_lost(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory, moment: Moment
) -> None:
    """The first message is still on offer; a new relay drains everything, byte for byte."""
    first = device.documents[-UNSENT]
    assert unsent(device) == UNSENT
    assert ofd.messages == [device.ofd.message(first)]
    if moment == "writing_answer":
        assert device.ofd.stats["blocks_written"] == 1
    await ofd.set_fault(None)
    await run_until(make_relay(), lambda: unsent(device) == 0)
    assert ofd.messages[0] == ofd.messages[1]  # the same message, offered again
    assert len(set(ofd.messages)) == UNSENT
    assert sorted(device.ofd.answers.values()) == sorted(set(ofd.answers))
    assert device.ofd.refused == []


@pytest.mark.parametrize("moment", ["awaiting_ofd", "writing_answer"])
async def test_a_cancelled_relay_loses_nothing(
    device: KktDevice, ofd: MockOfd, make_relay: RelayFactory, moment: Moment
) -> None:
    if moment == "awaiting_ofd":
        await ofd.set_fault("silence")
    task = asyncio.create_task(make_relay(timeout=30).run(lambda: None))
    watcher = arm(moment, device, ofd, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    if watcher is not None:
        await watcher
    await check_nothing_lost(device, ofd, make_relay, moment)


@pytest.mark.parametrize("moment", ["awaiting_ofd", "writing_answer"])
async def test_a_relay_killed_with_sigkill_loses_nothing(
    device: KktDevice,
    kkt: PtyEmulator,
    ofd: MockOfd,
    make_relay: RelayFactory,
    tmp_path: Path,
    moment: Moment,
) -> None:
    if moment == "awaiting_ofd":
        await ofd.set_fault("silence")
    with (tmp_path / "worker.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            str(kkt.path),
            str(ofd.port),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    watcher = arm(moment, device, ofd, lambda: os.kill(process.pid, signal.SIGKILL))
    try:
        assert await asyncio.wait_for(process.wait(), 60) == -signal.SIGKILL
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if watcher is not None:
        await watcher
    await check_nothing_lost(device, ofd, make_relay, moment)
