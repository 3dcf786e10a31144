"""The in-tree sd_notify: real unix datagram sockets, UTF-8 intact, errors surfaced."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kktd.lifecycle.systemd import Notifier, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_with_cyrillic_status_arrives_as_utf8(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    Notifier(path).ready("ККТ на связи, к отправке: 3")
    assert sock.recv(4096).decode("utf-8") == "READY=1\nSTATUS=ККТ на связи, к отправке: 3"


def test_status_is_folded_into_one_line(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    Notifier(path).status("first\nsecond  third")
    assert sock.recv(4096) == b"STATUS=first second third"


def test_reloading_carries_the_monotonic_clock(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(path).reloading()
    reloading, monotonic = sock.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket_names_are_supported() -> None:
    name = f"kktd-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier("@" + name).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_a_missing_socket_raises_instead_of_being_swallowed(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Notifier(str(tmp_path / "absent.sock")).ready()


def test_a_receiver_that_never_reads_makes_send_fail_instead_of_blocking(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """A blocking sendto here would freeze the whole event loop (found by benchmark B3)."""
    _, path = notify_socket
    notifier = Notifier(path)
    with pytest.raises(OSError):  # noqa: PT012 - the queue fills after an unknown count
        for _ in range(100_000):
            notifier.status("x" * 1000)


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready("ignored")


def test_an_assignment_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single"):
        Notifier(str(tmp_path / "x")).send("STATUS=a\nREADY=1")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == expected
