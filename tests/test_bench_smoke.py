"""The benchmarks run end to end at tiny sizes: every figure is produced, the docs are written.

No timing is asserted: the figures of a loaded test machine mean nothing; that the scripts work
and every row has a finite value and baseline does.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pytest

from benchmarks import run
from benchmarks.common import Row
from benchmarks.png import line_chart

pytestmark = pytest.mark.slow


def test_every_benchmark_at_tiny_size_yields_its_figures_and_the_docs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / "bench.json"
    code = run.main(["--tiny", "--json", str(json_path), "--write-docs", "--docs", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "18 figures" in out  # B1 gained `kktd run` end to end and the asyncio floor (issue 14)
    doc = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    for bench in ("| B1 |", "| B2 |", "| B3 |", "| B4 |", "| B5 |"):
        assert bench in doc
    assert (tmp_path / "bench-drain.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    data = json_path.read_text(encoding="utf-8")
    assert '"kktd SyncEngine"' in data
    assert '"bare aiohttp client"' in data


def test_row_judges_ratio_targets_on_the_ratio_and_absolute_ones_on_the_value() -> None:
    assert Row("B1", "x", 80.0, "FD/s", "bare", 100.0, ">= 0.8").met is True
    assert Row("B1", "x", 79.0, "FD/s", "bare", 100.0, ">= 0.8").met is False
    assert Row("B3", "rss", 61.0, "MB", "bare", 40.0, "<= 60", target_on="value").met is False
    assert Row("B3", "rss", 59.0, "MB", "bare", 40.0, "<= 60", target_on="value").met is True
    assert Row("B4", "p50", 1.0, "s", "poll", 1.0, "").met is None
    assert math.isnan(Row("B3", "cpu", 1.0, "%", "none", 0.0, "").ratio)


def test_chart_is_a_valid_png_with_the_series_drawn(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    assert line_chart([[(0.0, 0), (2.0, 100)]], path, size=(100, 60), margin=10) == (2.0, 100)
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (100, 60)
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    pixels = zlib.decompress(data[41 : 41 + length])
    assert len(pixels) == height * (1 + 3 * width)
    assert bytes((31, 119, 180)) in pixels  # the first series' color is on the canvas


def test_docs_rendered_again_from_a_runs_json_keep_the_runs_time(tmp_path: Path) -> None:
    run_json = tmp_path / "run.json"
    row = {"bench": "B2", "metric": "FDs/s drained", "value": 80.0, "unit": "FD/s",
           "baseline": "bare", "baseline_value": 100.0, "target": ">= 0.8"}  # fmt: skip
    run_json.write_text(
        json.dumps(
            {
                "mode": "full",
                "rows": [row],
                "drain": {"kktd SyncEngine": [[0.0, 0], [1.0, 80]]},
                "facts": {"b2": "one round"},
                "taken_at": "2026-01-02 03:04 UTC",
            }
        ),
        encoding="utf-8",
    )
    code = run.main(["--from-json", str(run_json), "--write-docs", "--docs", str(tmp_path)])
    assert code == 0
    doc = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "This run: 2026-01-02 03:04 UTC" in doc
    assert "- B2: one round" in doc
