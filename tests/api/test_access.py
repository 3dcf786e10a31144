"""Who may use the API (SPEC section 6): a web page never, another local user not without the
token for what it guards. Against the real listeners, loopback TCP and a unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from kktd.config import ApiConfig
from kktd.control.api.access import host_allowed, needs_token
from kktd.control.api.server import ApiServer
from kktd.lifecycle.daemon import Daemon
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import FN, TOKEN, auth, build_daemon, journal_fds, make_config
from tests.support.redis_server import free_port

REBOUND = "rebind.attacker.example"
RECEIPT_READS = [f"/v1/documents/{FN}/1", "/v1/export?since=2000-01-01", "/v1/dlq"]
OPEN_READS = ["/v1/health", "/v1/status", "/metrics", "/v1/kkt/buffer/status"]


@dataclass
class Listener:
    daemon: Daemon
    session: aiohttp.ClientSession
    base: str  # the URL prefix the session reaches the API with
    port: int | None  # None on a unix socket

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """(status, `error` of the body or "") of one request."""
        async with self.session.request(method, self.base + path, headers=headers) as resp:
            if resp.content_type != "application/json":
                return resp.status, ""
            body = await resp.json()
            return resp.status, body.get("error", "") if isinstance(body, dict) else ""

    async def dead(self) -> int:
        assert self.daemon.components is not None
        return (await self.daemon.components.journal.counts()).dead


@pytest.fixture(params=["tcp", "unix"])
async def listener(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: MockUpstream
) -> AsyncIterator[Listener]:
    """kktd's API as `kktd run` serves it, with an API token, and one dead FD in the journal."""
    config = make_config(tmp_path, upstream.url)
    port = free_port() if request.param == "tcp" else None
    if port is not None:
        config = replace(config, api=replace(config.api, listen=f"127.0.0.1:{port}"))
    daemon = await build_daemon(config)
    server = ApiServer(daemon.runtime)
    await server.start(config.api)
    if port is None:
        connector = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        session = aiohttp.ClientSession(connector=connector)
        base = "http://localhost"
    else:
        session = aiohttp.ClientSession()
        base = f"http://127.0.0.1:{port}"
    try:
        await journal_fds(daemon, 1)
        assert daemon.components is not None
        await daemon.components.journal.mark_dead(FN, 1, "rejected")
        yield Listener(daemon, session, base, port)
    finally:
        await session.close()
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


@pytest.mark.parametrize(
    "path", ["/v1/status", f"/v1/documents/{FN}/1", "/v1/export?since=2000-01-01"]
)
async def test_a_rebound_host_is_403_before_any_handler(listener: Listener, path: str) -> None:
    port = listener.port or 8765
    status, error = await listener.call("GET", path, {"Host": f"{REBOUND}:{port}", **auth()})
    assert (status, error) == (403, "forbidden")
    status, _ = await listener.call("GET", path, auth())
    assert status == 200  # the same request with the listener's own name


async def test_a_post_with_an_origin_is_403_and_changes_nothing(listener: Listener) -> None:
    # with the token too: the page might have it from an earlier leak; it still is a page
    origin = {"Origin": "http://shop.attacker.example", **auth()}
    for path in ("/v1/dlq/retry-all", f"/v1/dlq/{FN}/1/retry", "/v1/kkt/buffer/sync"):
        assert await listener.call("POST", path, origin) == (403, "forbidden"), path
    assert await listener.dead() == 1
    assert await listener.call("POST", "/v1/dlq/retry-all", auth()) == (200, "")
    assert await listener.dead() == 0


async def test_a_browsers_fetch_metadata_is_403_even_on_open_reads(listener: Listener) -> None:
    status, error = await listener.call("GET", "/metrics", {"Sec-Fetch-Site": "cross-site"})
    assert (status, error) == (403, "forbidden")


@pytest.mark.parametrize("path", RECEIPT_READS)
async def test_with_a_token_receipt_reads_without_it_are_401(listener: Listener, path: str) -> None:
    assert await listener.call("GET", path) == (401, "unauthorized")
    assert await listener.call("GET", path, {"Authorization": "Bearer wrong"}) == (
        401,
        "unauthorized",
    )
    status, _ = await listener.call("GET", path, auth())
    assert status == 200


@pytest.mark.parametrize("path", OPEN_READS)
async def test_health_status_and_metrics_stay_open(listener: Listener, path: str) -> None:
    status, _ = await listener.call("GET", path)
    assert status == 200


async def test_without_a_token_a_form_post_from_a_page_is_still_refused(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    """The default config has no token: the browser check alone keeps a page out."""
    port = free_port()
    config = make_config(tmp_path, upstream.url, api=ApiConfig(listen=f"127.0.0.1:{port}"))
    daemon = await build_daemon(config)
    server = ApiServer(daemon.runtime)
    await server.start(config.api)
    try:
        await journal_fds(daemon, 1)
        assert daemon.components is not None
        await daemon.components.journal.mark_dead(FN, 1, "rejected")
        form = aiohttp.FormData({"x": "1"})
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/v1/dlq/retry-all",
                data=form,
                headers={"Origin": "null"},  # a sandboxed page's form
            ) as resp,
        ):
            assert resp.status == 403
        assert (await daemon.components.journal.counts()).dead == 1
    finally:
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


TCP = ("127.0.0.1", 8765)


@pytest.mark.parametrize(
    ("host", "sockname", "allowed"),
    [
        ("127.0.0.1:8765", TCP, True),
        ("localhost:8765", TCP, True),
        ("LocalHost:8765", TCP, True),
        ("[::1]:8765", TCP, True),
        ("[::1]:8765", ("::1", 8765, 0, 0), True),
        ("127.0.0.2:8765", ("127.0.0.2", 8765), True),  # the listener's own address
        ("127.0.0.2:8765", TCP, False),
        ("localhost:8766", TCP, False),  # another port is another listener
        ("localhost", TCP, False),  # no port means 80
        ("localhost", ("127.0.0.1", 80), True),
        (f"{REBOUND}:8765", TCP, False),
        ("localhost.:8765", TCP, False),
        ("localhost:8765:8765", TCP, False),
        ("localhost:" + "9" * 5000, TCP, False),
        ("[::1]x", TCP, False),
        ("", TCP, False),
        ("localhost", "/run/kktd/api.sock", True),  # curl --unix-socket, aiohttp UnixConnector
        ("localhost:80", "/run/kktd/api.sock", True),
        ("127.0.0.1", "/run/kktd/api.sock", True),
        (REBOUND, "/run/kktd/api.sock", False),
    ],
)
def test_host_names_the_listener(host: str, sockname: object, allowed: bool) -> None:
    assert host_allowed(host, sockname) is allowed


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("POST", "/v1/kkt/buffer/sync", True),
        ("POST", "/v1/anything-added-later", True),
        ("DELETE", "/v1/status", True),
        ("GET", "/v1/dlq", True),
        ("GET", "/v1/documents/{fn}/{fd}", True),
        ("HEAD", "/v1/export", True),
        ("GET", "/v1/status", False),
        ("GET", "/v1/health", False),
        ("GET", "/metrics", False),
        ("GET", "/v1/kkt/buffer/status", False),
        ("GET", "/v1/dlqx", False),
    ],
)
def test_the_token_guards_changes_and_receipt_reads(method: str, path: str, needed: bool) -> None:
    assert needs_token(method, path) is needed


async def test_a_refused_page_is_logged_once_per_reason(listener: Listener) -> None:
    with capture_logs() as logs:
        for _ in range(3):
            await listener.call("GET", "/v1/status", {"Origin": "http://a.example"})
    refused = [entry for entry in logs if entry["event"] == "api.refused"]
    assert len(refused) == 1
    assert "http://a.example" in refused[0]["reason"]
    assert TOKEN not in str(logs)
