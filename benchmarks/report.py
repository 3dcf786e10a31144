"""docs/BENCHMARKS.md from one run's results, and the drain plot beside it."""

from __future__ import annotations

import math
import platform
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Results, Row
from benchmarks.png import COLORS, line_chart

COLOR_NAMES = ["blue", "red", "green", "purple"]


def _cell(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| | figure | value | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = f"{row.target} {row.unit}" if row.target_on == "value" else row.target
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        lines.append(
            f"| {row.bench} | {row.metric} | {_cell(row.value)} {row.unit}"
            f" | {row.baseline}: {_cell(row.baseline_value)} | {_cell(row.ratio)}"
            f" | {target or '-'} | {met} |"
        )
    return "\n".join(lines)


def write(results: Results, docs: Path, command: str, notes: str) -> None:
    """Write BENCHMARKS.md and bench-drain.png into `docs`."""
    names = list(results.drain)
    x_max, y_max = line_chart([results.drain[n] for n in names], docs / "bench-drain.png")
    legend = ", ".join(f"{COLOR_NAMES[i % len(COLORS)]}: {n}" for i, n in enumerate(names))
    facts = "\n".join(f"- {key.upper()}: {text}" for key, text in sorted(results.facts.items()))
    # the run's own time: docs re-rendered from its --json file later still name the run
    stamp = results.taken_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (docs / "BENCHMARKS.md").write_text(
        f"""# kktd benchmarks

Every figure is a ratio against a baseline measured in the same run, on the same machine, so
the noise of a shared machine mostly cancels out. Targets come from issue 7; a target on a
ratio judges the ratio, an absolute target (MB, s, %) judges the value.

Reproduce: `{command}` (the full run takes about 6 minutes on 2 cores, `--quick` about 1).
This run: {stamp}, Python {platform.python_version()}, {platform.machine()}, 2 cores shared
with other work.

{table(results.rows)}

How each figure was taken:

{facts}

## Backlog drain over time (B2)

![drain](bench-drain.png)

FDs accepted by the collector (y, 0 to {y_max}, ticks every {y_max / 10:g}) against
seconds since the drain started (x, 0 to {x_max:.1f} s, ticks every {x_max / 10:.2f} s).
{legend}.

{notes}
""",
        encoding="utf-8",
    )
