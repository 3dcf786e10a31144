"""`kktd run` as a real subprocess, with a real NOTIFY_SOCKET to read what it tells systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.redis_server import free_port

BASE_CONFIG = """\
[kkt]
port = "{port}"
poll_interval = "200ms"

[journal]
path = "{journal}"

[upstream]
url = "{upstream}"
timeout = "2s"

[sync]
interval = "1s"

[api]
listen = "unix:{api}"

[log]
level = "debug"
format = "json"
"""


def write_config(
    directory: Path, *, kkt_port: str | None = None, upstream: str | None = None, extra: str = ""
) -> Path:
    path = directory / "kktd.toml"
    path.write_text(
        BASE_CONFIG.format(
            port=kkt_port or str(directory / "no-such-kkt"),
            journal=directory / "kktd.db",
            upstream=upstream or f"http://127.0.0.1:{free_port()}/v1/receipts",
            api=directory / "api.sock",
        )
        + extra,
        encoding="utf-8",
    )
    return path


class DaemonProcess:
    """One `python -m kktd run`; `messages` holds every datagram it sent to NOTIFY_SOCKET."""

    def __init__(
        self,
        config: Path,
        *,
        watchdog_usec: int | None = None,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.dir = config.parent
        self.sock_path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        environ = {k: v for k, v in os.environ.items() if k not in {"JOURNAL_STREAM"}}
        environ["NOTIFY_SOCKET"] = str(self.sock_path)
        environ["PYTHONFAULTHANDLER"] = "1"
        if watchdog_usec is not None:
            environ["WATCHDOG_USEC"] = str(watchdog_usec)
        environ.update(env or {})
        self.stderr_path = self.dir / "stderr.log"
        self._stderr = self.stderr_path.open("wb")
        command = list(argv) if argv else [sys.executable, "-m", "kktd", "run"]
        self.proc = subprocess.Popen(
            [*command, "--config", str(config)],
            stderr=self._stderr,
            stdout=subprocess.DEVNULL,
            env=environ,
        )

    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float = 15.0, start: int = 0
    ) -> int:
        """Index of the first message from ``start`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            for index in range(start, len(self.messages)):
                if predicate(self.messages[index][1]):
                    return index
            if self.proc.poll() is not None:
                raise AssertionError(f"kktd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no such message in {self.messages!r}\n{self.log()}")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = 20.0) -> int:
        return self.wait_for(lambda m: "READY=1" in m.split("\n"), timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self.drain()
        return code

    def log(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stderr.close()
        self.sock.close()
