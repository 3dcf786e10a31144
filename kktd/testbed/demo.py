"""The demo: the KKT emulator, the mock upstream and a real `kktd run`, with the flow shown live.

Receipts are printed by the emulator (in this process, on a pty), journaled by kktd (a child
process with a generated config in a temporary directory, its API on a unix socket there) and
delivered to the mock upstream (in this process). kktd never outlives the demo: it runs in a
process group of its own, which the demo stops however it leaves, and the kernel sends it
SIGTERM should the demo be killed outright (PR_SET_PDEATHSIG). Once a second one line shows the
counts; keys break the upstream or the serial line so the breaker, the backoff and the recovery
can be watched.

    python -m kktd.testbed.demo [--seconds N] [--no-keys] [--rate R] [--tcp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kktd.cli.client import ApiClient, DaemonUnreachable
from kktd.cli.render import clean
from kktd.config import ApiConfig
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.emulator.serving import Serving
from kktd.testbed.emulator.tcp import TcpEmulator
from kktd.testbed.mock_upstream import MockUpstream

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
READY_WITHIN = 30.0
STOP_WITHIN = 15.0
DRAIN_WITHIN = 5.0

CONFIG = """\
[kkt]
port = "{kkt}"
poll_interval = "200ms"
start_fd = "first"

[journal]
path = "{journal}"

[upstream]
url = "{upstream}"
timeout = "2s"

[sync]
interval = "1s"

[backoff]
base = "500ms"
max = "4s"

[breaker]
failure_threshold = 3
reset_timeout = "5s"

[api]
listen = "unix:{api}"

[log]
level = "info"
format = "json"
"""

KEYS = "keys: [u] upstream down/up  [e] upstream 5xx on/off  [s] serial line gone/back  [q] quit"
_UPSTREAM = {"closed": "ok", "open": "OPEN", "half_open": "probing"}


@dataclass
class Flow:
    """One look at the flow: what the emulator printed, kktd holds, the upstream accepted."""

    printed: int
    journaled: int
    delivered: int
    pending: int
    dead: int
    breaker: str
    probe_in: float
    kkt: str
    backoff: float

    def line(self, elapsed: float, note: str) -> str:
        return (
            f"{elapsed:4.0f}s  printed {self.printed:4d}  journaled {self.journaled:4d}"
            f"  delivered {self.delivered:4d}  pending {self.pending:3d}  dead {self.dead:2d}"
            f"  upstream {self.upstream:12s}"
            f"  backoff {self.backoff:4.1f}s  KKT {self.kkt}{note}"
        )

    @property
    def upstream(self) -> str:
        if self.breaker == "open":
            return f"OPEN, {self.probe_in:.0f}s"  # until the breaker's probe
        return _UPSTREAM.get(self.breaker, self.breaker)

    def summary(self, elapsed: float) -> str:
        return (
            f"demo: printed {self.printed}, journaled {self.journaled}, delivered"
            f" {self.delivered}, pending {self.pending}, dead {self.dead} in {elapsed:.0f} s"
        )


def dying_with_this_process(argv: Sequence[str]) -> list[str]:
    """`argv` run so that it gets SIGTERM when this process dies, even by SIGKILL.

    A small Python start sets PR_SET_PDEATHSIG on itself, which the kernel keeps across exec, and
    becomes `argv`. Not a `preexec_fn`: that runs between fork and exec of a process with threads
    (the event loop's executor), where a lock another thread held stays locked for good.
    Linux sends the signal when the thread that forked the child ends: spawn from the main thread.
    """
    return [sys.executable, "-c", _LAUNCH, str(os.getpid()), *argv]


_LAUNCH = f"""\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before prctl: no signal would come
os.execv(sys.argv[2], sys.argv[2:])
"""


class Demo:
    """Owns the three parts and the switches the keys flip."""

    def __init__(self, workdir: Path, rate: float, tcp: bool = False) -> None:
        self.workdir = workdir
        self.emulator: Serving = (
            TcpEmulator(KktDevice(), rate_per_second=rate)
            if tcp
            else PtyEmulator(KktDevice(), link=workdir / "kkt0", rate_per_second=rate)
        )
        self.upstream = MockUpstream()
        self.api = ApiConfig(listen=f"unix:{workdir / 'api.sock'}")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kktd.log"
        self.errors_on = False
        self.stop = asyncio.Event()
        self.note = ""
        self._closed = False

    async def start(self) -> None:
        await self.upstream.start()
        await self.emulator.start()
        config = self.workdir / "kktd.toml"
        config.write_text(
            CONFIG.format(
                kkt=self.emulator.port,
                journal=self.workdir / "kktd.db",
                upstream=self.upstream.url,
                api=self.workdir / "api.sock",
            ),
            encoding="utf-8",
        )
        env = {**os.environ, "KKTD_INSTANCE_ID": "demo"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("wb") as log_file:
            # its own session and process group: a Ctrl-C on the terminal is ours to handle, not
            # kktd's, so kktd gets exactly one SIGTERM (a second signal would force its exit)
            # S603: our own interpreter and module; ASYNC220: a child we keep, not a call we await
            self.process = subprocess.Popen(  # noqa: S603, ASYNC220
                dying_with_this_process(
                    [sys.executable, "-m", "kktd", "run", "--config", str(config)]
                ),
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
                start_new_session=True,
            )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while await self.look() is None:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kktd exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kktd did not answer within {READY_WITHIN:.0f} s")
            await asyncio.sleep(0.1)

    async def look(self) -> Flow | None:
        try:
            async with ApiClient(self.api, timeout=5.0) as api:
                status = await api.call("GET", "/v1/status")
        except DaemonUnreachable:
            return None
        return self.flow(status)

    def flow(self, status: dict[str, Any]) -> Flow:
        journal, kkt, sync = status["journal"], status["kkt"], status["sync"]
        return Flow(
            printed=self.emulator.device.last_fd,
            journaled=journal["pending"] + journal["synced"] + journal["dead"],
            delivered=len(self.upstream.state.accepted),
            pending=journal["pending"],
            dead=journal["dead"],
            breaker=sync["breaker"],
            probe_in=sync["retry_in_seconds"] or 0.0,
            kkt="online" if kkt["connected"] else "OFFLINE",
            backoff=sync["backoff_delay_seconds"] or 0.0,
        )

    async def press(self, key: str) -> None:
        """What a key does; the note shows on the next line."""
        if key == "q":
            self.stop.set()
        elif key == "u":
            if self.upstream.is_up:
                await self.upstream.go_down()
                self.note = "  <- upstream DOWN (connection refused)"
            else:
                await self.upstream.come_back()
                self.note = "  <- upstream back"
        elif key == "e":
            self.errors_on = not self.errors_on
            self.upstream.set_faults(error_rate=1.0 if self.errors_on else 0.0)
            self.note = "  <- upstream answers 5xx" if self.errors_on else "  <- upstream healthy"
        elif key == "s":
            if self.emulator.serving:
                self.emulator.vanish()
                self.note = "  <- serial line GONE"
            else:
                self.emulator.reappear()
                self.note = "  <- serial line back"

    async def close(self) -> int | None:
        """SIGTERM kktd's process group and wait (SIGKILL after a bound); stop the emulator and
        the mock. kktd's exit code; a second call only returns it again."""
        process = self.process
        if self._closed:
            return None if process is None else process.returncode
        self._closed = True
        if process is not None and process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                await asyncio.to_thread(process.wait)
        await self.emulator.stop()
        await self.upstream.stop()
        return None if process is None else process.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # its own group: start_new_session

    async def drain(self) -> Flow | None:
        """Stop printing and let kktd catch up, briefly, so the summary adds up."""
        self.emulator.stop_issuing()
        deadline = time.monotonic() + DRAIN_WITHIN
        flow = await self.look()
        while flow is not None and (flow.pending or flow.journaled < flow.printed):
            if time.monotonic() > deadline or not self.upstream.is_up or self.errors_on:
                break
            await asyncio.sleep(0.2)
            flow = await self.look()
        return flow

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Keys without Enter and without echo; the terminal is restored however we leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def show(demo: Demo, seconds: float | None) -> Flow | None:
    """A line a second until `seconds` pass or the demo is stopped; the last look."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last = None
    while not demo.stop.is_set():
        elapsed = loop.time() - started
        if seconds is not None and elapsed >= seconds:
            break
        flow = await demo.look()
        if flow is not None:
            last = flow
            print(flow.line(elapsed, demo.note), flush=True)
            demo.note = ""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, started + int(elapsed) + 1 - loop.time())):
                await demo.stop.wait()
    return last


async def run(
    seconds: float | None, keys: bool, rate: float, workdir: Path, tcp: bool = False
) -> int:
    demo = Demo(workdir, rate, tcp)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, demo.stop.set)
    started = loop.time()
    try:
        try:
            last = await _watch(demo, seconds, keys)
        except RuntimeError as exc:
            print(f"demo: {exc}\n{clean(demo.log_tail(), block=True)}", file=sys.stderr)
            return 1
        final = await demo.drain() or last
        code = await demo.close()
        if final is not None:
            print(final.summary(loop.time() - started), flush=True)
        print(f"kktd stopped (exit {code})", flush=True)
        return 0 if code in (0, None) else 1
    finally:
        await demo.close()  # whatever went wrong: kktd never outlives the demo


async def _watch(demo: Demo, seconds: float | None, keys: bool) -> Flow | None:
    """Start the parts, then show the flow (reading keys, if asked) until the end; the last look."""
    await demo.start()
    print(f"kktd demo in {demo.workdir} (kktd's log: {demo.log_path})", flush=True)
    print(f"emulated KKT on {demo.emulator.port}, mock upstream at {demo.upstream.url}")
    await demo.wait_ready()
    if not keys:
        print("Ctrl-C to stop", flush=True)
        return await show(demo, seconds)
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    pressed: asyncio.Queue[str] = asyncio.Queue()
    with cbreak(stdin):
        # the keys are shown once they work: a key typed before cbreak would wait for Enter
        print(KEYS, flush=True)
        loop.add_reader(stdin, lambda: pressed.put_nowait(os.read(stdin, 1).decode()))
        worker = asyncio.create_task(_keys(demo, pressed))
        try:
            return await show(demo, seconds)
        finally:
            loop.remove_reader(stdin)
            worker.cancel()


async def _keys(demo: Demo, pressed: asyncio.Queue[str]) -> None:
    while True:
        await demo.press((await pressed.get()).lower())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kktd-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="run this long, then stop (for CI)")
    parser.add_argument("--no-keys", action="store_true", help="do not read keys from stdin")
    parser.add_argument("--rate", type=float, default=2.0, help="receipts a second (2)")
    parser.add_argument("--tcp", action="store_true", help="the KKT on a TCP port, not a pty")
    args = parser.parse_args(argv)
    keys = not args.no_keys and sys.stdin.isatty()
    # the demo's own parts log warnings only: the flow lines are the show (kktd logs to a file)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    workdir = Path(tempfile.mkdtemp(prefix="kktd-demo-"))
    try:
        return asyncio.run(run(args.seconds, keys, args.rate, workdir, args.tcp))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
