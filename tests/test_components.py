"""Wiring: what the daemon's components do between them (retention, the instance lock)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from kktd.config import JournalConfig
from kktd.journal import Journal
from kktd.lifecycle.components import Components, StartupError, hold_instance_lock
from kktd.sync.client import UpstreamClient
from tests.api.helpers import FN, build_daemon, journal_fds, make_config
from tests.support.wait import wait_until


async def test_retention_prunes_old_synced_fds_and_keeps_pending_and_dead(
    tmp_path: Path,
) -> None:
    config = make_config(
        tmp_path,
        "http://127.0.0.1:9/v1/receipts",
        journal=JournalConfig(path=tmp_path / "kktd.db", retention_days=30),
    )
    daemon = await build_daemon(config)
    components = daemon.components
    assert components is not None
    try:
        journal = components.journal
        await journal_fds(daemon, 1, 2, 3, 4)
        long_ago = time.time() - 31 * 86400
        await journal.mark_synced(FN, 1, long_ago)  # older than retention: pruned
        await journal.mark_synced(FN, 2, time.time())  # recent: kept
        await journal.mark_dead(FN, 3, "rejected")  # dead: kept, however old
        runner = asyncio.create_task(components.retention(lambda: None))
        try:

            async def pruned() -> bool:
                return await journal.get(FN, 1) is None

            await wait_until(pruned)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        kept = [fd for fd in (2, 3, 4) if await journal.get(FN, fd) is not None]
        assert kept == [2, 3, 4]
    finally:
        await components.close()


def test_the_instance_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    journal = tmp_path / "kktd.db"
    fd = hold_instance_lock(journal)
    try:
        with pytest.raises(StartupError, match=r"another kktd \(pid \d+\)"):
            hold_instance_lock(journal)
    finally:
        os.close(fd)
    os.close(hold_instance_lock(journal))  # free again once the holder is gone


async def test_a_failed_build_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9/v1/receipts")
    closed: list[str] = []
    real_close = Journal.close

    async def close(self: Journal) -> None:
        closed.append("journal")
        await real_close(self)

    async def refuse(self: UpstreamClient) -> None:
        raise OSError("no session today")

    monkeypatch.setattr(Journal, "close", close)
    monkeypatch.setattr(UpstreamClient, "start", refuse)
    with pytest.raises(OSError, match="no session today"):
        await Components.build(config, "till-1")
    assert closed == ["journal"]
    monkeypatch.undo()
    again = await Components.build(config, "till-2")  # the instance lock was released too
    await again.close()


@pytest.mark.parametrize(("redis_url", "gated"), [("", False), ("redis://127.0.0.1:1/0", True)])
async def test_the_write_gate_is_wired_exactly_where_a_lease_can_end(
    tmp_path: Path, redis_url: str, gated: bool
) -> None:
    """Issue 16: with a Redis lock every request asks the lease right before its first byte;
    only the in-process lock, whose lease never ends, goes without that check (issue 14)."""
    config = make_config(tmp_path, "http://127.0.0.1:9/v1/receipts")
    config = dataclasses.replace(config, lock=dataclasses.replace(config.lock, redis_url=redis_url))
    components = await Components.build(config, "till-1")
    try:
        assert components.client.gates_writes is gated
    finally:
        await components.close()
