"""B4 latency from "printed" (the emulator issues the FD) to "accepted" (the mock stores it).

kktd runs as a child process; the emulator and the mock upstream run here, so both timestamps
come from this process's wall clock: the issue time recorded next to `device.issue()`, and the
mock's own record of when it received the accepted request. Receipts are issued at 5 a second,
once with kktd's default 1 s poll interval and once with 200 ms.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import Results, Row, Sizes, percentile
from benchmarks.daemon import ready_seconds, until_accepted, write_config
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.kktd_process import KktdProcess

RATE = 5.0
SETTLE_WITHIN = 30.0


async def issue(device: KktDevice, count: int) -> dict[int, float]:
    """`count` FDs at RATE a second; FD -> wall-clock time it was printed."""
    printed: dict[int, float] = {}
    due = time.monotonic()
    for _ in range(count):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        document = device.issue()
        printed[document.fd] = time.time()
        due += 1 / RATE
    return printed


async def latencies(poll: str, count: int) -> list[float]:
    """Seconds from printed to accepted for `count` receipts, with kktd polling every `poll`."""
    with tempfile.TemporaryDirectory(prefix="kktd-b4-") as tmp:
        directory = Path(tmp)
        mock = MockUpstream()
        await mock.start()
        device = KktDevice()
        try:
            async with PtyEmulator(device, link=directory / "kkt0") as emulator:
                kktd = KktdProcess(write_config(directory, port=emulator.path, upstream=mock.url,
                                         poll=poll))  # fmt: skip
                try:
                    await asyncio.to_thread(ready_seconds, kktd)
                    device.issue()  # the warm-up FD: the whole chain is live once it arrives
                    await until_accepted(mock, 1, kktd, SETTLE_WITHIN, 0.05)
                    printed = await issue(device, count)
                    await until_accepted(mock, 1 + count, kktd, SETTLE_WITHIN, 0.05)
                finally:
                    kktd.stop()
                    kktd.close()
        finally:
            await mock.stop()
    accepted = {r.fd: r.at for r in mock.state.requests if r.status == 201 and r.fd is not None}
    return [accepted[fd] - at for fd, at in printed.items()]


async def run(sizes: Sizes, results: Results) -> None:
    n = sizes.b4_receipts
    for poll, seconds in (("1s", 1.0), ("200ms", 0.2)):
        values = await latencies(poll, n)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        results.add(Row("B4", f"p50 printed->accepted, poll {poll}", p50, "s",
                        "poll interval", seconds, ""))  # fmt: skip
        results.add(Row("B4", f"p99 printed->accepted, poll {poll}", p99, "s",
                        "poll interval", seconds, "<= 2", target_on="value"))  # fmt: skip
    results.facts["b4"] = f"{n} receipts at {RATE:.0f}/s per setting, after one warm-up FD"
