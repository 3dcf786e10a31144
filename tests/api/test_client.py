"""The API client: calls, streamed records, an unreachable daemon named by its address, and
answers that are not kktd's (not JSON, another shape, cut short) as `BadAnswer`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from kktd.cli.client import ApiClient, ApiError, BadAnswer, DaemonUnreachable
from kktd.config import ApiConfig, Secret
from kktd.control.api.server import ApiServer
from kktd.testbed.mock_upstream import MockUpstream
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
    server = ApiServer(daemon.runtime)
    await server.start(daemon.config.api)
    try:
        await journal_fds(daemon, 1, 2)
        listen = daemon.config.api.listen
        async with ApiClient(ApiConfig(listen=listen, token=Secret(TOKEN))) as api:
            body = await api.call("POST", "/v1/dlq/retry-all")
            assert body["retried"] == 0
            with pytest.raises(ApiError) as caught:
                await api.call("GET", "/v1/documents/1/99")
            lines = [
                line async for line, _ in api.records("/v1/export", {"since": "2000-01-01"}, {})
            ]
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


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(directory: Path, answer: Answer) -> AsyncIterator[ApiClient]:
    """An aiohttp server answering every path with `answer`, and a client of it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    path = directory / "other.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        async with ApiClient(ApiConfig(listen=f"unix:{path}")) as api:
            yield api
    finally:
        await runner.cleanup()


async def test_an_error_status_without_kktds_error_field_is_a_bad_answer(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"message": "Not Found"}, status=404)

    async with serving(tmp_path, answer) as api:
        with pytest.raises(BadAnswer, match=r"\(HTTP 404, application/json; no 'error'\)"):
            await api.call("GET", "/v1/status")


async def test_a_redirect_is_reported_not_followed(tmp_path: Path) -> None:
    followed: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/elsewhere":
            followed.append(request.path)
            return web.json_response({"retried": 1})
        raise web.HTTPFound("/elsewhere")

    async with serving(tmp_path, answer) as api:
        with pytest.raises(BadAnswer, match=r"\(HTTP 302, "):
            await api.call("POST", "/v1/dlq/retry-all", shape={"retried": int})
    assert followed == []


async def test_a_shape_names_the_field_that_is_missing_or_of_another_type(
    tmp_path: Path,
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"items": "none", "next": None})

    async with serving(tmp_path, answer) as api:
        assert await api.call("GET", "/v1/dlq", shape={"next": type(None)}) == {
            "items": "none",
            "next": None,
        }
        with pytest.raises(BadAnswer, match=r"; no 'items'\): \{\"items\": \"none\""):
            await api.call("GET", "/v1/dlq", shape={"items": list})


async def test_a_stream_that_ends_inside_a_record_names_the_records_before_it(
    tmp_path: Path,
) -> None:
    async def answer(request: web.Request) -> web.Response:
        body = b'{"fn": "1", "fd": 1}\n{"fn": "1", "fd": 2}\n{"fn": "1", "f'
        return web.Response(body=body, content_type="application/x-ndjson")

    seen: list[int] = []

    async def collect(api: ApiClient) -> None:
        async for _, item in api.records("/v1/export", {}, {"fd": int}):
            seen.append(item["fd"])

    async with serving(tmp_path, answer) as api:
        with pytest.raises(BadAnswer, match=r"broke off after 2 records: \{\"fn\": \"1\", \"f$"):
            await collect(api)
    assert seen == [1, 2]


async def test_a_line_that_is_not_utf8_is_a_bad_answer_not_a_crash(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b'{"fd": 1}\n\xff\xfe{}\n', content_type="application/x-ndjson")

    async with serving(tmp_path, answer) as api:
        with pytest.raises(
            BadAnswer, match=r"not kktd's export after 1 record \(not a JSON object\)"
        ):
            _ = [item async for _, item in api.records("/v1/export", {}, {"fd": int})]
