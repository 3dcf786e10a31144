"""The chaos harness (issue 7): whole-system fault runs, a table of invariant violations.

    python -m tests.chaos.harness [--quick] [--cycles N] [--freezes N] [--only NAME ...] [--seed S]

`--quick` is the bounded CI run (20 kill cycles, 3 fencing freezes, one pass of every other
scenario); the full run does 200 kill cycles, 120 freezes and three passes. `KKTD_CHAOS_CYCLES`
sets the kill cycles when `--cycles` is not given. Exit 0 when no scenario found a violation, 1
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from tests.chaos import freezes, journal_scenarios, scenarios, sync_faults
from tests.chaos.world import Report

SCENARIOS = (
    "kill",
    "redis",
    "upstream",
    "serial",
    "serial_tcp",
    "sighup",
    "disk_full",
    "fencing",
    "long_tlv",
    "journal_damaged",
    "disk_full_start",
    "systemic",
    "clock",
)


@dataclass(frozen=True)
class Plan:
    """How hard to push: kill cycles, passes of the other scenarios, the longest kill delay."""

    cycles: int
    passes: int
    longest: float
    seed: int = 7
    freezes: int = 3  # SIGSTOPs of the fencing scenario

    @classmethod
    def of(
        cls, quick: bool, cycles: int | None = None, seed: int = 7, freezes: int | None = None
    ) -> Plan:
        if cycles is None and (env := os.environ.get("KKTD_CHAOS_CYCLES")):
            cycles = int(env)
        if quick:
            return cls(cycles or 20, 1, 0.8, seed, freezes or 3)
        return cls(cycles or 200, 3, 1.5, seed, freezes or 120)


def steps(plan: Plan, workdir: Path) -> dict[str, Callable[[], Awaitable[Report]]]:
    rng = random.Random(plan.seed)
    return {
        "kill": lambda: scenarios.kills(workdir, plan.cycles, rng, plan.longest),
        "redis": lambda: scenarios.redis(workdir, plan.passes),
        "upstream": lambda: scenarios.upstream(workdir, plan.passes),
        "serial": lambda: scenarios.serial(workdir, plan.passes),
        "serial_tcp": lambda: scenarios.serial_tcp(workdir, plan.passes),
        "sighup": lambda: scenarios.sighup(workdir, plan.passes),
        "disk_full": lambda: scenarios.disk_full(workdir, plan.passes),
        "fencing": lambda: freezes.fencing(workdir, plan.freezes, random.Random(plan.seed)),
        "long_tlv": lambda: scenarios.long_tlv(workdir, plan.passes),
        "journal_damaged": lambda: journal_scenarios.journal_damaged(workdir, plan.passes),
        "disk_full_start": lambda: journal_scenarios.disk_full_start(workdir, plan.passes),
        "systemic": lambda: sync_faults.systemic(workdir, plan.passes),
        "clock": lambda: sync_faults.clock(workdir, plan.passes),
    }


async def run(
    plan: Plan, only: Sequence[str] = SCENARIOS, echo: bool = True, keep: bool = False
) -> list[Report]:
    """Run the chosen scenarios one after another in a scratch directory (removed after)."""
    workdir = Path(tempfile.mkdtemp(prefix="kktd-chaos-"))
    reports: list[Report] = []
    try:
        chosen = steps(plan, workdir)
        for name in only:
            report = await chosen[name]()
            reports.append(report)
            if echo:
                print(row(report), flush=True)
    finally:
        if keep:
            print(f"chaos: kept {workdir} (each kktd's log is kktd.log there)", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return reports


HEADER = f"| {'scenario':<10} | {'cycles':>6} | {'FDs':>6} | {'violations':>10} | {'seconds':>7} |"
RULE = "|------------|-------:|-------:|-----------:|--------:|"


def row(report: Report) -> str:
    return (
        f"| {report.scenario:<10} | {report.cycles:>6} | {report.fds:>6}"
        f" | {len(report.violations):>10} | {report.seconds:>7.1f} |"
    )


def table(reports: Sequence[Report]) -> str:
    lines = [HEADER, RULE, *(row(report) for report in reports)]
    for report in reports:
        for note in report.notes:
            lines.append(f"  {report.scenario}: {note}")
        for violation in report.violations:
            lines.append(f"  VIOLATION {report.scenario}: {violation}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the bounded CI run")
    parser.add_argument("--cycles", type=int, help="kill cycles (default 20 quick, 200 full)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--seed", type=int, default=7, help="for the kill moments (7)")
    parser.add_argument("--freezes", type=int, help="fencing SIGSTOPs (default 3 quick, 120 full)")
    args = parser.parse_args(argv)
    # the harness's own emulators and mock log warnings only; each kktd logs to its own file
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    plan = Plan.of(args.quick, args.cycles, args.seed, args.freezes)
    print(f"chaos: {plan}", flush=True)
    print(HEADER + "\n" + RULE, flush=True)
    reports = asyncio.run(run(plan, args.only, keep=args.keep))
    print("\n" + table(reports), flush=True)
    return 1 if any(report.violations for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
