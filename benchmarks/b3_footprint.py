"""B3 footprint of a `kktd run` child: RSS at READY and after N FDs, idle CPU, time to READY.

The N FDs are pre-stored in the journal before kktd starts, then delivered by kktd to the
in-process mock upstream (the load is the sync path: claim, POST, mark synced, N times). The
emulator (a KKT with an empty FN of another number) is polled at the default 1 s all along.
Baselines: a bare interpreter importing kktd's libraries (its start-to-exit time; its RSS when
idle) and one core for CPU.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.b2_drain import fill_journal
from benchmarks.common import Results, Row, Sizes, cpu_seconds, rss_mb
from benchmarks.daemon import ready_seconds, until_accepted, write_config
from kktd.journal import Journal
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.kktd_process import KktdProcess

IMPORTS = "import asyncio, aiohttp, aiosqlite, structlog, redis, serial, prometheus_client"
EMULATED_FN = "9999078900000001"  # not the journal's FN: the pre-stored FDs stay as they are
DELIVER_WITHIN = 1200.0


def bare_import_seconds(tries: int = 3) -> float:
    """Median wall time of a bare interpreter start that imports the same libraries, to exit."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)  # noqa: S603 - ours
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_idle_process() -> subprocess.Popen[bytes]:
    """An idle interpreter holding the same imports (an asyncio loop asleep), for its RSS."""
    code = f"{IMPORTS}\nprint(flush=True)\nasyncio.run(asyncio.sleep(3600))"
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


async def run(sizes: Sizes, results: Results) -> None:
    n = sizes.b3_fds
    import_s = await asyncio.to_thread(bare_import_seconds)
    with tempfile.TemporaryDirectory(prefix="kktd-b3-") as tmp:
        directory = Path(tmp)
        async with await Journal.open(directory / "kktd.db") as journal:
            await fill_journal(journal, n)
        mock = MockUpstream()
        await mock.start()
        device = KktDevice(DocumentGenerator(fn=EMULATED_FN))
        bare = bare_idle_process()
        try:
            async with PtyEmulator(device, link=directory / "kkt0") as emulator:
                config = write_config(directory, port=emulator.path, upstream=mock.url)
                kktd = KktdProcess(config)
                try:
                    ready_s = await asyncio.to_thread(ready_seconds, kktd)
                    rss_start, rss_bare = rss_mb(kktd.pid), rss_mb(bare.pid)
                    await until_accepted(mock, n, kktd, DELIVER_WITHIN, 0.2)
                    await asyncio.sleep(2.0)  # the last round's bookkeeping settles
                    rss_after = rss_mb(kktd.pid)
                    cpu_before, idle_started = cpu_seconds(kktd.pid), time.perf_counter()
                    await asyncio.sleep(sizes.b3_idle)
                    idle_s = time.perf_counter() - idle_started
                    idle_pct = 100 * (cpu_seconds(kktd.pid) - cpu_before) / idle_s
                finally:
                    kktd.stop()
                    kktd.close()
        finally:
            bare.kill()
            bare.wait()
            if bare.stdout is not None:
                bare.stdout.close()
            await mock.stop()
    results.add(Row("B3", "RSS at READY", rss_start, "MB", "bare imports", rss_bare,
                    "<= 50", target_on="value"))  # fmt: skip
    results.add(Row("B3", f"RSS after {n} FDs delivered", rss_after, "MB", "bare imports",
                    rss_bare, "<= 50", target_on="value"))  # fmt: skip
    results.add(Row("B3", f"RSS growth over {n} FDs", rss_after - rss_start, "MB",
                    "RSS at READY", rss_start, "<= 10", target_on="value"))  # fmt: skip
    results.add(Row("B3", f"CPU idle over {idle_s:.0f} s", idle_pct, "%",
                    "one core", 100.0, "<= 1", target_on="value"))  # fmt: skip
    results.add(Row("B3", "time to READY", ready_s, "s", "bare import start", import_s,
                    "<= 1.5", target_on="value"))  # fmt: skip
    results.facts["b3"] = (
        f"{n} FDs pre-stored in the journal, then delivered by kktd to the mock upstream;"
        " KKT emulator polled at 1 s throughout; RSS from /proc/<pid>/statm, CPU from"
        " /proc/<pid>/stat utime+stime"
    )
