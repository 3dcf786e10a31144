"""Chaos scenarios of issue 11 for delivery: upstream-wide failures and wall-clock steps.

`systemic`: the collector is replaced, a while at a time, by a framework's 404 page, a proxy's
400 page, a redirect and a load balancer answering 503 through many breaker cycles. None of
these is a verdict on an FD: every FD must be delivered once it is over, and none may be dead.

`clock`: kktd's wall clock (libfaketime, steered through a file the harness rewrites) jumps a day
ahead, then a day behind, each time while deliveries fail, and is then set right. FDs scheduled
under the wrong clock must be delivered within the drain time, not a day later.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

from kktd.testbed.mock_upstream import MockUpstream
from tests.chaos.scenarios import Setup, run_scenario
from tests.chaos.world import Kktd, Report, read_journal, replace_file
from tests.support.wait import WaitTimeoutError, wait_until

# low enough that counting a probe or a page against an FD would kill it within one outage
MAX_ATTEMPTS = 5
FAKETIME_GLOB = "*/faketime/libfaketime.so.1"  # under /usr/lib (Debian's multiarch path)
STAND_INS: list[tuple[dict[str, object], float]] = [
    ({"not_found_page": True}, 1.5),
    ({"proxy_page": True}, 1.5),
    ({"redirect": 308}, 1.5),
    ({"gateway_down": True}, 5.0),  # five breaker cycles of 1 s
]
CLOCK_STEPS = ("+1d", "-1d")  # libfaketime offsets from the true time
CLOCK_RATE = 1.0  # receipts a second: under libfaketime kktd reads slower, and the drain is 30 s
COLLECTOR_BACK = {"not_found_page": False, "proxy_page": False, "redirect": 0}


async def systemic(workdir: Path, passes: int) -> Report:
    """Pages, a redirect and a 503 gateway in turn, each a while, receipts flowing: 0 dead."""
    seen: list[Kktd] = []

    async def body(nodes: list[Kktd], mock: MockUpstream) -> int:
        seen.extend(nodes)
        (node,) = nodes
        await node.wait_ready()
        await few_attempts(node)
        for _pass in range(passes):
            for switches, seconds in STAND_INS:
                mock.state.faults.update(switches)
                await asyncio.sleep(seconds)
                mock.state.faults.update({**COLLECTOR_BACK, "gateway_down": False})
                await asyncio.sleep(0.5)
        return passes * len(STAND_INS)

    report = await run_scenario("systemic", workdir, Setup(), body)
    report.violations += none_dead(seen)
    return report


async def clock(workdir: Path, passes: int) -> Report:
    """The wall clock a day ahead, then a day behind, while deliveries fail; then set right."""
    library = next((str(p) for p in sorted(Path("/usr/lib").glob(FAKETIME_GLOB))), None)
    if library is None:
        return Report("clock", notes=["skipped: libfaketime is not installed"])
    offset = workdir / "faketime"
    set_offset(offset, "+0")
    env = {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_CACHE_DURATION": "1",  # the file is read again each second
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timers, the breaker and the watchdog stay true
    }
    seen: list[Kktd] = []

    async def body(nodes: list[Kktd], mock: MockUpstream) -> int:
        seen.extend(nodes)
        (node,) = nodes
        await node.wait_ready()
        steps = 0
        for _pass in range(passes):
            for step in CLOCK_STEPS:
                # failures while the clock is off schedule the next attempts by that clock
                mock.state.faults.update({"gateway_down": True})
                set_offset(offset, step)
                await asyncio.sleep(1.5)  # libfaketime reads its file once a second
                if not await failed_twice(mock):
                    node.unexpected.append(f"harness: no delivery failed at {step}")
                set_offset(offset, "+0")  # NTP sets it right
                mock.state.faults.update({"gateway_down": False})
                await asyncio.sleep(1.5)
                steps += 2
        return steps

    report = await run_scenario("clock", workdir, Setup(env=env, rate=CLOCK_RATE), body)
    report.violations += none_dead(seen)
    return report


async def failed_twice(mock: MockUpstream, within: float = 10.0) -> bool:
    """Wait until two more deliveries have been answered 503 (True), or `within` passes."""
    mark = len(mock.state.requests)
    try:
        await wait_until(
            lambda: sum(1 for r in mock.state.requests[mark:] if r.status == 503) >= 2,
            timeout=within,
            interval=0.05,
        )
    except WaitTimeoutError:
        return False
    return True


def set_offset(path: Path, offset: str) -> None:
    """Rewrite libfaketime's file in one step, so kktd never reads half of it."""
    scratch = path.with_suffix(".new")
    scratch.write_text(offset + "\n", encoding="ascii")
    scratch.replace(path)


async def few_attempts(node: Kktd) -> None:
    """Reload kktd with `sync.max_attempts` low, so a wrongly counted failure shows as dead."""
    text = node.config.read_text(encoding="utf-8")
    replace_file(node.config, text.replace("max_attempts = 1000", f"max_attempts = {MAX_ATTEMPTS}"))
    mark = len(node.messages)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    reloading = await node.wait_for_message("RELOADING=1", mark, within=10.0)
    await node.wait_for_message("READY=1", reloading + 1, within=10.0)


def none_dead(nodes: list[Kktd]) -> list[str]:
    """Nothing in these scenarios names an FD: a dead one was counted for the upstream's fault."""
    violations = []
    for node in nodes:
        try:
            journal = read_journal(node.journal)
        except (sqlite3.Error, AssertionError):
            continue  # the common check reports an unreadable journal
        dead = sorted(fd for (_, fd), (state, _) in journal.items() if state == "dead")
        if dead:
            violations.append(f"{node.name}: {len(dead)} dead, none named by the upstream: {dead}")
    return violations
