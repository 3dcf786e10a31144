"""Helpers for tests that talk to the mock upstream: entries, polling, TLS files, a stuck port."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from kktd.journal import JournalEntry
from kktd.mock_upstream import MockUpstream

FN = "9999078900005488"


def make_entry(fd: int, *, fn: str = FN, fields: dict[str, Any] | None = None) -> JournalEntry:
    """A pending journal row as the engine would claim it (no journal needed)."""
    return JournalEntry(
        fn=fn,
        fd=fd,
        doc_type=3,
        raw=b"\x01\x02" + fd.to_bytes(4, "little"),
        fields=fields if fields is not None else {"doc_type": 3, "doc_kind": "receipt"},
        journaled_at=0.0,
        state="pending",
        attempts=0,
        last_error=None,
        next_attempt_at=0.0,
        synced_at=None,
    )


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll `predicate` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_mock(**kwargs: Any) -> AsyncIterator[MockUpstream]:
    mock = MockUpstream(**kwargs)
    await mock.start()
    try:
        yield mock
    finally:
        await mock.stop()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1 made with the openssl tool; skips the test without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connect hangs until it times out.

    Linux drops SYNs for a listener whose backlog is full, which is what a black-holed
    upstream looks like from here.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    port = int(listener.getsockname()[1])
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
