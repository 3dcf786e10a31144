"""The `fencing` chaos scenario (issue 16): two tills on one FN and one Redis, one frozen past the
lock's ttl again and again, and checks that would catch a paused till sending on its old lease.

Two kktd instances with their own journals and emulators issue the same FN's FDs and share one
lock key (ttl 2 s). At a random moment one of them is frozen with SIGSTOP for 3 s (a VM pause, a
long GC, swap) and thawed with SIGCONT; every other freeze lands while that till is mid-round
(the moment one of its requests reaches the collector). The other till takes the lock once the
ttl has run out, so every thaw wakes a till whose lease ended while it could not look.

What is checked, from outside kktd (nothing here trusts kktd's own account):

- late writes: right after a till is stopped (seen as state T in /proc), the harness reads the
  lock's fence counter from Redis: every fence that till holds is at most that number. Its lease
  deadline is measured from a clock reading taken before it stopped, and no renewal can succeed
  after the thaw (Redis expired the key during the freeze), so its deadline passed while it was
  stopped. A request from it carrying such a fence whose headers reach the collector after the
  thaw was written after its lease's deadline by its own clock: a violation.
- stale requests written: the collector (the mock, which fences) answered 412 at all.
- stale requests accepted: re-derived from the collector's request log, independently of its own
  fence logic: an accepted request whose fence is below one that arrived earlier for the FN.
- nothing dead, and everything `world.check` checks (no FD lost, none invented, no overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio

from kktd.testbed.mock_upstream import Arrival, MockUpstream
from tests.chaos.scenarios import Setup, run_scenario
from tests.chaos.world import FN, Kktd, Report, read_journal
from tests.support.redis_server import RedisServer
from tests.support.wait import WaitTimeoutError, wait_until

TTL = "2s"  # the harness's lock ttl (world.CONFIG)
FREEZE = 3.0  # seconds: past the ttl, so the other till takes the lock meanwhile
GAP = (0.3, 1.2)  # seconds between a thaw and the next freeze
RATE = 8.0  # receipts a second from each emulator
FENCE_KEY = f"kktd:sync:{FN}:fence"
LOCK_KEY = f"kktd:sync:{FN}"
ACCEPTED = (200, 201, 202, 409)


@dataclass
class Freeze:
    """One SIGSTOP..SIGCONT of one till, and the highest fence it could hold meanwhile."""

    node: str
    mid_round: bool
    fence_at_stop: int
    held_lock: bool
    thawed_at: float = 0.0


@dataclass
class Watch:
    """Every request's arrival (monotonic, as its headers came in) and every freeze."""

    arrivals: list[tuple[float, Arrival]] = field(default_factory=list)
    freezes: list[Freeze] = field(default_factory=list)
    trigger: Callable[[Arrival], None] | None = None

    def arrived(self, arrival: Arrival) -> None:
        self.arrivals.append((time.monotonic(), arrival))
        trigger, self.trigger = self.trigger, None
        if trigger is not None:
            trigger(arrival)


async def fencing(workdir: Path, freezes: int, rng: random.Random) -> Report:
    """Freeze one of two tills on one FN past the lock ttl, `freezes` times."""
    server = RedisServer(workdir / "fencing-redis")
    (workdir / "fencing-redis").mkdir(parents=True)
    await asyncio.to_thread(server.start)
    watch = Watch()
    client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)

    async def body(nodes: list[Kktd], mock: MockUpstream) -> int:
        mock.on_arrival = watch.arrived
        for node in nodes:
            await node.wait_ready()
        for cycle in range(freezes):
            await asyncio.sleep(rng.uniform(*GAP))
            node = await _stop_one(nodes, watch, rng, mid_round=cycle % 2 == 0)
            watch.freezes.append(await _observed(node, client, mid_round=cycle % 2 == 0))
            await asyncio.sleep(FREEZE)
            watch.freezes[-1].thawed_at = time.monotonic()
            _signal(node, signal.SIGCONT)
        return freezes

    try:
        # a slower till than the other scenarios': both pollers keep up, so the drain after
        # the last thaw is quick, and each FD still starts a round of its own
        setup = Setup(2, server, "skip", rate=RATE)
        report = await run_scenario("fencing", workdir, setup, body, extra_check=_checker(watch))
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)
    return report


async def _stop_one(
    nodes: list[Kktd], watch: Watch, rng: random.Random, *, mid_round: bool
) -> Kktd:
    """SIGSTOP a till: at once, or (mid-round) the moment its next request reaches the mock."""
    if not mid_round:
        node = rng.choice(nodes)
        _signal(node, signal.SIGSTOP)
        return node
    by_name = {node.name: node for node in nodes}
    stopped: asyncio.Future[Kktd] = asyncio.get_running_loop().create_future()

    def stop_sender(arrival: Arrival) -> None:
        node = by_name.get(arrival.instance or "")
        if node is None or stopped.done():
            return
        _signal(node, signal.SIGSTOP)  # inside the mock's handler: the till is mid-round
        stopped.set_result(node)

    watch.trigger = stop_sender
    try:
        return await asyncio.wait_for(stopped, 10.0)
    except TimeoutError:
        watch.trigger = None
        node = rng.choice(nodes)  # nobody sent for 10 s: freeze one anyway
        _signal(node, signal.SIGSTOP)
        return node


async def _observed(node: Kktd, client: redis.asyncio.Redis, *, mid_round: bool) -> Freeze:
    """Once the till is really stopped: the fence counter (its fences are all at most this)."""
    assert node.proc is not None
    pid = node.proc.pid
    try:
        await wait_until(lambda: _state(pid) == "T", timeout=5.0, interval=0.001)
    except WaitTimeoutError as exc:
        raise RuntimeError(f"{node.name} did not stop on SIGSTOP") from exc
    fence = int(await client.get(FENCE_KEY) or 0)
    holder = await client.get(LOCK_KEY) or ""
    return Freeze(node.name, mid_round, fence, held_lock=f'"{node.name}"' in holder)


def _signal(node: Kktd, sig: signal.Signals) -> None:
    assert node.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.proc.pid, sig)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def _checker(watch: Watch) -> Callable[[list[Kktd], MockUpstream], tuple[list[str], list[str]]]:
    def check(nodes: list[Kktd], mock: MockUpstream) -> tuple[list[str], list[str]]:
        violations = _late(watch) + _stale(mock)
        for node in nodes:
            dead = _dead(node)
            if dead:
                violations.append(f"{node.name}: {dead} FDs dead")
        caught = sum(1 for f in watch.freezes if f.held_lock)
        lost = sum(_log_count(node, '"lock.lost"') for node in nodes)
        notes = [
            f"{len(watch.freezes)} freezes of {FREEZE:.0f} s (ttl {TTL}),"
            f" {sum(f.mid_round for f in watch.freezes)} mid-round;"
            f" {caught} froze the lock's holder; {lost} leases lost (lock.lost)",
            f"{len(watch.arrivals)} requests; 412 answered {mock.state.fence_violations} times",
        ]
        return violations, notes

    return check


def _late(watch: Watch) -> list[str]:
    found = []
    for freeze in watch.freezes:
        late = [
            (at - freeze.thawed_at, a.fence)
            for at, a in watch.arrivals
            if a.instance == freeze.node
            and a.fence is not None
            and a.fence <= freeze.fence_at_stop
            and at >= freeze.thawed_at
        ]
        if late:
            found.append(
                f"{freeze.node}: {len(late)} requests written after its lease's deadline"
                f" (fences {sorted({f for _, f in late})}, up to {max(t for t, _ in late):.3f} s"
                f" after the thaw; fence counter at the stop {freeze.fence_at_stop})"
            )
    return found


def _stale(mock: MockUpstream) -> list[str]:
    """Accepted with a fence below one that had already reached the collector for the FN."""
    highest: dict[str | None, int] = {}
    stale = 0
    for request in mock.state.requests:
        if request.fence is None:
            continue
        if request.status in ACCEPTED and request.fence < highest.get(request.fn, 0):
            stale += 1
        highest[request.fn] = max(highest.get(request.fn, 0), request.fence)
    return [f"{stale} requests with a stale fence were accepted"] if stale else []


def _dead(node: Kktd) -> int:
    try:
        journal = read_journal(node.journal)
    except (sqlite3.Error, AssertionError):
        return 0  # world.check reports an unreadable journal
    return sum(1 for state, _ in journal.values() if state == "dead")


def _log_count(node: Kktd, needle: str) -> int:
    try:
        return node.log_path.read_text(encoding="utf-8", errors="replace").count(needle)
    except OSError:
        return 0
