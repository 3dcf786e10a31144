"""`kktd run` as a child process with a NOTIFY_SOCKET of our own, as systemd runs it.

One class for the tests, the chaos harness and the benchmarks: `messages` holds every datagram
kktd sent to the socket, with the monotonic time it arrived; `wait_for` finds one (blocking, or
`wait_for_async` on an event loop); `stop` is SIGTERM with a deadline, `close` kills whatever is
left and releases the socket. The socket stays bound across `start`s, so a restarted kktd is
heard the same way. stderr (kktd's log) goes to `log_path`, emptied when the object is made and
appended to across its starts.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.support.wait import wait_until, wait_until_blocking

READY_WITHIN = 30.0
STOP_WITHIN = 20.0
# systemd's own variables that must not leak in from the environment the tests run in
NOT_INHERITED = {"JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID", "NOTIFY_SOCKET"}

Match = Callable[[str], bool]


def has_line(line: str) -> Match:
    """A `wait_for` predicate: the datagram carries `line` as one of its lines."""
    return lambda message: line in message.split("\n")


class KktdProcess:
    """One `python -m kktd run --config CONFIG`, started at once unless `start=False`.

    `argv` replaces `python -m kktd run` (a wrapper, a staged venv); `base_env` replaces the
    environment kktd inherits (os.environ), and `env` is added on top.
    """

    def __init__(
        self,
        config: Path,
        *,
        watchdog_usec: int | None = None,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> None:
        self.config = config
        self.dir = config.parent
        self.sock_path = self.dir / "notify.sock"
        self.sock_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        inherited = os.environ if base_env is None else base_env
        self.env = {k: v for k, v in inherited.items() if k not in NOT_INHERITED}
        self.env.update(NOTIFY_SOCKET=str(self.sock_path), PYTHONFAULTHANDLER="1")
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.env.update(env or {})
        self.argv = [*(argv or [sys.executable, "-m", "kktd", "run"]), "--config", str(config)]
        self.log_path = self.dir / "kktd.log"
        self.log_path.write_bytes(b"")  # a new process object reads only its own runs' log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # time.monotonic() of the last start
        self._closed = False
        if start:
            self.start()

    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Spawn kktd (again); the messages of an earlier run are dropped."""
        self.drain()
        self.messages.clear()
        self.started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=subprocess.DEVNULL, stderr=log, env=self.env
            )

    def drain(self, wait: float = 0.0) -> None:
        """Read every datagram waiting on the socket, after waiting up to `wait` s for one."""
        if wait and not self._closed:
            with contextlib.suppress(OSError, ValueError):  # closed under a reader thread
                select.select([self.sock], [], [], wait)
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, OSError):
                return
            self.messages.append((time.monotonic(), data.decode("utf-8", "replace")))

    def read_in_background(self) -> None:
        """Keep reading, as systemd does, so that kktd's STATUS= lines never pile up unread
        (for long runs nobody waits on, e.g. the benchmarks)."""

        def reader() -> None:
            while not self._closed:
                self.drain(wait=0.2)

        threading.Thread(target=reader, daemon=True).start()

    def _find(self, match: Match, start: int) -> int | None:
        """Index of the first message from `start` on that matches; fails if kktd has exited."""
        self.drain(wait=0.02)
        for index in range(start, len(self.messages)):
            if match(self.messages[index][1]):
                return index + 1  # truthy even for the first message: `wait_for` takes 1 off
        if not self.alive:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"kktd exited with {code}:\n{self.tail()}")
        return None

    def wait_for(self, match: Match, timeout: float = 15.0, start: int = 0) -> int:
        """Index of the first message from `start` on that satisfies `match`."""
        found = wait_until_blocking(
            lambda: self._find(match, start),
            timeout=timeout,
            interval=0,  # `_find` waits on the socket: an arrival is timed when it comes
            what=f"a notify message like that in {[m for _, m in self.messages]!r}",
            detail=self.tail,
        )
        return found - 1

    async def wait_for_async(self, match: Match, timeout: float = 15.0, start: int = 0) -> int:
        """`wait_for` on an event loop: polls without blocking it."""
        found = await wait_until(
            lambda: self._find(match, start),
            timeout=timeout,
            what="a notify message",
            detail=self.tail,
        )
        return found - 1

    def wait_ready(self, timeout: float = READY_WITHIN) -> int:
        return self.wait_for(has_line("READY=1"), timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.drain()
        return code

    def stop(self, timeout: float = STOP_WITHIN) -> int | None:
        """SIGTERM and wait for the exit code; None when it had to be killed after `timeout`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._closed = True
        self.sock.close()
