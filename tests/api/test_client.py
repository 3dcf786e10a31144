"""The API client: calls, streamed lines, and an unreachable daemon named by its address."""

from __future__ import annotations

from pathlib import Path

import pytest

from kktd.api.client import ApiClient, ApiError, DaemonUnreachable
from kktd.api.server import ApiServer
from kktd.config import ApiConfig, Secret
from kktd.mock_upstream import MockUpstream
from tests.api.helpers import TOKEN, build_daemon, journal_fds, make_config
from tests.support.redis_server import free_port


async def test_a_missing_socket_is_unreachable_naming_the_address(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path / 'nobody.sock'}"
    async with ApiClient(ApiConfig(listen=listen)) as api:
        with pytest.raises(DaemonUnreachable) as caught:
            await api.call("GET", "/v1/status")
    assert caught.value.address == listen
    assert listen in str(caught.value)
    assert "No such file" in str(caught.value)


async def test_a_closed_port_is_unreachable_naming_the_address() -> None:
    listen = f"127.0.0.1:{free_port()}"
    async with ApiClient(ApiConfig(listen=listen)) as api:
        with pytest.raises(DaemonUnreachable, match=listen):
            await api.call("GET", "/v1/status")


async def test_calls_send_the_token_and_errors_carry_the_json(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    daemon = await build_daemon(make_config(tmp_path, upstream.url))
    server = ApiServer(daemon)
    await server.start(daemon.config.api)
    try:
        await journal_fds(daemon, 1, 2)
        listen = daemon.config.api.listen
        async with ApiClient(ApiConfig(listen=listen, token=Secret(TOKEN))) as api:
            body = await api.call("POST", "/v1/dlq/retry-all")
            assert body["retried"] == 0
            with pytest.raises(ApiError) as caught:
                await api.call("GET", "/v1/documents/1/99")
            lines = [line async for line in api.lines("/v1/export", {"since": "2000-01-01"})]
        assert caught.value.status == 404
        assert caught.value.body["error"] == "unknown_fd"
        assert len(lines) == 2
        async with ApiClient(ApiConfig(listen=listen)) as anonymous:
            status, answer = await anonymous.request("POST", "/v1/dlq/retry-all")
        assert (status, answer["error"]) == (401, "unauthorized")
    finally:
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()
