"""The mock upstream keeps the contract of SPEC section 4 and obeys its fault switches."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from kktd.testbed.mock_upstream import STALE_FENCE_STATUS, FaultError, Faults, MockUpstream
from tests.support.redis_server import free_port
from tests.support.upstream import FN, running_mock
from tests.support.wait import wait_until

TLV = base64.b64encode(b"\x01\x02").decode()


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with running_mock() as upstream:
        yield upstream


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # no keep-alive: a pooled connection the mock closed on going down would fail differently
    # from a refused connect, which is what the down tests are about
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    mock: MockUpstream,
    fd: int,
    *,
    fence: int | None = None,
    body: Any = None,
    key: str | None = None,
    instance: str = "till-1",
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    payload = body if body is not None else {"fn": FN, "fd": fd, "tlv": TLV}
    headers = {"Idempotency-Key": key or f"{FN}-{fd}", "X-Kktd-Instance": instance}
    if fence is not None:
        headers["X-Kktd-Fence"] = str(fence)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with http.post(mock.url, data=data, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_accepts_an_fd_once_and_answers_409_to_the_same_key(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, mock, 7))[0] == 201
    status, answer, _ = await post(http, mock, 7)
    assert (status, answer) == (409, {"status": "duplicate"})
    assert mock.state.accepted == {(FN, 7): {"fn": FN, "fd": 7, "tlv": TLV}}
    assert mock.state.duplicates == 1
    assert mock.state.deliveries[(FN, 7)] == 2


@pytest.mark.parametrize(
    ("body", "key", "error"),
    [
        (b"{not json", None, "body is not JSON"),
        ([1, 2], None, "body must be a JSON object"),
        ({"fd": 1, "tlv": TLV}, None, "fn:"),
        ({"fn": FN, "fd": "1", "tlv": TLV}, None, "fd:"),
        ({"fn": FN, "fd": 1}, None, "tlv:"),
        ({"fn": FN, "fd": 1, "tlv": "***"}, None, "tlv:"),
        ({"fn": FN, "fd": 1, "tlv": TLV}, f"{FN}-2", "Idempotency-Key"),
    ],
)
async def test_rejects_a_malformed_delivery_with_400_and_an_error_text(
    mock: MockUpstream, http: aiohttp.ClientSession, body: Any, key: str | None, error: str
) -> None:
    status, answer, _ = await post(http, mock, 1, body=body, key=key)
    assert status == 400
    assert answer["error"].startswith(error)
    assert mock.state.accepted == {}


async def test_records_each_request_with_fence_instance_and_answer(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    await post(http, mock, 1, fence=3)
    await post(http, mock, 1, fence=3)
    assert [(r.fn, r.fd, r.fence, r.instance, r.status) for r in mock.state.requests] == [
        (FN, 1, 3, "till-1", 201),
        (FN, 1, 3, "till-1", 409),
    ]


async def test_a_fence_older_than_one_seen_is_a_violation_and_is_refused(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, mock, 1, fence=5))[0] == 201
    assert (await post(http, mock, 2, fence=4))[0] == STALE_FENCE_STATUS
    assert (await post(http, mock, 3, fence=6))[0] == 201
    assert mock.state.fence_violations == 1
    assert set(mock.state.accepted) == {(FN, 1), (FN, 3)}
    assert mock.state.highest_fence == {FN: 6}


async def test_a_412_names_the_current_fence_and_only_accepted_requests_raise_it(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, mock, 1, fence=5))[0] == 201
    mock.set_faults(unauthorized=True)
    assert (await post(http, mock, 2, fence=9))[0] == 401  # refused: must not lock 5..8 out
    mock.set_faults(unauthorized=False)
    assert (await post(http, mock, 2, key=f"{FN}-3", fence=7))[0] == 400  # a broken request
    assert (await post(http, mock, 3, fence=6))[0] == 201
    status, body, _ = await post(http, mock, 4, fence=5)
    assert (status, body["current_fence"]) == (STALE_FENCE_STATUS, 6)
    assert "superseded" in body["error"]
    assert mock.state.highest_fence == {FN: 6}


async def test_answers_401_while_unauthorized(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(unauthorized=True)
    assert (await post(http, mock, 1))[0] == 401
    assert mock.state.accepted == {}


async def test_answers_429_with_retry_after(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(rate_limit_rate=1.0, retry_after=7)
    status, _, headers = await post(http, mock, 1)
    assert status == 429
    assert headers["Retry-After"] == "7"


async def test_error_rate_draws_its_codes(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    mock.set_faults(error_rate=1.0, error_codes=[503])
    assert (await post(http, mock, 1))[0] == 503
    mock.set_faults(error_rate=0.0)
    assert (await post(http, mock, 1))[0] == 201


async def test_chosen_fds_are_rejected_with_422_or_failed_with_500(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(reject_fds=[2], fail_fds=[3])
    statuses = [(await post(http, mock, fd))[0] for fd in (1, 2, 3)]
    assert statuses == [201, 422, 500]


async def test_a_refused_document_is_named_by_its_key(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(reject_fds=[2])
    status, answer, _ = await post(http, mock, 2)
    assert (status, answer) == (
        422,
        {"error": "FD 2 rejected: document not acceptable", "key": f"{FN}-2"},
    )
    status, answer, _ = await post(http, mock, 3, body={"fn": FN, "fd": 3})
    assert (status, answer["key"]) == (400, f"{FN}-3")


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "text"),
    [
        (
            {"not_found_page": True},
            404,
            "application/json",
            '"error": "Not Found", "path": "/v1/receipts"',
        ),
        ({"proxy_page": True}, 400, "text/html", "The plain HTTP request was sent to HTTPS port"),
        ({"redirect": 301}, 301, "application/json", "{}"),
        ({"redirect": 308}, 308, "application/json", "{}"),
        ({"gateway_down": True}, 503, "text/html", "503 Service Unavailable"),
    ],
)
async def test_upstream_wide_faults_answer_like_what_stands_in_for_a_collector(
    mock: MockUpstream,
    http: aiohttp.ClientSession,
    fault: dict[str, Any],
    status: int,
    content_type: str,
    text: str,
) -> None:
    mock.set_faults(**fault)
    headers = {"Idempotency-Key": f"{FN}-1"}
    body = {"fn": FN, "fd": 1, "tlv": TLV}
    async with http.post(mock.url, json=body, headers=headers, allow_redirects=False) as resp:
        answer = (resp.status, resp.content_type, await resp.text(), resp.headers.get("Location"))
    assert answer[:2] == (status, content_type)
    assert text in answer[2]
    assert "key" not in answer[2]  # nothing here is the collector's verdict on the FD
    assert answer[3] == (
        f"https://127.0.0.1:{mock.port}/v1/receipts" if fault.get("redirect") else None
    )
    assert mock.state.accepted == {}
    assert mock.state.requests[-1].status == status


async def test_reset_fault_drops_the_connection_without_an_answer(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(reset_rate=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, mock, 1)
    assert mock.state.requests[-1].status is None
    assert mock.state.accepted == {}


async def test_hang_fault_never_answers_until_the_mock_goes_down(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(hang_rate=1.0)
    request = asyncio.create_task(post(http, mock, 1))
    await wait_until(lambda: len(mock.state.requests) == 1, what="the request to arrive")
    assert not request.done()
    await mock.go_down()
    with pytest.raises(aiohttp.ClientConnectionError):
        await request


async def test_delay_holds_the_answer(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    mock.set_faults(delay=0.3)
    request = asyncio.create_task(post(http, mock, 1))
    await wait_until(lambda: len(mock.state.requests) == 1, what="the request to arrive")
    assert not request.done()
    assert (await request)[0] == 201


async def test_counts_the_peak_of_concurrent_requests(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(delay=0.2)
    results = await asyncio.gather(*(post(http, mock, fd) for fd in (1, 2, 3)))
    assert [status for status, _, _ in results] == [201, 201, 201]
    assert mock.state.peak_in_flight == 3
    assert mock.state.in_flight == 0


async def test_two_instances_sending_for_one_fn_at_once_is_an_overlap(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    mock.set_faults(delay=0.2)
    await asyncio.gather(post(http, mock, 1), post(http, mock, 2))
    assert mock.state.overlaps == 0  # one instance, two requests: its own concurrency
    await asyncio.gather(post(http, mock, 3), post(http, mock, 4, instance="till-2"))
    assert mock.state.overlaps == 1


async def test_go_down_refuses_connections_and_come_back_listens_on_the_same_port(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    port = mock.port
    await post(http, mock, 1)
    await mock.go_down()
    with pytest.raises(aiohttp.ClientConnectorError):
        await post(http, mock, 2)
    await mock.come_back()
    assert mock.port == port
    assert (await post(http, mock, 2))[0] == 201
    assert set(mock.state.accepted) == {(FN, 1), (FN, 2)}


async def test_faults_and_stats_over_http(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    base = mock.url.rsplit("/v1/", 1)[0]
    async with http.post(f"{base}/_mock/faults", json={"fail_fds": [2]}) as resp:
        assert resp.status == 200
        assert (await resp.json())["fail_fds"] == [2]
    async with http.post(f"{base}/_mock/faults", json={"bogus": 1}) as resp:
        assert resp.status == 400
        assert "bogus" in (await resp.json())["error"]
    await post(http, mock, 1, fence=2)
    await post(http, mock, 2, fence=2)
    async with http.get(f"{base}/_mock/stats") as resp:
        stats = await resp.json()
    assert stats["requests"] == 2
    assert stats["accepted"] == 1
    assert stats["duplicates"] == 0
    assert stats["fence_violations"] == 0
    assert stats["by_status"] == {"201": 1, "500": 1}
    assert stats["highest_fence"] == {FN: 2}
    assert stats["peak_in_flight"] == 1
    assert stats["overlaps"] == 0
    async with http.post(f"{base}/_mock/reset") as resp:
        assert (await resp.json())["requests"] == 0
    assert mock.faults == Faults()


async def test_down_over_http_refuses_for_a_while_then_comes_back(
    mock: MockUpstream, http: aiohttp.ClientSession
) -> None:
    base = mock.url.rsplit("/v1/", 1)[0]
    async with http.post(f"{base}/_mock/down", json={"seconds": 0.3}) as resp:
        assert resp.status == 202
    await wait_until(lambda: not mock.is_up, what="the mock to go down")
    await wait_until(lambda: mock.is_up, what="the mock to come back")
    assert (await post(http, mock, 1))[0] == 201


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 2},
        {"delay": -1},
        {"unauthorized": 1},
        {"fail_fds": ["x"]},
        {"retry_after": 1.5},
        {"redirect": 200},
        {"redirect": True},
    ],
)
def test_fault_switches_refuse_nonsense(changes: dict[str, Any]) -> None:
    with pytest.raises(FaultError):
        Faults().update(changes)


async def test_runs_standalone_from_the_command_line() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kktd.testbed.mock_upstream", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"127.0.0.1:{port}/v1/receipts" in banner.decode()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/_mock/stats") as resp,
        ):
            assert (await resp.json())["requests"] == 0
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
