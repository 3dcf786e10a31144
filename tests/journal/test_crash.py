"""SIGKILL at random moments never loses a committed FD nor lets the cursor run ahead.

KKTD_CHAOS_CYCLES raises the number of kill cycles (default 50).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path

from kktd.journal import Journal
from tests.journal.crash_worker import FN, document

CYCLES = int(os.environ.get("KKTD_CHAOS_CYCLES", "50"))
WORKER = Path(__file__).with_name("crash_worker.py")
MAX_DELAY = 0.15  # seconds of storing before the kill


async def _lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())


async def _run_and_kill(db: Path, delay: float, stderr_path: Path) -> list[int]:
    """Start the worker, kill it `delay` s after it is ready; the FDs it reported committed."""
    with stderr_path.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), str(db), stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        ready = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert ready == b"ready\n", stderr_path.read_text()
        reader = asyncio.create_task(_lines(proc.stdout, lines))
        await asyncio.sleep(delay)  # the random kill moment itself, not a wait for an event
        assert proc.returncode is None, stderr_path.read_text()
    finally:
        proc.kill()
        await proc.wait()
    await reader
    # a line cut short by the kill is not a report
    return [int(line.split()[1]) for line in lines if line.endswith("\n")]


async def test_every_reported_commit_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    db = tmp_path / "kktd.db"
    stderr_path = tmp_path / "worker.stderr"
    reported: list[int] = []
    for cycle in range(CYCLES):
        committed = await _run_and_kill(db, rng.uniform(0, MAX_DELAY), stderr_path)
        reported += committed
        async with await Journal.open(db) as journal:
            assert journal.recovered_from is None, f"cycle {cycle}: journal judged damaged"
            last = await journal.last_fd(FN) or 0
            # the cursor is exactly the highest stored FD, and FDs 1..last are all there
            assert await journal.cursor(FN) == (last or None), f"cycle {cycle}"
            assert (await journal.counts()).pending == last, f"cycle {cycle}: a gap below {last}"
            assert max(committed, default=0) <= last, f"cycle {cycle}: lost a reported FD"
            for fd in committed:
                entry = await journal.get(FN, fd)
                assert entry is not None, f"cycle {cycle}: FD {fd} reported but missing"
                assert (entry.raw, entry.fields) == document(fd), f"cycle {cycle}: FD {fd}"

    # the runs did real work, and every FD ever stored is byte-exact
    assert len(reported) >= CYCLES, f"only {len(reported)} commits in {CYCLES} cycles"
    async with await Journal.open(db) as journal:
        seen = 0
        async for entry in journal.iter_since(0):
            seen += 1
            assert (entry.raw, entry.fields) == document(entry.fd)
        assert seen == (await journal.last_fd(FN) or 0) >= max(reported)
