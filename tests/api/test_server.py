"""The API server: unix socket and loopback TCP, the token read live, errors as JSON."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import aiohttp

from kktd.config import ApiConfig, Secret
from kktd.control.api.server import SOCKET_MODE, ApiServer
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import TOKEN, build_daemon, make_config
from tests.support.redis_server import free_port


async def test_unix_socket_replaces_a_stale_file_and_is_group_only(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    daemon = await build_daemon(make_config(tmp_path, upstream.url))
    sock = tmp_path / "api.sock"
    sock.write_text("left by a killed daemon")
    server = ApiServer(daemon.runtime)
    await server.start(daemon.config.api)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == SOCKET_MODE
        connector = aiohttp.UnixConnector(path=str(sock))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost/v1/health") as resp,
        ):
            assert resp.status == 200
    finally:
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


async def test_loopback_tcp_and_a_token_rotated_by_reload(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    port = free_port()
    config = make_config(tmp_path, upstream.url)
    config = replace(config, api=ApiConfig(listen=f"127.0.0.1:{port}", token=Secret(TOKEN)))
    daemon = await build_daemon(config)
    server = ApiServer(daemon.runtime)
    await server.start(config.api)
    url = f"http://127.0.0.1:{port}/v1/dlq/retry-all"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
            # what a SIGHUP with a new api.token_file does: the next request needs the new one
            daemon.config = replace(config, api=replace(config.api, token=Secret("rotated")))
            async with session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 401
            async with session.post(url, headers={"Authorization": "Bearer rotated"}) as resp:
                assert resp.status == 200
    finally:
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


async def test_without_a_token_file_posts_are_open(tmp_path: Path, upstream: MockUpstream) -> None:
    config = make_config(tmp_path, upstream.url)
    config = replace(config, api=replace(config.api, token=None))
    daemon = await build_daemon(config)
    server = ApiServer(daemon.runtime)
    await server.start(config.api)
    try:
        connector = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post("http://localhost/v1/dlq/retry-all") as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["retried"] == 0
    finally:
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()
