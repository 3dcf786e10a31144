"""Endpoints of the local API (SPEC section 6). Errors are JSON ``{"error", "detail"}``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from kktd.contract import FD_MAX, FN_DIGITS, bounded, iso, parse_fd, parse_fn, parse_since
from kktd.control.api.common import METRICS_KEY, RUNTIME_KEY, ParameterError, error
from kktd.control.api.export import record
from kktd.control.api.metrics import CONTENT_TYPE
from kktd.control.api.skip import skip as skip_fd
from kktd.control.status import health as daemon_health
from kktd.control.status import snapshot
from kktd.journal import JournalEntry

if TYPE_CHECKING:
    from kktd.lifecycle.components import Components

log = structlog.get_logger(__name__)

table = web.RouteTableDef()

DLQ_PAGE = 50
DLQ_PAGE_MAX = 1000
EXPORT_BATCH = 500
QUOTED = 40  # characters of a bad parameter quoted back


def _components(request: web.Request) -> Components:
    return request.app[RUNTIME_KEY].components


def _journal_ready(request: web.Request) -> None:
    """Raise the journal's error now, while it can still become a 503 (see error_middleware)."""
    if (unavailable := _components(request).journal.unavailable()) is not None:
        raise unavailable


def _fn(text: str) -> str:
    fn = parse_fn(text)
    if fn is None:
        raise ParameterError(
            f"fn: expected the FN number (up to {FN_DIGITS} digits), got {_shown(text)}"
        )
    return fn


def _fd(text: str) -> int:
    number = parse_fd(text)
    if number is None:
        raise ParameterError(f"fd: expected an FD number from 1 to {FD_MAX}, got {_shown(text)}")
    return number


def _shown(text: str) -> str:
    """A bad parameter as quoted back: its start is enough to recognise it."""
    return repr(text) if len(text) <= QUOTED else repr(text[:QUOTED]) + f"… ({len(text)} chars)"


def _fn_fd(request: web.Request) -> tuple[str, int]:
    return _fn(request.match_info["fn"]), _fd(request.match_info["fd"])


@table.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    """ "ok" or "degraded" while the process is sound; the parts say which one is not."""
    return _json(daemon_health(request.app[RUNTIME_KEY]))


@table.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    return _json(await snapshot(request.app[RUNTIME_KEY]))


@table.get("/v1/kkt/buffer/status")
async def buffer_status(request: web.Request) -> web.Response:
    counts = await _components(request).journal.counts()
    oldest = counts.oldest_pending_journaled_at
    age = None if oldest is None else round(max(0.0, time.time() - oldest), 3)
    return web.json_response(
        {
            "pending": counts.pending,
            "synced": counts.synced,
            "dead": counts.dead,
            "oldest_pending_age_seconds": age,
        }
    )


@table.post("/v1/kkt/buffer/sync")
async def buffer_sync(request: web.Request) -> web.Response:
    """One round now (SPEC section 6): 200 completed, 409 busy, 503 circuit open or skipped."""
    _journal_ready(request)
    report = await _components(request).engine.sync_now()
    log.info("api.sync", status=report.status, synced=report.synced, dead=report.dead)
    if report.status == "busy":
        holder = report.holder or "another instance"
        return error(
            409, "busy", f"the sync lock is held by {holder}", status="busy", holder=report.holder
        )
    if report.status == "circuit_open":
        retry_in = round(report.retry_in_seconds or 0.0, 3)
        detail = f"the upstream circuit is open: the next probe in {retry_in:.0f} s"
        return error(503, "circuit_open", detail, status="circuit_open", retry_in_seconds=retry_in)
    if report.status == "skipped":
        detail = "the sync lock could not be taken (Redis unavailable) or was lost: see the log"
        return error(503, "skipped", detail, status="skipped")
    return web.json_response(
        {
            "status": "completed",
            "synced": report.synced,
            "failed": report.failed,
            "dead": report.dead,
            "duration_seconds": round(report.duration_seconds, 3),
        }
    )


def _dead(entry: JournalEntry) -> dict[str, Any]:
    return {
        "fn": entry.fn,
        "fd": entry.fd,
        "doc_type": entry.doc_type,
        "doc_kind": entry.fields.get("doc_kind"),
        "attempts": entry.attempts,
        "reason": entry.last_error,
        "journaled_at": iso(entry.journaled_at),  # as in /v1/documents and /v1/export
    }


@table.get("/v1/dlq")
async def dlq(request: web.Request) -> web.Response:
    """Dead FDs in (fn, fd) order; `next` is the `after` of the following page, or null."""
    query = request.query
    text = query.get("limit", str(DLQ_PAGE))
    limit = bounded(text, 1, DLQ_PAGE_MAX)
    if limit is None:
        raise ParameterError(
            f"limit: expected a number from 1 to {DLQ_PAGE_MAX}, got {_shown(text)}"
        )
    after = None
    if "after" in query:
        fn, sep, fd = query["after"].partition(":")
        if not sep:
            raise ParameterError(f"after: expected FN:FD, got {_shown(query['after'])}")
        after = (_fn(fn), _fd(fd))
    # one more than asked: whether a next page exists, without a second query
    entries = await _components(request).journal.list_dead(limit + 1, after)
    page, more = entries[:limit], len(entries) > limit
    page_end = f"{page[-1].fn}:{page[-1].fd}" if more else None
    return _json({"items": [_dead(entry) for entry in page], "next": page_end})


@table.post("/v1/dlq/{fn}/{fd}/retry")
async def dlq_retry(request: web.Request) -> web.Response:
    fn, fd = _fn_fd(request)
    components = _components(request)
    if await components.journal.retry_dead(fn, fd):
        components.engine.wake()
        log.info("api.dlq_retried", fn=fn, fd=fd)
        return web.json_response({"status": "pending", "fn": fn, "fd": fd, "retried": 1})
    entry = await components.journal.get(fn, fd)
    if entry is None:
        return error(404, "unknown_fd", f"FD {fd} of FN {fn} is not in the journal")
    return error(409, "not_dead", f"FD {fd} of FN {fn} is {entry.state}, not dead")


@table.post("/v1/dlq/retry-all")
async def dlq_retry_all(request: web.Request) -> web.Response:
    components = _components(request)
    count = await components.journal.retry_all_dead()
    if count:
        components.engine.wake()
    log.info("api.dlq_retried", fds=count)
    return web.json_response({"status": "pending", "retried": count})


@table.post("/v1/kkt/skip")
async def kkt_skip(request: web.Request) -> web.Response:
    """`kktd skip`: the FD the poller is stuck on, skipped and audited
    (kktd/control/api/skip.py)."""
    return await skip_fd(request, _components(request).poller)


@table.get("/v1/documents/{fn}/{fd}")
async def document(request: web.Request) -> web.Response:
    fn, fd = _fn_fd(request)
    entry = await _components(request).journal.get(fn, fd)
    if entry is None:
        return error(404, "unknown_fd", f"FD {fd} of FN {fn} is not in the journal")
    return _json(record(entry))


@table.get("/v1/export")
async def export(request: web.Request) -> web.StreamResponse:
    """FDs journaled since `since`, one JSON object per line, read from the journal in batches."""
    if "since" not in request.query:
        raise ParameterError("since: required, a date like 2024-05-01")
    try:
        since = parse_since(request.query["since"])
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    _journal_ready(request)  # before the 200 goes out
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    count = 0
    async for entry in _components(request).journal.iter_since(since, EXPORT_BATCH):
        await response.write(json.dumps(record(entry), ensure_ascii=False).encode("utf-8") + b"\n")
        count += 1
    await response.write_eof()
    log.info("api.exported", since=iso(since), fds=count)
    return response


@table.post("/v1/journal/recovery/ack")
async def recovery_ack(request: web.Request) -> web.Response:
    """The operator has seen the last journal recovery: status stops showing it."""
    _journal_ready(request)  # an unavailable journal may be the very recovery to acknowledge
    record = await _components(request).journal.acknowledge_recovery()
    if record is None:
        return web.json_response({"status": "none", "detail": "no recovery to acknowledge"})
    recovery = {"at": record.at, "moved_to": record.moved_to, "reason": record.reason}
    return _json({"status": "acknowledged", "recovery": recovery})


@table.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _json(body: dict[str, Any]) -> web.Response:
    """JSON with Cyrillic as is (a KKT model name, an item name), not as \\u escapes."""
    return web.json_response(body, dumps=lambda v: json.dumps(v, ensure_ascii=False))
