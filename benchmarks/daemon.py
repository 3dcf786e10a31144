"""`kktd run` as a child process with a NOTIFY_SOCKET of our own, as systemd would run it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CONFIG = """\
[kkt]
port = "{port}"
poll_interval = "{poll}"
start_fd = "first"

[journal]
path = "{journal}"

[upstream]
url = "{upstream}"

[api]
listen = "unix:{api}"

[log]
level = "warning"
format = "json"
"""
READY_WITHIN = 30.0
STOP_WITHIN = 15.0


def write_config(directory: Path, *, port: Path, upstream: str, poll: str = "1s") -> Path:
    """Only what a till must set; everything else at kktd's defaults."""
    path = directory / "kktd.toml"
    path.write_text(
        CONFIG.format(
            port=port,
            poll=poll,
            journal=directory / "kktd.db",
            upstream=upstream,
            api=directory / "api.sock",
        ),
        encoding="utf-8",
    )
    return path


class Kktd:
    """One `python -m kktd run --config ...`; `ready_after` is the seconds from spawn to READY=1."""

    def __init__(self, config: Path) -> None:
        self.dir = config.parent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock_path = self.dir / "notify.sock"
        sock_path.unlink(missing_ok=True)
        self.sock.bind(str(sock_path))
        env = {k: v for k, v in os.environ.items() if k not in {"WATCHDOG_USEC", "JOURNAL_STREAM"}}
        env["NOTIFY_SOCKET"] = str(sock_path)
        self.log = (self.dir / "kktd.log").open("wb")
        self.started = time.perf_counter()
        # S603: our own interpreter and module
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "kktd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=env,
        )
        self.ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> float:
        """Block until READY=1 (a blocking recv with a deadline); the seconds it took."""
        self.sock.settimeout(0.2)
        deadline = self.started + READY_WITHIN
        while self.ready_after is None:
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"kktd not ready (exit {self.proc.returncode}): {self.tail()}")
            try:
                message = self.sock.recv(65536).decode("utf-8", errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                self.ready_after = time.perf_counter() - self.started
        # keep reading, as systemd does: kktd's STATUS= lines must not pile up unread
        threading.Thread(target=self._drain, daemon=True).start()
        return self.ready_after

    def _drain(self) -> None:
        with contextlib.suppress(OSError):  # the socket closed by stop()
            while self.proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    self.sock.recv(65536)

    def tail(self) -> str:
        self.log.flush()
        text = (self.dir / "kktd.log").read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-10:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()
        self.log.close()
