"""`kktd run` in OFD relay mode, SIGKILLed mid-exchange and restarted, loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from kktd.ofd.mock_ofd import MockOfd
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from tests.ofd.conftest import UNSENT, Tripwire, unsent
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess
from tests.support.wait import wait_until


def start_daemon(tmp_path: Path, kkt: PtyEmulator, ofd: MockOfd) -> KktdProcess:
    (tmp_path / "notify.sock").unlink(missing_ok=True)
    extra = f'\n[ofd]\nmode = "relay"\nhost = "127.0.0.1"\nport = {ofd.port}\ntimeout = "5s"\n'
    return KktdProcess(write_config(tmp_path, kkt_port=str(kkt.path), extra=extra))


async def wait_until_drained(device: KktDevice, daemon: KktdProcess, seconds: float) -> None:
    def drained() -> bool:
        assert daemon.alive, daemon.log()
        return not unsent(device)

    await wait_until(
        drained,
        timeout=seconds,
        what="the FN's OFD buffer emptied",
        detail=lambda: f"{unsent(device)} messages left\n{daemon.log()}",
    )


async def test_kktd_killed_while_writing_an_answer_relays_it_again_after_restart(
    device: KktDevice, kkt: PtyEmulator, ofd: MockOfd, tmp_path: Path
) -> None:
    first = device.documents[-UNSENT]
    tripwire = Tripwire(device, device.ofd.block_size)
    device.ofd = tripwire
    daemon = start_daemon(tmp_path, kkt, ofd)
    try:
        tripwire.trip = lambda: os.kill(daemon.pid, signal.SIGKILL)
        code = await asyncio.to_thread(daemon.wait_exit, 60)
        assert code == -signal.SIGKILL, daemon.log()
    finally:
        daemon.close()
    assert unsent(device) == UNSENT  # half an answer is no answer
    assert device.ofd.stats["blocks_written"] == 1
    assert ofd.messages == [device.ofd.message(first)]

    daemon = start_daemon(tmp_path, kkt, ofd)
    try:
        await wait_until_drained(device, daemon, 60)
        assert '"event": "ofd.exchanged"' in daemon.log()
    finally:
        daemon.signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait_exit) == 0
        daemon.close()
    assert ofd.messages[0] == ofd.messages[1]  # the same message, offered again
    assert len(set(ofd.messages)) == UNSENT
    assert sorted(device.ofd.answers.values()) == sorted(set(ofd.answers))
    assert device.ofd.refused == []
