"""The API while the journal cannot be opened or a component crash-loops, and the acknowledgement
of a journal recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kktd.config import JournalConfig
from kktd.control.api.server import create_app
from kktd.control.status import status_line
from kktd.lifecycle.daemon import Daemon
from kktd.lifecycle.supervisor import CRASH_LOOP, Beat
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import (
    ClientFactory,
    Harness,
    auth,
    build_daemon,
    harness,
    make_config,
    upstream,
)
from tests.api.test_metrics import parse
from tests.support.wait import wait_until

__all__ = ["harness", "upstream"]  # fixtures

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def unopenable(tmp_path: Path, upstream: MockUpstream) -> AsyncIterator[Daemon]:
    """A daemon whose journal path is a directory: SQLite cannot open it, kktd runs degraded."""
    path = tmp_path / "journal-dir"
    path.mkdir()
    config = make_config(tmp_path, upstream.url, journal=JournalConfig(path=path))
    daemon = await build_daemon(config)
    yield daemon
    assert daemon.components is not None
    await daemon.components.close()


@pytest.fixture
async def client(unopenable: Daemon, aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(create_app(unopenable.runtime))


async def test_health_says_the_journal_is_in_error_and_why(client: Client) -> None:
    resp = await client.get("/v1/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["components"]["journal"].startswith("error: journal unavailable: I/O error on ")


async def test_status_and_metrics_keep_answering_without_counts(client: Client) -> None:
    resp = await client.get("/v1/status")
    assert resp.status == 200
    journal = (await resp.json())["journal"]
    assert (journal["pending"], journal["dead"], journal["state"]) == (None, None, "io")
    assert journal["error"].startswith("journal unavailable: I/O error")
    resp = await client.get("/metrics")
    assert resp.status == 200
    samples = parse(await resp.text())
    assert samples[("kktd_journal_state", (("state", "io"),))] == 1
    assert samples[("kktd_journal_state", (("state", "ok"),))] == 0
    # no made-up zero: the counts are absent while the journal cannot be read
    assert not any(name == "kktd_documents" for name, _ in samples)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/kkt/buffer/status"),
        ("GET", "/v1/dlq"),
        ("GET", "/v1/documents/9999078900005488/1"),
        ("GET", "/v1/export?since=2024-05-01"),
        ("POST", "/v1/kkt/buffer/sync"),
        ("POST", "/v1/dlq/retry-all"),
        ("POST", "/v1/journal/recovery/ack"),
    ],
)
async def test_what_needs_the_journal_answers_503_naming_the_cause(
    client: Client,
    method: str,
    path: str,
) -> None:
    resp = await client.request(method, path, headers=auth())
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "journal_unavailable"
    assert body["cause"] == "io"
    assert body["detail"].startswith("journal unavailable: I/O error on ")


async def test_the_status_line_says_why_in_place_of_the_counts(unopenable: Daemon) -> None:
    line = await status_line(unopenable.runtime)
    assert line.startswith("KKT offline, journal unavailable: I/O error on ")
    assert "pending" not in line


async def test_a_recovery_is_shown_until_acknowledged(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> None:
    (tmp_path / "kktd.db").write_bytes(b"not a journal" * 1000)
    daemon = await build_daemon(make_config(tmp_path, upstream.url))
    try:
        client = await aiohttp_client(create_app(daemon.runtime))
        status = await (await client.get("/v1/status")).json()
        recovery = status["journal"]["recovery"]
        assert recovery["moved_to"].startswith(str(tmp_path / "kktd.db.corrupt-"))
        assert status["journal"]["recovered_from"] == recovery["moved_to"]
        assert "journal was damaged and replaced" in await status_line(daemon.runtime)

        assert (await client.post("/v1/journal/recovery/ack")).status == 401  # a POST: token
        resp = await client.post("/v1/journal/recovery/ack", headers=auth())
        assert resp.status == 200
        assert await resp.json() == {"status": "acknowledged", "recovery": recovery}

        status = await (await client.get("/v1/status")).json()
        assert status["journal"]["recovery"] is None
        assert status["journal"]["recovered_from"] is None
        assert "journal was damaged" not in await status_line(daemon.runtime)
        again = await client.post("/v1/journal/recovery/ack", headers=auth())
        assert (await again.json())["status"] == "none"
    finally:
        assert daemon.components is not None
        await daemon.components.close()


async def test_health_and_the_status_line_name_a_crash_looping_component(
    harness: Harness,
) -> None:
    supervisor = harness.daemon.supervisor
    crashes = 0

    async def broken(beat: Beat) -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("database disk image is malformed")

    async def no_wait(_: float) -> None:
        if crashes >= CRASH_LOOP:
            await asyncio.Event().wait()

    task = asyncio.create_task(supervisor.supervise("poller", broken, sleep=no_wait))
    try:
        await wait_until(lambda: crashes >= CRASH_LOOP)
        body = await (await harness.client.get("/v1/health")).json()
        assert body["components"]["supervisor"] == (
            f"crash loop: poller ({CRASH_LOOP} crashes in a row,"
            " last: RuntimeError: database disk image is malformed)"
        )
        assert "crash loop: poller" in await status_line(harness.daemon.runtime)
        samples = parse(await (await harness.client.get("/metrics")).text())
        assert samples[("kktd_component_restarts_total", (("component", "poller"),))] == 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
