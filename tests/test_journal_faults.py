"""`kktd run` when its journal fails: damaged while it runs, or on a full disk at start (issue 11).

Real parts: the KKT emulator on a pty, the mock upstream on loopback, kktd as a subprocess with a
NOTIFY_SOCKET, a real SQLite file damaged under it, a real tmpfs filled to ENOSPC.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.test_metrics import parse
from tests.support.config import write_config
from tests.support.faults import damage_table, fill, tmpfs
from tests.support.kktd_process import KktdProcess
from tests.support.wait import wait_until

ARCHIVE = 5  # FDs in the FN before kktd first starts (start_fd = "next" leaves them unread)


@dataclass
class Till:
    """An emulated KKT, the mock upstream, and the directory kktd's files live in."""

    dir: Path
    device: KktDevice
    upstream: MockUpstream

    def config(self, journal: Path | None = None) -> Path:
        path = write_config(self.dir, kkt_port=str(self.dir / "kkt0"), upstream=self.upstream.url)
        if journal is not None:
            path.write_text(path.read_text().replace(str(self.dir / "kktd.db"), str(journal)))
        return path

    def accepted(self) -> set[int]:
        return {fd for _, fd in self.upstream.state.accepted}


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[Till]:
    device = KktDevice(archive=ARCHIVE)
    emulator = PtyEmulator(device, link=tmp_path / "kkt0")
    upstream = MockUpstream()
    await emulator.start()
    await upstream.start()
    try:
        yield Till(tmp_path, device, upstream)
    finally:
        await upstream.stop()
        await emulator.stop()


@pytest.fixture
def processes() -> Iterator[list[KktdProcess]]:
    started: list[KktdProcess] = []
    yield started
    for process in started:
        process.close()


async def api(sock: Path, method: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
        session.request(method, f"http://localhost{path}") as resp,
    ):
        body = await resp.text()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json()) if is_json else body


async def start(processes: list[KktdProcess], config: Path) -> KktdProcess:
    """A `kktd run`, ready and with its cursor on the FN (start_fd = "next": new FDs only)."""
    process = KktdProcess(config)
    processes.append(process)
    await asyncio.to_thread(process.wait_ready)

    async def cursor_set() -> bool:
        code, status = await api(process.api_socket, "GET", "/v1/status")
        return code == 200 and status["kkt"]["cursor"] is not None

    await wait_until(cursor_set, timeout=30.0)
    return process


async def test_a_journal_damaged_under_a_running_kktd_is_replaced_and_every_fd_delivered(
    till: Till, processes: list[KktdProcess]
) -> None:
    # Issue 11, item 1: the poller and the sync engine crashed on every run, forever, behind a
    # healthy watchdog, with /v1/health saying "journal: ok".
    kktd = await start(processes, till.config())
    for _ in range(3):
        till.device.issue()
    await wait_until(lambda: till.accepted() >= {6, 7, 8}, timeout=30.0)

    damage_table(till.dir / "kktd.db", "documents")
    for _ in range(2):
        till.device.issue()
    answers: list[int] = []

    async def recovered_and_delivered() -> bool:
        for path in ("/v1/status", "/metrics", "/v1/health"):
            answers.append((await api(kktd.api_socket, "GET", path))[0])
        moved = list(till.dir.glob("kktd.db.corrupt-*"))
        return bool(moved) and till.accepted() >= set(range(1, 11))

    await wait_until(recovered_and_delivered, timeout=30.0)
    assert set(answers) == {200}  # status and metrics answered throughout
    assert kktd.alive  # in-process: no restart
    status = (await api(kktd.api_socket, "GET", "/v1/status"))[1]
    assert status["journal"]["recovery"]["moved_to"].startswith(str(till.dir / "kktd.db.corrupt-"))
    line = await asyncio.to_thread(kktd.wait_for, lambda m: "journal was damaged and replaced" in m)
    _, health = await api(kktd.api_socket, "GET", "/v1/health")
    assert health["components"]["journal"] == "ok"
    assert health["components"]["supervisor"] == "ok"
    # FDs 1-5 predate the first start: only the re-read of the FN archive delivered them
    assert '"kkt.archive_reread"' in kktd.log()

    code, _ = await api(kktd.api_socket, "POST", "/v1/journal/recovery/ack")
    assert code == 200
    await asyncio.to_thread(
        kktd.wait_for, lambda m: m.startswith("STATUS=") and "damaged" not in m, 15.0, line + 1
    )


async def test_a_full_disk_at_start_is_a_degraded_start_that_heals_without_a_restart(
    till: Till, processes: list[KktdProcess]
) -> None:
    # Issue 11, item 3: opening failed with SQLITE_IOERR_SHMSIZE, kktd exited 1, and the unit's
    # start limit left it failed for good, also after the space was freed.
    async with tmpfs(till.dir / "fs", "2m") as problem:
        if problem is not None:
            pytest.skip(f"needs a real full file system (root, for a tmpfs): {problem}")
        journal = till.dir / "fs" / "kktd.db"
        config = till.config(journal)
        first = await start(processes, config)
        till.device.issue()
        await wait_until(lambda: 6 in till.accepted(), timeout=30.0)
        first.signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait_exit) == 0
        first.close()
        first.sock_path.unlink()  # the next kktd's NOTIFY_SOCKET

        filler = till.dir / "fs" / "filler"
        fill(filler)
        for _ in range(2):  # receipts printed while kktd is down: the FN keeps them
            till.device.issue()
        kktd = KktdProcess(config)
        processes.append(kktd)
        ready = await asyncio.to_thread(kktd.wait_ready)
        full = f"journal unavailable: disk full ({journal}, 0 bytes free)"
        assert full in kktd.messages[ready][1]  # the READY=1 datagram carries STATUS=
        _, health = await api(kktd.api_socket, "GET", "/v1/health")
        assert health["status"] == "degraded"
        assert health["components"]["journal"] == f"error: {full}"
        code, body = await api(kktd.api_socket, "GET", "/v1/kkt/buffer/status")
        assert (code, body["error"], body["cause"]) == (503, "journal_unavailable", "full")
        code, status = await api(kktd.api_socket, "GET", "/v1/status")
        assert (code, status["journal"]["error"]) == (200, full)
        code, metrics = await api(kktd.api_socket, "GET", "/metrics")
        assert code == 200
        assert parse(metrics)[("kktd_journal_state", (("state", "full"),))] == 1

        filler.unlink()  # space returns
        await wait_until(lambda: till.accepted() >= {7, 8}, timeout=30.0)
        _, health = await api(kktd.api_socket, "GET", "/v1/health")
        assert health["components"]["journal"] == "ok"
        assert kktd.alive
        assert sum("READY=1" in m.split("\n") for _, m in kktd.messages) == 1  # no restart
        assert re.search(r'"event": "journal.available"', kktd.log())
        kktd.signal(signal.SIGTERM)
        assert await asyncio.to_thread(kktd.wait_exit) == 0
