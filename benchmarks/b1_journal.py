"""B1 journal throughput: kktd's poller against a bare reader, and against the line's limit.

The emulator runs as its own process (`python -m kktd.emulator`) with an archive of N FDs, so
the reader under test has this process to itself. kktd's side is the daemon's own stack: a
`KktLink`, a `Poller` and a `Journal` on a real file, timed over one `poll()` that reads the
whole archive. The bare reader speaks the same bytes (ENQ, frame, ACK, answer, ACK, for FF3A and
each FF3B) with plain blocking os.read/os.write and stores nothing; it also counts the wire
bytes per FD, which give the line's limit at 115200 baud: (baud / 10) / bytes per FD.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import LINE_BAUD, Results, Row, Sizes
from kktd.config import KktConfig
from kktd.journal import Journal
from kktd.kkt.link import KktLink
from kktd.kkt.poller import Poller
from kktd.kkt.protocol import (
    ACK,
    ENQ,
    Command,
    ErrorCode,
    Frame,
    FrameParser,
    decode_response,
    encode_frame,
    encode_request,
    fd_request,
)

PASSWORD = 30
READ_TIMEOUT = 5.0


@contextmanager
def emulator(
    directory: Path, fds: int, baud: int | None = None, options: Sequence[str] = ()
) -> Iterator[str]:
    """An emulator process holding `fds` FDs; yields its kkt.port once it is serving.

    A pty behind a link in `directory` by default; `options` go to `kktd emulator` as they are
    (`--tcp 0` serves a free TCP port instead, `--busy-every 11` answers busy now and then).
    """
    where = [] if "--tcp" in options else ["--link", str(directory / "kkt0")]
    argv = [sys.executable, "-m", "kktd.emulator", *where, "--archive", str(fds), *options]
    if baud is not None:
        argv += ["--baud", str(baud)]
    # S603: our own interpreter and module
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()  # printed once the port is there
        if not port:
            raise RuntimeError("the emulator did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


class BareReader:
    """The protocol with nothing around it: blocking I/O, no retries, no journal."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.parser = FrameParser()
        self.wire = 0  # bytes written and read

    def close(self) -> None:
        os.close(self.fd)

    def _write(self, data: bytes) -> None:
        self.wire += os.write(self.fd, data)

    def _read(self) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
        if not ready:
            raise TimeoutError("the emulator went silent")
        data = os.read(self.fd, 4096)
        self.wire += len(data)
        return data

    def request(self, cmd: int, data: bytes = b"") -> tuple[int, bytes]:
        """ENQ (NAK back), the frame (ACK and the answer back), ACK: (error, data)."""
        self._write(bytes([ENQ]))
        while not any(self.parser.feed(self._read())):
            pass  # the NAK: the KKT is idle
        self._write(encode_frame(encode_request(cmd, PASSWORD, data)))
        while True:
            frames = [e for e in self.parser.feed(self._read()) if isinstance(e, Frame)]
            if frames:
                break
        self._write(bytes([ACK]))
        response = decode_response(frames[0].body)
        return response.error, response.data

    def read_fd(self, fd: int) -> int:
        """FF3A then FF3B until 08; the FD's TLV bytes."""
        error, _ = self.request(Command.OPEN_FD_TLV, fd_request(fd))
        assert error == 0, f"FF3A {fd}: error {error:#x}"
        size = 0
        while True:
            error, tlv = self.request(Command.READ_TLV)
            if error == ErrorCode.NO_DATA:
                return size
            size += len(tlv)


def bare_rate(port: str, fds: int) -> tuple[float, float]:
    """(FDs per second, wire bytes per FD) of the bare reader over the whole archive."""
    reader = BareReader(port)
    try:
        started = time.perf_counter()
        for fd in range(1, fds + 1):
            reader.read_fd(fd)
        elapsed = time.perf_counter() - started
        return fds / elapsed, reader.wire / fds
    finally:
        reader.close()


async def kktd_rate(port: str, fds: int, directory: Path) -> float:
    """FDs per second journaled by the daemon's link + poller + journal in one poll."""
    journal = await Journal.open(directory / f"b1-{time.monotonic_ns()}.db")
    link = KktLink(port, LINE_BAUD)
    poller = Poller(
        link,
        journal,
        KktConfig(port=port, start_fd="first"),
        on_journaled=lambda: None,
    )
    try:
        await link.connect()
        started = time.perf_counter()
        stored = await poller.poll()
        elapsed = time.perf_counter() - started
    finally:
        await link.close()
        await journal.close()
    if stored != fds:
        raise RuntimeError(f"kktd journaled {stored} of {fds} FDs: {poller.status()}")
    return fds / elapsed


async def run(sizes: Sizes, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="kktd-b1-") as tmp:
        directory = Path(tmp)
        n = sizes.b1_fds
        with emulator(directory, n) as port:
            bare, wire = bare_rate(port, n)
        with emulator(directory, n) as port:
            ours = await kktd_rate(port, n, directory)
        results.add(Row("B1", "FDs/s journaled, pty at full speed", ours, "FD/s",
                        "bare reader", bare, ">= 0.8"))  # fmt: skip
        limit = LINE_BAUD / 10 / wire
        m = sizes.b1_line_fds
        with emulator(directory, m, LINE_BAUD) as port:
            ours_line = await kktd_rate(port, m, directory)
        results.add(Row("B1", "FDs/s journaled, line at 115200 baud", ours_line, "FD/s",
                        "line limit", limit, ">= 0.9"))  # fmt: skip
        with emulator(directory, m, LINE_BAUD) as port:
            bare_line, _ = bare_rate(port, m)
        results.add(Row("B1", "FDs/s bare reader, line at 115200 baud", bare_line, "FD/s",
                        "line limit", limit, ""))  # fmt: skip
        results.facts["b1"] = (
            f"{n} FDs at full speed, {m} at 115200 baud; {wire:.0f} wire bytes per FD"
            " (both directions, ENQ/NAK/ACK included)"
        )
