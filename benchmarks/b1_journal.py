"""B1 journal throughput: kktd reading an FD archive, against the minimal reader of it.

The emulator runs as its own process (`python -m kktd.testbed.emulator`) with an archive of N FDs.
The baseline is the fastest simple thing that reads it: blocking select + os.read on the pty, the
handshake inline (ENQ, frame, ACK + answer, ACK, for FF3A and each FF3B), frames and LRC built
here, TLVs joined in a bytearray and kept nowhere; no asyncio, nothing of kktd's imported. It
also counts the wire bytes per FD, which give the line's limit at 115200 baud: (baud / 10) /
bytes per FD.

kktd is measured twice. End to end, as the issue measured it from outside: `kktd run` as a
child process, timed from its READY=1 to the journal's cursor at the last FD (every FD
committed), polled from here with a read-only SQLite connection. In process: the daemon's
`KktLink`, `Poller` and `Journal` on a real file, timed over one `poll()` that reads the whole
archive (cheaper to run; B5 reuses it). A third reader, the minimal reader's handshake driven
by asyncio reader callbacks with nothing of kktd, shows what the event loop alone costs.
"""

from __future__ import annotations

import asyncio
import os
import select
import sqlite3
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from benchmarks.common import LINE_BAUD, Results, Row, Sizes
from benchmarks.daemon import ready_seconds, write_config
from kktd.config import KktConfig
from kktd.journal import Journal
from kktd.kkt.link import KktLink
from kktd.kkt.poller import Poller
from tests.support.kktd_process import KktdProcess

PASSWORD = 30
READ_TIMEOUT = 5.0
JOURNALED_WITHIN = 600.0
NO_UPSTREAM = "http://127.0.0.1:9/"  # discard port: refused, the sync engine backs off


@contextmanager
def emulator(
    directory: Path, fds: int, baud: int | None = None, options: Sequence[str] = ()
) -> Iterator[str]:
    """An emulator process holding `fds` FDs; yields its kkt.port once it is serving.

    A pty behind a link in `directory` by default; `options` go to `kktd emulator` as they are
    (`--tcp 0` serves a free TCP port instead, `--busy-every 11` answers busy now and then).
    """
    where = [] if "--tcp" in options else ["--link", str(directory / "kkt0")]
    argv = [sys.executable, "-m", "kktd.testbed.emulator", *where, "--archive", str(fds), *options]
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


def minimal_rate(port: str, fds: int) -> tuple[float, float]:
    """(FDs per second, wire bytes per FD) of the minimal reader over the whole archive.

    The fastest simple thing that reads an FD archive correctly: blocking select + os.read on
    the port, the handshake inline (ENQ, NAK, frame, ACK + answer, ACK), the frame and its LRC
    built and checked here, the TLVs joined in a bytearray and kept nowhere. No asyncio, no
    classes, nothing of kktd's imported. Any error is fatal: it is a baseline, not a reader.
    """
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    password = PASSWORD.to_bytes(4, "little")
    wire = 0
    buf = bytearray()

    def read_more() -> None:
        nonlocal wire
        if not select.select([fd], [], [], READ_TIMEOUT)[0]:
            raise TimeoutError("the emulator went silent")
        data = os.read(fd, 4096)
        wire += len(data)
        buf.extend(data)

    def request(cmd: bytes, data: bytes = b"") -> tuple[int, bytes]:
        nonlocal wire
        wire += os.write(fd, b"\x05")  # ENQ
        while not buf:
            read_more()
        if buf[0] != 0x15:  # NAK: idle
            raise RuntimeError(f"ENQ answered {bytes(buf).hex()}")
        del buf[:1]
        body = cmd + password + data
        head = bytes((len(body),)) + body
        wire += os.write(fd, b"\x02" + head + bytes((_xor(head),)))
        while len(buf) < 3 or len(buf) < buf[2] + 4:  # ACK STX LEN body LRC
            read_more()
        size = buf[2]
        frame = bytes(buf[: size + 4])
        del buf[: size + 4]
        wire += os.write(fd, b"\x06")  # ACK
        if frame[0] != 0x06 or frame[1] != 0x02 or _xor(frame[2:]):
            raise RuntimeError(f"bad answer {frame.hex()}")
        return frame[3 + len(cmd)], frame[4 + len(cmd) : -1]  # error byte, data

    try:
        started = time.perf_counter()
        for number in range(1, fds + 1):
            error, _ = request(b"\xff\x3a", number.to_bytes(4, "little"))
            assert error == 0, f"FF3A {number}: error {error:#x}"
            tlvs = bytearray()
            while True:
                error, piece = request(b"\xff\x3b")
                if error == 0x08:  # no more data: the FD is read
                    break
                assert error == 0, f"FF3B {number}: error {error:#x}"
                tlvs += piece
        elapsed = time.perf_counter() - started
        return fds / elapsed, wire / fds
    finally:
        os.close(fd)


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


async def asyncio_floor_rate(port: str, fds: int) -> float:
    """FDs per second of the minimal reader's handshake driven by asyncio callbacks instead.

    The same bytes as `minimal_rate`, each step taken in an `add_reader` callback and the task
    woken once per FD: what any asyncio reader pays for the event loop alone, nothing of kktd.
    """
    loop = asyncio.get_running_loop()
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    password = PASSWORD.to_bytes(4, "little")
    buf = bytearray()
    number, cmd, data, waiting_nak = 0, b"", b"", True
    done: asyncio.Future[None] = loop.create_future()

    def send(command: bytes, payload: bytes = b"") -> None:
        nonlocal cmd, data, waiting_nak
        cmd, data, waiting_nak = command, payload, True
        os.write(fd, b"\x05")

    def next_fd() -> None:
        nonlocal number
        number += 1
        if number > fds:
            done.set_result(None)
            return
        send(b"\xff\x3a", number.to_bytes(4, "little"))

    def readable() -> None:
        nonlocal waiting_nak
        buf.extend(os.read(fd, 4096))
        if waiting_nak:
            if not buf:
                return
            del buf[:1]  # NAK
            head = bytes((len(cmd) + 4 + len(data),)) + cmd + password + data
            waiting_nak = False
            os.write(fd, b"\x02" + head + bytes((_xor(head),)))
            return
        if len(buf) < 3 or len(buf) < buf[2] + 4:
            return
        size = buf[2]
        frame = bytes(buf[: size + 4])
        del buf[: size + 4]
        os.write(fd, b"\x06")
        if _xor(frame[2:]):
            done.set_exception(RuntimeError(f"bad answer {frame.hex()}"))
            return
        error = frame[5]  # ACK STX LEN FF 3x error
        if cmd == b"\xff\x3a" or error == 0:
            send(b"\xff\x3b")
        elif error == 0x08:
            next_fd()
        else:
            done.set_exception(RuntimeError(f"error {error:#x}"))

    loop.add_reader(fd, readable)
    try:
        started = time.perf_counter()
        next_fd()
        await asyncio.wait_for(done, JOURNALED_WITHIN)
        return fds / (time.perf_counter() - started)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _xor(data: bytes) -> int:
    """The frame's LRC: XOR of LEN and the body (with the LRC itself included, 0 when good)."""
    check = 0
    for byte in data:
        check ^= byte
    return check


def daemon_rate(port: str, fds: int, directory: Path) -> float:
    """FDs per second of `kktd run` (a child process), READY=1 to the cursor at the last FD.

    The upstream refuses connections (the sync engine backs off and stays out of the way): this
    is the reading path, the journal's commits included.
    """
    run_dir = directory / f"daemon-{time.monotonic_ns()}"
    run_dir.mkdir()
    config = write_config(run_dir, port=Path(port), upstream=NO_UPSTREAM)
    kktd = KktdProcess(config)
    try:
        ready_seconds(kktd)
        started = time.perf_counter()
        uri = f"file:{run_dir / 'kktd.db'}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
            while True:
                row = db.execute("SELECT MAX(last_fd) FROM cursors").fetchone()
                if row is not None and row[0] is not None and row[0] >= fds:
                    break
                if not kktd.alive or time.perf_counter() - started > JOURNALED_WITHIN:
                    raise RuntimeError(f"kktd journaled {row} of {fds} FDs: {kktd.tail()}")
                time.sleep(0.005)  # the poll's own resolution: 5 ms in a run of seconds
        elapsed = time.perf_counter() - started
        count = db_count(run_dir / "kktd.db")
    finally:
        kktd.stop()
    if count != fds:
        raise RuntimeError(f"kktd journaled {count} of {fds} FDs")
    return fds / elapsed


def db_count(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])


async def run(sizes: Sizes, results: Results) -> None:
    with tempfile.TemporaryDirectory(prefix="kktd-b1-") as tmp:
        directory = Path(tmp)
        n = sizes.b1_fds
        # Rounds alternate the three readers, each on a fresh emulator of the same archive, and
        # each reader's best round counts: a noisy neighbour on a shared machine slows whatever
        # runs at that moment, and the best of a few rounds is the least disturbed.
        minimal, floor, daemon, ours, wire = 0.0, 0.0, 0.0, 0.0, 0.0
        paired: list[str] = []  # each round's kktd rates against that round's simple readers
        for _ in range(sizes.b1_rounds):
            with emulator(directory, n) as port:
                round_minimal, wire = minimal_rate(port, n)
            with emulator(directory, n) as port:
                round_floor = await asyncio_floor_rate(port, n)
            with emulator(directory, n) as port:
                round_daemon = daemon_rate(port, n, directory)
            with emulator(directory, n) as port:
                round_ours = await kktd_rate(port, n, directory)
            minimal, floor = max(minimal, round_minimal), max(floor, round_floor)
            daemon, ours = max(daemon, round_daemon), max(ours, round_ours)
            baseline = max(round_minimal, round_floor)
            paired.append(f"{round_daemon / baseline:.2f}/{round_ours / baseline:.2f}")
        # The baseline is the faster of the two simple readers in this run: on a pty each
        # exchange is a ping-pong between two processes, and which of the two wins depends on
        # how fast the idle core wakes up more than on the code (both vary 200-530 FD/s here).
        # The fastest simple thing is the baseline, so the ratio cannot flatter kktd.
        simple = max(minimal, floor)
        results.add(Row("B1", "FDs/s journaled by kktd run, READY to last", daemon, "FD/s",
                        "fastest simple reader", simple, ">= 0.8"))  # fmt: skip
        results.add(Row("B1", "FDs/s journaled in process (link+poller)", ours, "FD/s",
                        "fastest simple reader", simple, ">= 0.8"))  # fmt: skip
        results.add(Row("B1", "FDs/s minimal reader, blocking", minimal, "FD/s",
                        "its asyncio twin", floor, ""))  # fmt: skip
        limit = LINE_BAUD / 10 / wire
        m = sizes.b1_line_fds
        with emulator(directory, m, LINE_BAUD) as port:
            ours_line = await kktd_rate(port, m, directory)
        results.add(Row("B1", "FDs/s journaled, line at 115200 baud", ours_line, "FD/s",
                        "line limit", limit, ">= 0.9"))  # fmt: skip
        with emulator(directory, m, LINE_BAUD) as port:
            minimal_line, _ = minimal_rate(port, m)
        results.add(Row("B1", "FDs/s minimal reader, line at 115200 baud", minimal_line, "FD/s",
                        "line limit", limit, ""))  # fmt: skip
        results.facts["b1"] = (
            f"{n} FDs at full pty speed (best of {sizes.b1_rounds} alternating rounds),"
            f" {m} at 115200 baud; {wire:.0f} wire bytes per FD"
            " (both directions, ENQ/NAK/ACK included); minimal reader: blocking os.read after"
            " select(2), handshake inline, no asyncio, no journal (its asyncio twin takes the same"
            " steps in add_reader callbacks; the faster of the two is the baseline);"
            " `kktd run` timed READY=1 to the journal's cursor at the last FD, with the upstream"
            " refusing connections; each round's `kktd run`/in-process rates against that round's"
            f" faster simple reader: {', '.join(paired)}"
        )
