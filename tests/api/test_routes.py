"""Every endpoint of SPEC section 6 against a daemon with real components, in process."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from kktd.config import LockConfig
from kktd.control.api.server import create_app
from kktd.sync.redis_lock import RedisSyncLock, redis_from_url
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import (
    FN,
    ClientFactory,
    Harness,
    auth,
    build_daemon,
    journal_fds,
    make_config,
)
from tests.support.redis_server import RedisServer


async def test_health_is_degraded_without_a_kkt_and_names_the_part(harness: Harness) -> None:
    resp = await harness.client.get("/v1/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["components"] == {
        "journal": "ok",
        "kkt": "offline",
        "upstream": "ok",
        "lock": "ok",
        "supervisor": "ok",
    }


async def test_status_reports_counts_version_and_the_unread_kkt(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2)
    resp = await harness.client.get("/v1/status")
    assert resp.status == 200
    body = await resp.json()
    assert body["instance"] == "till-1"
    assert body["journal"]["pending"] == 2
    assert body["kkt"]["connected"] is False
    assert body["kkt"]["fn"] is None
    assert body["fn"]["unsent"] is None
    assert body["sync"]["breaker"] == "closed"
    assert body["sync"]["lock"] == {"holder": None, "fence": None, "held": False, "problem": None}
    assert body["config"]["reload"] is None


async def test_buffer_status_counts_the_journal(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    await harness.components.journal.mark_dead(FN, 3, "bad")
    resp = await harness.client.get("/v1/kkt/buffer/status")
    body = await resp.json()
    assert resp.status == 200
    assert (body["pending"], body["synced"], body["dead"]) == (2, 0, 1)
    assert 0 <= body["oldest_pending_age_seconds"] < 60


async def test_sync_delivers_the_pending_fds_and_reports_the_round(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    resp = await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "completed"
    assert (body["synced"], body["failed"], body["dead"]) == (3, 0, 0)
    assert body["duration_seconds"] >= 0
    assert set(harness.upstream.state.accepted) == {(FN, 1), (FN, 2), (FN, 3)}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic api-s3cret"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_post_without_the_right_token_is_401_and_does_nothing(
    harness: Harness, headers: dict[str, str]
) -> None:
    await journal_fds(harness.daemon, 1)
    for path in ("/v1/kkt/buffer/sync", "/v1/dlq/retry-all", f"/v1/dlq/{FN}/1/retry"):
        resp = await harness.client.post(path, headers=headers)
        assert resp.status == 401, path
        assert (await resp.json())["error"] == "unauthorized"
    assert harness.upstream.state.requests == []


async def test_get_needs_no_token(harness: Harness) -> None:
    resp = await harness.client.get("/v1/kkt/buffer/status")
    assert resp.status == 200


async def test_sync_with_an_open_breaker_is_503_with_the_probe_time(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    await harness.upstream.go_down()
    first = await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    assert first.status == 200  # the round ran: the upstream refused the connections
    assert harness.components.breaker.state == "open"
    resp = await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    body = await resp.json()
    assert resp.status == 503
    assert body["status"] == "circuit_open"
    assert 0 < body["retry_in_seconds"] <= 60
    assert body["error"] == "circuit_open"


async def test_sync_while_another_instance_holds_the_lock_is_409_with_the_holder(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory, redis_server: RedisServer
) -> None:
    config = make_config(tmp_path, upstream.url, lock=LockConfig(redis_url=redis_server.url))
    daemon = await build_daemon(config)
    other = redis_from_url(redis_server.url, None)
    try:
        await journal_fds(daemon, 1)
        client = await aiohttp_client(create_app(daemon.runtime))
        rival = RedisSyncLock(other, "kktd:sync:{fn}", 30.0, "proceed", "till-2")
        async with rival.hold(FN):
            resp = await client.post("/v1/kkt/buffer/sync", headers=auth())
            body = await resp.json()
        assert resp.status == 409
        assert body["status"] == "busy"
        assert body["holder"] == "till-2"
    finally:
        await other.aclose()
        assert daemon.components is not None
        await daemon.components.close()


async def test_dlq_lists_dead_fds_with_the_upstream_reason(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    harness.upstream.set_faults(reject_fds=[2])
    await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    resp = await harness.client.get("/v1/dlq", headers=auth())
    body = await resp.json()
    assert resp.status == 200
    assert [(i["fn"], i["fd"]) for i in body["items"]] == [(FN, 2)]
    assert "FD 2 rejected" in body["items"][0]["reason"]
    assert body["items"][0]["attempts"] == 1
    # the entry's time as /v1/documents and /v1/export send it: ISO 8601 with its offset
    assert datetime.fromisoformat(body["items"][0]["journaled_at"]).tzinfo is not None
    assert body["next"] is None


async def test_dlq_pages_with_limit_and_after(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3, 4, 5)
    for fd in (1, 2, 3, 4, 5):
        await harness.components.journal.mark_dead(FN, fd, f"reason {fd}")
    seen: list[int] = []
    params = {"limit": "2"}
    for _ in range(5):
        body = await (await harness.client.get("/v1/dlq", params=params, headers=auth())).json()
        seen += [item["fd"] for item in body["items"]]
        if body["next"] is None:
            break
        params["after"] = body["next"]
    assert seen == [1, 2, 3, 4, 5]
    assert params["after"] == f"{FN}:4"


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=abc", "limit=1001", "after=nocolon", f"after={FN}:x", "after=abc:1"],
)
async def test_dlq_bad_paging_parameters_are_400(harness: Harness, query: str) -> None:
    resp = await harness.client.get(f"/v1/dlq?{query}", headers=auth())
    body = await resp.json()
    assert resp.status == 400
    assert body["error"] == "bad_parameter"
    assert body["detail"]


async def test_dlq_retry_makes_one_dead_fd_pending_again(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2)
    await harness.components.journal.mark_dead(FN, 2, "bad")
    resp = await harness.client.post(f"/v1/dlq/{FN}/2/retry", headers=auth())
    assert resp.status == 200
    assert (await resp.json())["retried"] == 1
    entry = await harness.components.journal.get(FN, 2)
    assert entry is not None
    assert (entry.state, entry.attempts) == ("pending", 0)


async def test_dlq_retry_of_an_unknown_fd_is_404_and_of_a_pending_one_409(
    harness: Harness,
) -> None:
    await journal_fds(harness.daemon, 1)
    unknown = await harness.client.post(f"/v1/dlq/{FN}/99/retry", headers=auth())
    assert unknown.status == 404
    assert (await unknown.json())["error"] == "unknown_fd"
    pending = await harness.client.post(f"/v1/dlq/{FN}/1/retry", headers=auth())
    assert pending.status == 409
    assert "pending" in (await pending.json())["detail"]


@pytest.mark.parametrize(
    "path", [f"/v1/dlq/{FN}/abc/retry", f"/v1/dlq/{FN}/0/retry", "/v1/dlq/xyz/1/retry"]
)
async def test_dlq_retry_with_a_bad_fn_or_fd_is_400(harness: Harness, path: str) -> None:
    resp = await harness.client.post(path, headers=auth())
    assert resp.status == 400


async def test_dlq_retry_all_returns_every_dead_fd_to_pending(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    for fd in (1, 3):
        await harness.components.journal.mark_dead(FN, fd, "bad")
    resp = await harness.client.post("/v1/dlq/retry-all", headers=auth())
    assert (await resp.json())["retried"] == 2
    counts = await harness.components.journal.counts()
    assert (counts.pending, counts.dead) == (3, 0)


async def test_document_is_decoded_with_its_state_and_raw_tlv(harness: Harness) -> None:
    await journal_fds(harness.daemon, 7)
    resp = await harness.client.get(f"/v1/documents/{FN}/7", headers=auth())
    body = await resp.json()
    assert resp.status == 200
    assert (body["fn"], body["fd"], body["state"]) == (FN, 7, "pending")
    assert body["fields"]["total"] == 700
    assert body["tlv"] == "AQIH"  # base64 of 01 02 07


async def test_document_unknown_is_404_and_bad_fd_is_400(harness: Harness) -> None:
    unknown = await harness.client.get(f"/v1/documents/{FN}/8", headers=auth())
    assert unknown.status == 404
    assert "not in the journal" in (await unknown.json())["detail"]
    bad = await harness.client.get(f"/v1/documents/{FN}/-1", headers=auth())
    assert bad.status == 400


async def test_export_streams_every_fd_since_the_date_as_json_lines(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    resp = await harness.client.get("/v1/export", params={"since": yesterday}, headers=auth())
    assert resp.status == 200
    lines = (await resp.text()).splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["fn"], r["fd"]) for r in records] == [(FN, 1), (FN, 2), (FN, 3)]
    assert records[0]["fields"]["doc_kind"] == "receipt"
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    later = await harness.client.get("/v1/export", params={"since": tomorrow}, headers=auth())
    assert await later.text() == ""


@pytest.mark.parametrize("query", ["", "?since=last-tuesday"])
async def test_export_without_a_usable_since_is_400(harness: Harness, query: str) -> None:
    resp = await harness.client.get(f"/v1/export{query}", headers=auth())
    assert resp.status == 400
    assert "since" in (await resp.json())["detail"]


async def test_unknown_paths_and_methods_answer_json_errors(harness: Harness) -> None:
    missing = await harness.client.get("/v1/nothing")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong = await harness.client.get("/v1/dlq/retry-all", headers=auth())
    assert wrong.status in (404, 405)
    assert "error" in await wrong.json()


def test_app_routes_cover_every_endpoint_of_the_spec() -> None:
    from kktd.control.api.routes import table  # noqa: PLC0415

    routes = {(r.method, r.path) for r in table if isinstance(r, web.RouteDef)}
    assert routes >= {
        ("GET", "/v1/health"),
        ("GET", "/v1/status"),
        ("GET", "/v1/kkt/buffer/status"),
        ("POST", "/v1/kkt/buffer/sync"),
        ("GET", "/v1/dlq"),
        ("POST", "/v1/dlq/{fn}/{fd}/retry"),
        ("POST", "/v1/dlq/retry-all"),
        ("GET", "/v1/documents/{fn}/{fd}"),
        ("GET", "/metrics"),
        ("POST", "/v1/kkt/skip"),
    }


HUGE = "9" * 5000  # int() refuses more than 4300 digits: unbounded, this was a 500


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/documents/{FN}/{HUGE}"),
        ("GET", f"/v1/documents/{HUGE}/1"),
        ("GET", f"/v1/dlq?limit={HUGE}"),
        ("GET", f"/v1/dlq?after={FN}:{HUGE}"),
        ("GET", f"/v1/dlq?after={HUGE}:1"),
        ("POST", f"/v1/dlq/{FN}/{HUGE}/retry"),
        ("GET", f"/v1/documents/{FN}/0{'0' * 12}1"),  # small, but longer than any FD
    ],
)
async def test_numbers_of_thousands_of_digits_are_400_not_500(
    harness: Harness, method: str, path: str
) -> None:
    resp = await harness.client.request(method, path, headers=auth())
    body = await resp.json()
    assert (resp.status, body["error"]) == (400, "bad_parameter")
    assert len(body["detail"]) < 200  # the number is not quoted back whole
