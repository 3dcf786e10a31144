"""The sd_notify protocol, in tree (SPEC section 7).

A datagram of newline-separated ``KEY=value`` assignments to the unix socket named by
``$NOTIFY_SOCKET`` (``@name`` is an abstract socket). We encode UTF-8, so a Cyrillic ``STATUS=``
arrives intact, and we raise on failure instead of swallowing it: the daemon decides whether a
failed notification is worth a log line, and tests can see it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends state changes to systemd; a no-op when not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> None:
        """Send one datagram; raises OSError when the socket refuses it."""
        if self.address is None:
            return
        for item in assignments:
            if "\n" in item or "=" not in item:
                raise ValueError(f"not a single KEY=value assignment: {item!r}")
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        # A socket per datagram: notifications are rare, and nothing stays open to leak.
        # Non-blocking: a listener that stops reading must cost a dropped STATUS= line (an
        # OSError the callers log), never a frozen event loop.
        flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, flags) as sock:
            sock.sendto("\n".join(assignments).encode("utf-8"), target)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *_status(status))

    def status(self, status: str) -> None:
        self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *_status(status))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _status(status: str | None) -> tuple[str, ...]:
    return () if status is None else (f"STATUS={_one_line(status)}",)


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked for."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and int(owner) != (os.getpid() if pid is None else pid):
        return None
    value = int(usec)
    return value / 2 / 1_000_000 if value > 0 else None
