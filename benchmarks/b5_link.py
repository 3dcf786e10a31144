"""B5 the KKT link: reading over TCP beside the pty, and a KKT that answers busy now and then.

The same archive read the way B1 reads it (the daemon's link, poller and journal in one poll,
the emulator in its own process), three times: on a pty, on a TCP port on loopback, and on a pty
with every 11th command answered busy (50, printing), the way a till that prints while kktd
catches up answers. The busy run is judged against the plain pty run of the same benchmark.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.b1_journal import emulator, kktd_rate
from benchmarks.common import Results, Row, Sizes

BUSY_EVERY = 11


async def run(sizes: Sizes, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="kktd-b5-") as tmp:
        directory = Path(tmp)
        n = sizes.b5_fds
        with emulator(directory, n) as port:
            pty = await kktd_rate(port, n, directory)
        with emulator(directory, n, options=["--tcp", "0"]) as port:
            tcp = await kktd_rate(port, n, directory)
        with emulator(directory, n, options=["--busy-every", str(BUSY_EVERY)]) as port:
            busy = await kktd_rate(port, n, directory)
    results.add(Row("B5", "FDs/s journaled over TCP (loopback)", tcp, "FD/s",
                    "same over the pty", pty, ""))  # fmt: skip
    results.add(Row("B5", f"FDs/s journaled, busy every {BUSY_EVERY}th command", busy, "FD/s",
                    "same without busy", pty, ">= 0.2"))  # fmt: skip
    results.facts["b5"] = (
        f"{n} FDs each way; TCP to the emulator on 127.0.0.1; busy = the emulator answering 50"
        f" (printing) to every {BUSY_EVERY}th command frame, retries included"
    )
