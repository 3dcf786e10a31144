"""The status snapshot, the fleet heartbeat record and the STATUS= line (SPEC sections 6, 7)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kktd.cli.render import advice
from kktd.control.runtime import ReloadResult
from kktd.control.status import heartbeat, snapshot, status_line
from kktd.journal import RecoveryRecord
from kktd.kkt.commands import Command, ErrorCode, Request, fd_request
from kktd.kkt.poller import Poller
from kktd.lifecycle.daemon import Daemon
from kktd.testbed.emulator.device import DEFAULT_DEVICE_TYPE, KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import (
    FN,
    build_daemon,
    journal_fds,
    kkt_config,
    make_config,
    polled_kkt,
    upstream,
)
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess
from tests.support.wait import wait_until

__all__ = ["upstream"]  # a fixture

MODEL = DEFAULT_DEVICE_TYPE.name  # "ШТРИХ-М-01Ф (эмулятор kktd)"


@pytest.fixture
async def daemon(tmp_path: Path, upstream: MockUpstream) -> AsyncIterator[Daemon]:
    built = await build_daemon(make_config(tmp_path, upstream.url, kkt=kkt_config(tmp_path)))
    yield built
    assert built.components is not None
    await built.components.close()


async def test_the_line_of_a_daemon_without_a_kkt(daemon: Daemon) -> None:
    assert await status_line(daemon.runtime) == "KKT offline, pending 0, dead 0, upstream ok"


async def test_the_line_changes_with_counts_not_with_time(daemon: Daemon) -> None:
    first = await status_line(daemon.runtime)
    await asyncio.sleep(0.01)
    assert await status_line(daemon.runtime) == first
    await journal_fds(daemon, 1, 2)
    assert daemon.components is not None
    await daemon.components.journal.mark_dead(FN, 2, "bad")
    assert await status_line(daemon.runtime) == "KKT offline, pending 1, dead 1, upstream ok"


async def test_the_line_says_the_upstream_circuit_is_open(
    daemon: Daemon, upstream: MockUpstream
) -> None:
    await journal_fds(daemon, 1, 2, 3)
    await upstream.go_down()
    assert daemon.components is not None
    await daemon.components.engine.sync_now()
    assert "upstream circuit open" in await status_line(daemon.runtime)


async def test_the_line_says_a_failed_reload_and_a_recovered_journal(daemon: Daemon) -> None:
    daemon.last_reload = ReloadResult(
        ok=False, at=0.0, error="kktd.toml:5: sync.batch_sise: unknown key", key="sync.batch_sise"
    )
    assert await status_line(daemon.runtime) == (
        "KKT offline, pending 0, dead 0, upstream ok,"
        " config reload FAILED (sync.batch_sise), old config running"
    )
    assert daemon.components is not None
    daemon.components.journal.recovery = RecoveryRecord(time.time(), "kktd.db.corrupt-1", "bad")
    assert (await status_line(daemon.runtime)).endswith(
        "old config running, journal was damaged and replaced: see kktd status"
    )


async def test_the_line_names_the_cyrillic_model_and_an_aging_fn_backlog(daemon: Daemon) -> None:
    old = datetime.now().replace(microsecond=0) - timedelta(days=26)
    device = KktDevice(DocumentGenerator(wall=lambda: old), archive=1)
    device.issue()
    assert daemon.components is not None
    poller = daemon.components.poller
    async with polled_kkt(daemon, device):
        await wait_until(lambda: read_through(poller, device))
        line = await status_line(daemon.runtime)
    assert line.startswith(f"KKT online ({MODEL}), pending 2, dead 0, upstream ok")
    assert line.endswith("FN backlog error: 4 days left")


class FailingFd(KktDevice):
    """A KKT whose FD 2 can never be opened as TLV: the poller is stuck behind it."""

    def _execute(self, request: Request) -> tuple[int, bytes]:
        if request.cmd == Command.OPEN_FD_TLV and request.data == fd_request(2):
            return ErrorCode.NO_TRANSPORT, b""
        return super()._execute(request)


async def test_the_line_and_the_advice_say_when_an_fd_cannot_be_read(daemon: Daemon) -> None:
    assert daemon.components is not None
    poller = daemon.components.poller
    async with polled_kkt(daemon, FailingFd(archive=3)):
        await wait_until(lambda: poller.status().last_error is not None)
        line = await status_line(daemon.runtime)
        status = await snapshot(daemon.runtime)
    assert "KKT reads failing at FD 2" in line
    assert status["kkt"]["stuck_at_fd"] == 2
    assert any("FD 2 cannot be read" in todo for todo in advice(status))


def read_through(poller: Poller, device: KktDevice) -> bool:
    """FF39 read and every FD journaled (stored, not only read), in whichever order they came."""
    status = poller.status()
    return status.ofd is not None and status.journaled == device.last_fd


async def test_snapshot_and_heartbeat_carry_the_kkt_and_fn_state(daemon: Daemon) -> None:
    old = datetime.now().replace(second=0, microsecond=0) - timedelta(days=5)  # DATE_TIME5: minutes
    device = KktDevice(DocumentGenerator(wall=lambda: old), archive=2)
    device.issue()
    assert daemon.components is not None
    poller = daemon.components.poller
    async with polled_kkt(daemon, device):
        await wait_until(lambda: read_through(poller, device))
        status = await snapshot(daemon.runtime)
        beat = await heartbeat(daemon.components)
    assert status["kkt"]["connected"] is True
    assert status["kkt"]["model"] == MODEL
    assert status["kkt"]["fn"] == device.fn
    assert status["kkt"]["last_fd"] == 3
    assert status["journal"]["journaled_total"] == 3
    assert status["fn"]["level"] == "warning"
    assert status["fn"]["unsent"] == 1
    assert status["fn"]["oldest_unsent_at"] == old.isoformat()
    assert 24.9 < status["fn"]["days_left"] < 25.1
    assert beat["instance"] == "till-1"
    assert (beat["fn"], beat["pending"], beat["dead"]) == (device.fn, 3, 0)
    assert (beat["kkt_connected"], beat["breaker"], beat["fn_level"]) == (True, "closed", "warning")
    assert 4.9 * 86400 < beat["fn_backlog_age_seconds"] < 5.1 * 86400


async def test_cyrillic_model_reaches_notify_socket_intact(tmp_path: Path) -> None:
    emulator = PtyEmulator(KktDevice(archive=2), link=tmp_path / "kkt0")
    await emulator.start()
    process = KktdProcess(write_config(tmp_path, kkt_port=str(tmp_path / "kkt0")))
    try:
        index = await asyncio.to_thread(
            process.wait_for, lambda m: f"STATUS=KKT online ({MODEL})" in m, 30.0
        )
    finally:
        process.close()
        await emulator.stop()
    assert MODEL in process.messages[index][1]


async def test_status_is_sent_when_the_kkt_comes_online_and_only_when_it_changes(
    tmp_path: Path,
) -> None:
    process = KktdProcess(write_config(tmp_path, kkt_port=str(tmp_path / "kkt0")))
    emulator = PtyEmulator(KktDevice(archive=2), link=tmp_path / "kkt0")
    try:
        ready = await asyncio.to_thread(process.wait_ready)
        assert "STATUS=KKT offline" in process.messages[ready][1]
        await emulator.start()
        online = await asyncio.to_thread(
            process.wait_for, lambda m: m.startswith(f"STATUS=KKT online ({MODEL})"), 30.0, ready
        )
        assert online > ready  # a STATUS= of its own, not the READY=1 line
    finally:
        process.close()
        await emulator.stop()
    lines = [m for _, m in process.messages if m.startswith("STATUS=")]
    assert all(a != b for a, b in itertools.pairwise(lines)), lines
