"""What the benchmarks share: sizes, result rows, /proc readings and a quiet log."""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

Mode = Literal["tiny", "quick", "full"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
LINE_BAUD = 115200
SEED_RATE = 50 / 10.0  # the seed's rule: 50 FDs every 10 s


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; `tiny` is for the smoke test, `full` for the docs."""

    b1_fds: int
    b1_line_fds: int
    b1_rounds: int
    b2_fds: int
    b2_rounds: int
    b3_fds: int
    b3_idle: float
    b4_receipts: int
    b5_fds: int

    @classmethod
    def of(cls, mode: Mode) -> Sizes:
        return {
            "tiny": cls(b1_fds=20, b1_line_fds=5, b1_rounds=1, b2_fds=200, b2_rounds=1,
                        b3_fds=200, b3_idle=1.0, b4_receipts=5, b5_fds=20),
            "quick": cls(b1_fds=2000, b1_line_fds=60, b1_rounds=2, b2_fds=2000, b2_rounds=2,
                         b3_fds=5000, b3_idle=10.0, b4_receipts=40, b5_fds=300),
            "full": cls(b1_fds=3000, b1_line_fds=300, b1_rounds=3, b2_fds=20000, b2_rounds=3,
                        b3_fds=100000, b3_idle=60.0, b4_receipts=150, b5_fds=1000),
        }[mode]  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One figure: the measured value, its baseline from the same run, the ratio, the target."""

    bench: str
    metric: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    target: str  # e.g. ">= 0.8"; "" when the figure has no target
    target_on: Literal["ratio", "value"] = "ratio"  # absolute targets (MB, s) judge the value

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, _, number = self.target.partition(" ")
        bound = float(number)
        judged = self.ratio if self.target_on == "ratio" else self.value
        return judged >= bound if op == ">=" else judged <= bound


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    drain: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # name -> (s, done)
    facts: dict[str, str] = field(default_factory=dict)  # how a figure was taken
    taken_at: str | None = None  # when the run ended (UTC); kept when the docs are re-rendered

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)


def format_row(row: Row) -> str:
    met = {True: "met", False: "MISSED", None: ""}[row.met]
    target = f"{row.target} {row.unit}" if row.target_on == "value" else row.target
    return (
        f"{row.bench:3s} {row.metric:42s} {row.value:10.2f} {row.unit:5s}"
        f" / {row.baseline} {row.baseline_value:.2f} = {row.ratio:8.3f}"
        f"  target {target or '-'} {met}"
    )


def quiet_logs() -> None:
    """The benchmark's own in-process parts log warnings only: a log line per FD costs time."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (from /proc/<pid>/statm)."""
    statm = Path(f"/proc/{pid}/statm").read_text(encoding="ascii")
    return int(statm.split()[1]) * PAGE_KB / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, seconds (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # the command name may hold spaces: the fields after it start past the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated; one value is its own percentile."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]
