"""Chaos scenarios of issue 11 for the journal: damaged under a running kktd, full disk at start.

Both run on the parts of `scenarios.run_scenario` and end with its invariants (every FD journaled
once; accepted once, or dead only with the upstream's reason; no exit the harness did not cause).
Each adds the health invariant: within `HEALTH_WITHIN` of the fault, /v1/health says what is
true, and /v1/status keeps answering. Neither fault is a planned exit: kktd recovers in-process
and starts degraded, so any exit of its own is a violation like in every other scenario.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kktd.cli.client import ApiClient, ApiError, DaemonUnreachable
from kktd.testbed.mock_upstream import MockUpstream
from tests.chaos.scenarios import Setup, run_scenario
from tests.chaos.world import Kktd, Report
from tests.support.faults import damage_table, fill, tmpfs

HEALTH_WITHIN = 60.0
FLOW = 1.5  # seconds of receipts between two faults
TABLES = ("documents", "cursors")


async def _get(node: Kktd, path: str) -> dict[str, Any] | None:
    try:
        async with ApiClient(node.api, timeout=3.0) as api:
            return await api.call("GET", path)
    except (DaemonUnreachable, ApiError, OSError, TimeoutError):
        return None


async def _health_shows(
    node: Kktd, what: str, truth: Callable[[dict[str, Any]], bool], since: float
) -> None:
    """Poll health until `truth` holds; a violation when it does not within HEALTH_WITHIN of
    `since`, or when /v1/status stops answering meanwhile."""
    while True:
        health = await _get(node, "/v1/health")
        if health is not None and truth(health):
            return
        if await _get(node, "/v1/status") is None and node.alive:
            node.unexpected.append(f"{node.name}: /v1/status did not answer while {what}")
            return
        if time.monotonic() - since > HEALTH_WITHIN:
            node.unexpected.append(
                f"{node.name}: health not truthful {HEALTH_WITHIN:.0f} s after {what}: {health}"
            )
            return
        await asyncio.sleep(0.2)


def _journal_ok(health: dict[str, Any]) -> bool:
    return bool(health["components"]["journal"] == "ok")


async def journal_damaged(workdir: Path, passes: int) -> Report:
    """A table's b-tree of the live journal damaged (documents, then cursors …), twice a pass:
    kktd replaces the journal in-process and re-reads the FN, every time."""

    async def body(nodes: list[Kktd], _: MockUpstream) -> int:
        (node,) = nodes
        await node.wait_ready()
        damages = 2 * passes
        for damage in range(damages):
            await asyncio.sleep(FLOW)
            copies = len(list(node.journal.parent.glob(f"{node.journal.name}.corrupt-*")))
            await asyncio.to_thread(damage_table, node.journal, TABLES[damage % len(TABLES)])

            def replaced(health: dict[str, Any], before: int = copies) -> bool:
                moved = node.journal.parent.glob(f"{node.journal.name}.corrupt-*")
                return len(list(moved)) > before and _journal_ok(health)

            await _health_shows(node, "the journal was damaged", replaced, time.monotonic())
        return damages

    return await run_scenario("journal_damaged", workdir, Setup(), body)


async def disk_full_start(workdir: Path, passes: int) -> Report:
    """kktd stopped, its journal's file system filled, kktd started (degraded, READY), space
    freed a while later: everything issued meanwhile is journaled and delivered, no restart."""
    directory = workdir / "fs-start"
    async with tmpfs(directory, "16m") as problem:  # 16 MB: the WAL must fit (see disk_full)
        if problem is not None:
            return Report("disk_full_start", notes=[f"skipped: {problem}"])
        filler = directory / "filler"

        async def body(nodes: list[Kktd], _: MockUpstream) -> int:
            (node,) = nodes
            await node.wait_ready()
            for _pass in range(passes):
                await asyncio.sleep(FLOW / 2)
                await node.stop()
                await asyncio.to_thread(fill, filler)
                node.start()
                await node.wait_ready()  # READY on a full disk: a degraded start
                started = time.monotonic()

                def says_full(health: dict[str, Any]) -> bool:
                    return "disk full" in health["components"]["journal"]

                await _health_shows(node, "starting on a full disk", says_full, started)
                await asyncio.sleep(FLOW / 2)  # receipts go on; the FN keeps them
                filler.unlink()
                await _health_shows(node, "space came back", _journal_ok, time.monotonic())
            return passes

        return await run_scenario("disk_full_start", workdir, Setup(journal_dir=directory), body)
