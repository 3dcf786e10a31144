"""Secrets never ride in a URL that kktd shows or logs: user info is refused at load, and the
query (`?api_key=...`) is redacted in print-config, /v1/status, and the sync error lines."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from kktd.config import ConfigError, UpstreamConfig, load_config, redact_url
from kktd.control.api.server import create_app
from kktd.sync.client import UpstreamClient
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import ClientFactory, build_daemon, make_config, upstream
from tests.support.redis_server import free_port
from tests.support.upstream import make_entry

KEY = "hunter2"

__all__ = ["upstream"]  # the fixture, for this module's tests


@pytest.mark.parametrize(
    ("key", "url", "hint"),
    [
        ("upstream.url", f"https://{KEY}@collector.example/in", "upstream.token_file"),
        ("upstream.url", f"https://kktd:{KEY}@collector.example/in", "upstream.token_file"),
        ("upstream.url", f"https://{KEY}:@collector.example/in", "upstream.token_file"),
        ("lock.redis_url", f"redis://{KEY}@127.0.0.1:6379/0", "lock.password_file"),
        ("lock.redis_url", f"rediss://default:{KEY}@redis.example", "lock.password_file"),
        ("lock.redis_url", f"unix://{KEY}@/run/redis/redis.sock", "lock.password_file"),
    ],
)
def test_user_info_in_a_url_is_refused_with_file_line_key_and_where_secrets_go(
    key: str, url: str, hint: str, tmp_path: Path
) -> None:
    section, name = key.split(".")
    config = tmp_path / "kktd.toml"
    config.write_text(f'# till 4\n[{section}]\n{name} = "{url}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    text = str(caught.value)
    assert text.startswith(f"{config}:3: {key}: user info (user:password@ or token@) in the URL")
    assert text.endswith(f"put the secret in a file and name it in {hint}")
    assert KEY not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://c.example/v1/in", "https://c.example/v1/in"),
        (f"https://c.example/in?api_key={KEY}&shop=7", "https://c.example/in?api_key=***&shop=***"),
        (f"https://c.example:8443/in?{KEY}#{KEY}", "https://c.example:8443/in?***#***"),
        (f"https://user:{KEY}@c.example/in", "https://c.example/in"),
        (f"redis://127.0.0.1:6379/0?password={KEY}", "redis://127.0.0.1:6379/0?password=***"),
        (f"unix:///run/redis.sock?password={KEY}", "unix:///run/redis.sock?password=***"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("", ""),
    ],
)
def test_redact_url_hides_query_values_fragment_and_user_info(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_print_config_redacts_the_query_of_both_urls(tmp_path: Path) -> None:
    config = tmp_path / "kktd.toml"
    config.write_text(
        f'[upstream]\nurl = "https://c.example/in?api_key={KEY}"\n'
        f'[lock]\nredis_url = "redis://127.0.0.1:6379/0?password={KEY}"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "kktd", "print-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout
    assert 'url = "https://c.example/in?api_key=***"' in done.stdout
    assert 'redis_url = "redis://127.0.0.1:6379/0?password=***"' in done.stdout


async def test_status_shows_the_upstream_url_without_its_query(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> None:
    daemon = await build_daemon(make_config(tmp_path, f"{upstream.url}?api_key={KEY}"))
    try:
        client = await aiohttp_client(create_app(daemon.runtime))
        body = await (await client.get("/v1/status")).json()
    finally:
        assert daemon.components is not None
        await daemon.components.close()
    assert body["sync"]["upstream"] == f"{upstream.url}?api_key=***"


@pytest.fixture
async def refusing() -> AsyncIterator[str]:
    """An upstream whose /locked answers 401 and whose other paths are a web server's 404."""

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/locked":
            return web.json_response({"error": "bad token"}, status=401)
        return web.Response(text="<html>Not Found</html>", status=404, content_type="text/html")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "event"), [("/locked", "sync.forbidden"), ("/nowhere", "sync.misrouted")]
)
async def test_the_sync_error_lines_log_the_url_without_its_query(
    refusing: str, path: str, event: str
) -> None:
    client = UpstreamClient(
        UpstreamConfig(url=f"{refusing}{path}?api_key={KEY}"), instance_id="till-1", version="9"
    )
    await client.start()
    try:
        with capture_logs() as logs:
            await client.deliver(make_entry(1), None)
    finally:
        await client.close()
    (line,) = [entry for entry in logs if entry["event"] == event]
    assert line["url"] == f"{refusing}{path}?api_key=***"
    assert KEY not in str(logs)
