"""Logging as an operator sees it: the real stderr of a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    import structlog
    from kktd.lifecycle.log import configure_logging
    renderer = configure_logging("info", sys.argv[1])
    log = structlog.get_logger("kktd.test")
    log.debug("test.hidden")
    log.info("kkt.connected", model="ШТРИХ-М-01Ф", port="/dev/kkt0")
    log.warning("upstream.slow", token="s3cret-value", seconds=1.5)
    try:
        raise RuntimeError("first line\\nsecond line")
    except RuntimeError:
        log.exception("sync.crashed")
    print(renderer, file=sys.stdout)
    """
)


def run_logging(fmt: str, env: dict[str, str] | None = None) -> list[str]:
    """The child's stderr lines, then ``renderer=<chosen>``."""
    environ = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt],
        check=False,
        capture_output=True,
        env=environ,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return [*proc.stderr.decode("utf-8").splitlines(), "renderer=" + proc.stdout.decode().strip()]


def test_json_lines_keep_cyrillic_unescaped_and_one_line_per_event() -> None:
    lines = run_logging("json")
    assert lines[-1] == "renderer=json"
    events = [json.loads(line) for line in lines[:-1]]
    assert [e["event"] for e in events] == ["kkt.connected", "upstream.slow", "sync.crashed"]
    assert "ШТРИХ-М-01Ф" in lines[0]
    assert events[0]["level"] == "info"
    assert "timestamp" in events[0]
    assert "first line\nsecond line" in events[2]["exception"]


def test_secret_fields_never_reach_the_output() -> None:
    lines = run_logging("json")
    assert not any("s3cret-value" in line for line in lines)
    assert json.loads(lines[1])["token"] == "<redacted>"


def test_journal_lines_start_with_priority_and_carry_no_timestamp() -> None:
    lines = run_logging("journal")[:-1]
    assert lines[0].startswith("<6>kkt.connected ")
    assert "model=ШТРИХ-М-01Ф" in lines[0]
    assert lines[1].startswith("<4>upstream.slow ")
    assert lines[2].startswith("<3>sync.crashed ")
    assert len(lines) == 3  # the traceback stays inside its event's line
    assert not any("timestamp" in line or "20" + "26-" in line for line in lines)


def test_auto_picks_journal_when_journal_stream_is_our_stderr(tmp_path: Path) -> None:
    log_file = tmp_path / "stderr.log"
    with log_file.open("wb") as err:
        st = os.fstat(err.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, "auto"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            timeout=30,
            check=True,
        )
    assert proc.stdout.decode().strip() == "journal"
    assert log_file.read_text(encoding="utf-8").startswith("<6>kkt.connected")


def test_auto_picks_json_when_stderr_is_a_pipe_not_named_by_journal_stream() -> None:
    lines = run_logging("auto", {"JOURNAL_STREAM": "1:2"})
    assert lines[-1] == "renderer=json"
