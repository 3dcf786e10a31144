"""How long a paused kktd could still write after its lease check (issue 16): the window between
the last `may_write` check of a request and its first byte handed to the kernel.

    python -m benchmarks.lease_window [--requests 2000]

Real `UpstreamClient`, real mock upstream on loopback. The event loop's socket transport is
wrapped (in this process only) to stamp the moment `transport.write` is entered and left, and a
ticker task counts loop iterations, so the report also shows whether anything else ran between
the check and the write (it should be 0 iterations: nothing awaits in between). What is left is
the CPU time of that stretch of Python: a pause of the whole process (SIGSTOP, a VM pause, a page
fault, a GC pass) that lands exactly there still sends one request late; the collector's 412
(SPEC section 4) is what makes that request harmless.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from asyncio import selector_events
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import quiet_logs
from kktd.config import UpstreamConfig
from kktd.journal import Outgoing
from kktd.sync.client import UpstreamClient
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.upstream import make_entry


@dataclass
class Stamps:
    ticks: int = 0
    last_check: tuple[int, int] | None = None  # (ns, tick) of the latest may_write() -> True
    windows: list[tuple[int, int, int]] = field(default_factory=list)  # (entry, exit, ticks) ns

    def checked(self) -> bool:
        self.last_check = (time.perf_counter_ns(), self.ticks)
        return True

    def wrap(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def stamped(transport: Any, data: Any) -> Any:
            entered = time.perf_counter_ns()
            result = write(transport, data)
            left = time.perf_counter_ns()
            if self.last_check is not None and bytes(data[:5]) == b"POST ":
                at, tick = self.last_check
                self.windows.append((entered - at, left - at, self.ticks - tick))
                self.last_check = None
            return result

        return stamped


def entry(fd: int) -> Outgoing:
    """A pending FD of a receipt's size (the tests' row, with 160 bytes of TLV)."""
    fields = {"doc_type": 3, "doc_kind": "receipt", "total": 20000}
    return make_entry(fd, fields=fields, raw=b"\x01\x02" + fd.to_bytes(4, "little") * 40)


async def measure(requests: int) -> Stamps:
    stamps = Stamps()
    # private, so not in typeshed: the one class whose write() every socket write goes through
    transport_class: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    original = transport_class.write
    transport_class.write = stamps.wrap(original)
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            stamps.ticks += 1
            await asyncio.sleep(0)

    mock = MockUpstream()
    await mock.start()
    client = UpstreamClient(
        UpstreamConfig(url=mock.url, max_in_flight=4), instance_id="bench", version="bench"
    )
    await client.start()
    ticker = asyncio.create_task(tick())
    try:
        slots = asyncio.Semaphore(4)

        async def one(fd: int) -> None:
            async with slots:
                await client.deliver(entry(fd), 7, may_write=stamps.checked)

        await asyncio.gather(*(one(fd) for fd in range(1, requests + 1)))
    finally:
        stop.set()
        await ticker
        await client.close()
        await mock.stop()
        transport_class.write = original
    return stamps


def report(stamps: Stamps, elapsed: float) -> str:
    def us(values: list[int], q: float) -> str:
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000:.1f}"

    entered = [w[0] for w in stamps.windows]
    sent = [w[1] for w in stamps.windows]
    ticks = {w[2] for w in stamps.windows}
    share = sum(entered) / 1e9 / elapsed
    return "\n".join(
        [
            f"requests written: {len(stamps.windows)} in {elapsed:.2f} s",
            "check -> transport.write entered, µs: "
            f"p50 {us(entered, 0.5)}, p99 {us(entered, 0.99)}, max {max(entered) / 1000:.1f}",
            "check -> bytes handed to the kernel (write returned), µs: "
            f"p50 {us(sent, 0.5)}, p99 {us(sent, 0.99)}, max {max(sent) / 1000:.1f},"
            f" mean {statistics.fmean(sent) / 1000:.1f}",
            f"event-loop iterations between check and write: {sorted(ticks)}",
            "share of wall time between a check and its write while sending flat out"
            f" (the chance a random pause lands there): {share:.3%}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_window")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    quiet_logs()
    started = time.perf_counter()
    stamps = asyncio.run(measure(args.requests))
    print(report(stamps, time.perf_counter() - started))


if __name__ == "__main__":
    main()
