"""Run the benchmarks: `python -m benchmarks [--quick | --tiny] [--only B1,B3] [--write-docs]`.

Full size by default (about 6 minutes on 2 cores); `--quick` for a 1 minute look, `--tiny`
for the smoke test. `--write-docs` rewrites docs/BENCHMARKS.md and docs/bench-drain.png from
this run, with benchmarks/notes.md (the analysis, by hand) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import b1_journal, b2_drain, b3_footprint, b4_latency, b5_link, report
from benchmarks.common import Mode, Results, Row, Sizes, quiet_logs

REPO = Path(__file__).resolve().parents[1]
NOTES = Path(__file__).with_name("notes.md")
BENCHES: dict[str, Callable[[Sizes, Results], Awaitable[None]]] = {
    "B1": b1_journal.run,
    "B2": b2_drain.run,
    "B3": b3_footprint.run,
    "B4": b4_latency.run,
    "B5": b5_link.run,
}


async def run_all(mode: Mode, only: Sequence[str]) -> Results:
    results = Results()
    sizes = Sizes.of(mode)
    for name in only:
        started = time.perf_counter()
        await BENCHES[name](sizes, results)
        print(f"{name} took {time.perf_counter() - started:.0f} s", flush=True)
    results.taken_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return results


def load(path: Path) -> tuple[Mode, Results]:
    """A run's results back from its --json file (to re-render the docs with new notes)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        Row(**{k: v for k, v in row.items() if k not in {"ratio", "met"}}) for row in data["rows"]
    ]
    drain = {name: [(x, y) for x, y in points] for name, points in data["drain"].items()}
    return data["mode"], Results(rows, drain, data["facts"], data.get("taken_at"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, 1-2 minutes")
    size.add_argument("--tiny", action="store_true", help="the smoke test's sizes, seconds")
    parser.add_argument("--only", default=",".join(BENCHES), help="e.g. B1,B3 (all)")
    parser.add_argument("--json", type=Path, help="write the rows and the drain samples here")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/BENCHMARKS.md")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-json", type=Path, help="no run: rewrite the docs from a --json file of a run"
    )
    args = parser.parse_args(argv)
    only = [name.strip().upper() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHES))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    mode: Mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    quiet_logs()
    if args.from_json is not None:
        mode, results = load(args.from_json)
    else:
        results = asyncio.run(run_all(mode, only))
    if args.json is not None:
        rows = [{**asdict(row), "ratio": row.ratio, "met": row.met} for row in results.rows]
        data = {
            "mode": mode,
            "rows": rows,
            "drain": results.drain,
            "facts": results.facts,
            "taken_at": results.taken_at,
        }
        args.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    if args.write_docs:
        notes = NOTES.read_text(encoding="utf-8") if NOTES.exists() else ""
        command = "scripts/bench --write-docs" + (f" --{mode}" if mode != "full" else "")
        report.write(results, args.docs, command, notes)
        print(f"wrote {args.docs / 'BENCHMARKS.md'}", flush=True)
    missed = [row for row in results.rows if row.met is False]
    print(f"{len(results.rows)} figures, {len(missed)} targets missed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
