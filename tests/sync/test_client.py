"""The upstream client: the request of SPEC section 4 and every row of section 3's outcome table."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from kktd.config import Secret, UpstreamConfig
from kktd.sync.client import Delivery, Outcome, UpstreamClient
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.redis_server import free_port
from tests.support.upstream import (
    FN,
    entry_raw,
    make_entry,
    running_mock,
    self_signed_cert,
    unanswered_port,
)

TOKEN = "s3cret-token"


@dataclass
class Scripted:
    """A tiny upstream that answers what the test says and keeps what it was sent."""

    status: int = 201
    body: bytes = b'{"status": "accepted"}'
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    upstream = Scripted()
    app = web.Application()
    app.router.add_post("/v1/receipts", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield upstream, f"http://127.0.0.1:{port}/v1/receipts"
    finally:
        await runner.cleanup()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., UpstreamClient]]:
    clients: list[UpstreamClient] = []

    def make(url: str, **cfg: Any) -> UpstreamClient:
        connect_timeout = cfg.pop("connect_timeout", 5.0)
        client = UpstreamClient(
            UpstreamConfig(url=url, **cfg),
            instance_id="till-1",
            version="9.9",
            connect_timeout=connect_timeout,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def deliver(client: UpstreamClient, fd: int = 7, fence: int | None = None) -> Delivery:
    await client.start()
    return await client.deliver(make_entry(fd), fence)


def test_body_has_identity_fields_and_base64_tlv_and_invents_nothing() -> None:
    entry = make_entry(7, fields={"doc_kind": "receipt", "total": 20000, "fd": 999, "tlv": "x"})
    assert json.loads(entry.body) == {
        "fn": FN,
        "fd": 7,
        "doc_kind": "receipt",
        "total": 20000,
        "tlv": base64.b64encode(entry_raw(7)).decode(),
    }


async def test_request_carries_every_header_of_the_contract(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    client = make_client(url, token=Secret(TOKEN))
    entry = make_entry(7, fields={"items": [{"name": "Хлеб", "price": 4500}]})
    await client.start()
    await client.deliver(entry, 42)
    headers, body = upstream.seen[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == f"{FN}-7"
    assert headers["User-Agent"] == "kktd/9.9"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Kktd-Fence"] == "42"
    assert headers["X-Kktd-Instance"] == "till-1"
    assert body == entry.body  # the stored bytes, as they are


async def test_no_authorization_or_fence_header_when_there_is_none(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    await deliver(make_client(url), fence=None)
    headers, _ = upstream.seen[0]
    assert "Authorization" not in headers
    assert "X-Kktd-Fence" not in headers


KEY = f"{FN}-7"  # the Idempotency-Key of `deliver`'s FD
NAMED = json.dumps({"error": "no such KKT registered", "key": KEY}).encode()
UNNAMED = b'{"error": "Not Found"}'


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"", Outcome.ACCEPTED),
        (201, b"", Outcome.ACCEPTED),
        (202, b"", Outcome.ACCEPTED),
        (409, b"", Outcome.DUPLICATE),
        # a 4xx naming this FD is the collector's verdict on it
        (400, NAMED, Outcome.REJECTED),
        (404, NAMED, Outcome.REJECTED),
        (410, NAMED, Outcome.REJECTED),
        (413, NAMED, Outcome.REJECTED),
        (422, NAMED, Outcome.REJECTED),
        # any other 4xx, and every 3xx, is something else answering: misrouting
        (400, UNNAMED, Outcome.MISROUTED),
        (404, UNNAMED, Outcome.MISROUTED),
        (413, b"<html>413 Request Entity Too Large</html>", Outcome.MISROUTED),
        (418, b"", Outcome.MISROUTED),
        (422, UNNAMED, Outcome.MISROUTED),
        (301, b"", Outcome.MISROUTED),
        (302, b"", Outcome.MISROUTED),
        (307, b"", Outcome.MISROUTED),
        (308, b"", Outcome.MISROUTED),
        # kktd is not let in, whatever the body says
        (401, b"", Outcome.FORBIDDEN),
        (403, NAMED, Outcome.FORBIDDEN),
        # "later", even when the body names the FD
        (408, b"", Outcome.TRANSIENT),
        (425, b"", Outcome.TRANSIENT),
        (429, NAMED, Outcome.TRANSIENT),
        (500, NAMED, Outcome.TRANSIENT),
        (502, b"", Outcome.TRANSIENT),
        (503, b"", Outcome.TRANSIENT),
        (504, b"", Outcome.TRANSIENT),
        # outside the table: retried, the Idempotency-Key keeps a retry harmless
        (204, b"", Outcome.TRANSIENT),
        # the fence was superseded, whatever the body says
        (412, NAMED, Outcome.FENCE_SUPERSEDED),
    ],
)
async def test_each_answer_is_classified_by_the_outcome_table(
    scripted: tuple[Scripted, str],
    make_client: Callable[..., UpstreamClient],
    status: int,
    body: bytes,
    outcome: Outcome,
) -> None:
    upstream, url = scripted
    upstream.status, upstream.body = status, body
    upstream.headers = {"Location": url} if 300 <= status < 400 else {}
    delivery = await deliver(make_client(url))
    assert (delivery.outcome, delivery.status) == (outcome, status)
    assert len(upstream.seen) == 1  # a redirect is not followed


async def test_a_4xx_naming_another_fd_is_no_verdict_on_this_one(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    upstream.status = 422
    upstream.body = json.dumps({"error": "bad receipt", "key": f"{FN}-8"}).encode()
    delivery = await deliver(make_client(url), fd=7)
    assert delivery.outcome is Outcome.MISROUTED


@pytest.mark.parametrize(
    ("fault", "status", "quoted"),
    [
        ({"not_found_page": True}, 404, '"error": "Not Found"'),
        ({"proxy_page": True}, 400, "The plain HTTP request was sent to HTTPS port"),
        ({"redirect": 301}, 301, "redirect to https://127.0.0.1:"),
        ({"redirect": 308}, 308, "redirect to https://127.0.0.1:"),
    ],
)
async def test_a_page_that_is_not_the_collectors_verdict_is_misrouting_with_the_next_step(
    make_client: Callable[..., UpstreamClient], fault: dict[str, Any], status: int, quoted: str
) -> None:
    async with running_mock() as mock:
        mock.set_faults(**fault)
        delivery = await deliver(make_client(mock.url))
    assert (delivery.outcome, delivery.status) == (Outcome.MISROUTED, status)
    assert quoted in delivery.reason
    assert "set upstream.url" in delivery.reason or "check upstream.url" in delivery.reason


async def test_misrouting_is_logged_once_when_it_starts_and_once_when_it_ends(
    make_client: Callable[..., UpstreamClient],
) -> None:
    async with running_mock() as mock:
        client = make_client(mock.url)
        mock.set_faults(not_found_page=True)
        with capture_logs() as logs:
            for fd in range(1, 6):
                await deliver(client, fd=fd)
            mock.set_faults(not_found_page=False, proxy_page=True)  # a change: said again
            await deliver(client, fd=6)
            await deliver(client, fd=7)
            mock.set_faults(proxy_page=False)
            await deliver(client, fd=8)
            await deliver(client, fd=9)
    loud = [(e["event"], e.get("status")) for e in logs if e["log_level"] != "debug"]
    assert loud == [
        ("sync.misrouted", 404),
        ("sync.misrouted", 400),
        ("sync.upstream_recovered", 201),
    ]
    recovered = next(e for e in logs if e["event"] == "sync.upstream_recovered")
    assert (recovered["was"], recovered["answers"]) == ("sync.misrouted", 2)


async def test_a_rejection_keeps_the_upstreams_json_error_text(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    upstream.status = 422
    upstream.body = json.dumps({"error": "неверный ИНН", "key": KEY}).encode()
    delivery = await deliver(make_client(url))
    assert delivery == Delivery(Outcome.REJECTED, 422, "неверный ИНН", None)


async def test_a_rejection_keeps_500_characters_of_its_error_without_control_characters(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    error = " ИНН\x1b[31m\x00 неверен\nстрока 2\t" + "x" * 2000
    upstream.status = 400
    upstream.body = json.dumps({"error": error, "key": KEY}).encode()
    delivery = await deliver(make_client(url))
    assert delivery.outcome is Outcome.REJECTED
    assert delivery.reason == (" ИНН[31m неверен строка 2 " + "x" * 2000)[:500]


async def test_a_rejection_without_error_text_keeps_the_body(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    upstream.status = 422
    upstream.body = json.dumps({"key": KEY, "message": "bad"}).encode()
    delivery = await deliver(make_client(url))
    assert delivery.outcome is Outcome.REJECTED
    assert delivery.reason == f'{{"key": "{KEY}", "message": "bad"}}'


@asynccontextmanager
async def split_answer(status: int, body: bytes, pieces: int) -> AsyncIterator[str]:
    """A loopback upstream that writes its answer in `pieces`, pausing between them."""
    answered = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            whole = (
                f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            step = -(-len(whole) // pieces)
            with suppress(ConnectionError):  # a client that read enough may hang up
                for start in range(0, len(whole), step):
                    if start:
                        await asyncio.sleep(0.05)  # the network's pace: a read per piece
                    writer.write(whole[start : start + step])
                    await writer.drain()
        finally:
            writer.close()
            answered.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/receipts"
        await asyncio.wait_for(answered.wait(), 10)


@pytest.mark.parametrize("status", [404, 422])
async def test_an_error_body_split_over_many_reads_is_read_whole(
    make_client: Callable[..., UpstreamClient], status: int
) -> None:
    error = "документ отклонён: " + "подробности " * 200
    body = json.dumps({"error": error, "key": KEY}, ensure_ascii=False).encode()
    async with split_answer(status, body, pieces=6) as url:
        delivery = await deliver(make_client(url))
    assert (delivery.outcome, delivery.status) == (Outcome.REJECTED, status)
    assert delivery.reason == error[:500]


async def test_an_answer_longer_than_the_read_limit_is_cut_there_not_waited_for(
    make_client: Callable[..., UpstreamClient],
) -> None:
    page = b"<html>" + b"x" * (256 * 1024) + b"</html>"
    async with split_answer(404, page, pieces=4) as url:
        delivery = await deliver(make_client(url))
    assert (delivery.outcome, delivery.status) == (Outcome.MISROUTED, 404)


async def test_transient_answer_carries_status_text_and_retry_after(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    upstream.status, upstream.body = 429, b'{"error": "slow down"}'
    upstream.headers = {"Retry-After": "7"}
    delivery = await deliver(make_client(url))
    assert delivery == Delivery(Outcome.TRANSIENT, 429, "HTTP 429: slow down", 7.0)


async def test_forbidden_is_logged_loud_without_the_token(
    scripted: tuple[Scripted, str], make_client: Callable[..., UpstreamClient]
) -> None:
    upstream, url = scripted
    upstream.status, upstream.body = 401, b'{"error": "bad token"}'
    client = make_client(url, token=Secret(TOKEN))
    with capture_logs() as logs:
        delivery = await deliver(client, fd=1)
        await deliver(client, fd=2)
    assert delivery.outcome is Outcome.FORBIDDEN
    forbidden = [e for e in logs if e["event"] == "sync.forbidden"]
    assert len(forbidden) == 1  # once per change, not once per FD
    assert forbidden[0]["log_level"] == "error"
    assert "upstream.token_file" in forbidden[0]["next_step"]
    assert TOKEN not in repr(logs)


async def test_read_timeout_after_sending_is_transient(
    make_client: Callable[..., UpstreamClient],
) -> None:
    async with running_mock() as mock:
        mock.set_faults(hang_rate=1.0)
        delivery = await deliver(make_client(mock.url, timeout=0.3))
        assert len(mock.state.requests) == 1  # it was sent
    assert delivery.outcome is Outcome.TRANSIENT
    assert delivery.status is None
    assert "Timeout" in delivery.reason


async def test_connection_reset_after_sending_is_transient(
    make_client: Callable[..., UpstreamClient],
) -> None:
    async with running_mock() as mock:
        mock.set_faults(reset_rate=1.0)
        delivery = await deliver(make_client(mock.url))
    assert (delivery.outcome, delivery.status) == (Outcome.TRANSIENT, None)


async def test_an_answer_that_is_not_http_is_transient(
    make_client: Callable[..., UpstreamClient],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SURPRISE \x00\x01\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        delivery = await deliver(make_client(f"http://127.0.0.1:{port}/v1/receipts"))
    assert (delivery.outcome, delivery.status) == (Outcome.TRANSIENT, None)


async def test_connection_refused_is_unreachable(
    make_client: Callable[..., UpstreamClient],
) -> None:
    delivery = await deliver(make_client(f"http://127.0.0.1:{free_port()}/v1/receipts"))
    assert (delivery.outcome, delivery.status) == (Outcome.UNREACHABLE, None)
    assert "ClientConnectorError" in delivery.reason


async def test_dns_failure_is_unreachable(make_client: Callable[..., UpstreamClient]) -> None:
    # .invalid never resolves (RFC 2606)
    delivery = await deliver(make_client("http://kktd-upstream.invalid/v1/receipts"))
    assert delivery.outcome is Outcome.UNREACHABLE


async def test_connect_timeout_is_unreachable(
    make_client: Callable[..., UpstreamClient],
) -> None:
    with unanswered_port() as port:
        client = make_client(f"http://127.0.0.1:{port}/v1/receipts", connect_timeout=0.3)
        delivery = await deliver(client)
    assert delivery.outcome is Outcome.UNREACHABLE
    assert "ConnectionTimeoutError" in delivery.reason


async def test_tls_is_verified_and_an_untrusted_certificate_is_unreachable(
    tmp_path: Path, make_client: Callable[..., UpstreamClient]
) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with running_mock(ssl_context=server_ctx) as mock:
        assert mock.url.startswith("https://")
        untrusted = await deliver(make_client(mock.url), fd=1)
        trusted = await deliver(make_client(mock.url, ca_file=cert), fd=2)
        assert set(mock.state.accepted) == {(FN, 2)}
    assert untrusted.outcome is Outcome.UNREACHABLE
    assert "Certificate" in untrusted.reason
    assert trusted.outcome is Outcome.ACCEPTED


async def test_reconfigure_takes_the_new_url_from_the_next_request(
    make_client: Callable[..., UpstreamClient],
) -> None:
    async with running_mock() as first, running_mock() as second:
        client = make_client(first.url)
        await deliver(client, fd=1)
        client.reconfigure(UpstreamConfig(url=second.url))
        await client.deliver(make_entry(2), None)
        assert (set(first.state.accepted), set(second.state.accepted)) == ({(FN, 1)}, {(FN, 2)})


async def test_duplicate_against_the_mock_upstream(
    make_client: Callable[..., UpstreamClient],
) -> None:
    mock: MockUpstream
    async with running_mock() as mock:
        client = make_client(mock.url)
        first = await deliver(client, fd=5, fence=3)
        again = await deliver(client, fd=5, fence=3)
    assert (first.outcome, again.outcome) == (Outcome.ACCEPTED, Outcome.DUPLICATE)
    assert mock.state.requests[0].fence == 3
