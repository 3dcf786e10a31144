"""The upstream HTTP client: one FD per POST, every answer classified (SPEC sections 3 and 4).

`deliver` never raises for network or HTTP trouble: it returns a `Delivery` whose `outcome` tells
the engine what to do with the FD and the breaker. Statuses the outcome table does not name (3xx,
other 2xx, 418 …) are transient: the FD is retried, and the Idempotency-Key makes a retry of
something the upstream did store come back as 409, so nothing is lost or doubled.

The one exception: `WriteRefused`, when the `may_write` check (the sync lease) says no right
before the request's first byte; then nothing was written.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

import aiohttp
import structlog

from kktd.config import UpstreamConfig
from kktd.journal import JournalEntry
from kktd.kkt.tlv import BODY_FIELDS
from kktd.sync.backoff import parse_retry_after

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 5.0
REASON_LIMIT = 500  # characters of the upstream's error text kept (SPEC section 4)
_BODY_READ_LIMIT = 64 * 1024

ACCEPTED = frozenset({200, 201, 202})
DUPLICATE = frozenset({409})
REJECTED = frozenset({400, 404, 413, 422})
FORBIDDEN = frozenset({401, 403})
TRANSIENT = frozenset({408, 425, 429})
FENCE_SUPERSEDED = 412  # a fencing collector has seen a higher X-Kktd-Fence for this FN


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FORBIDDEN = "forbidden"
    TRANSIENT = "transient"
    UNREACHABLE = "unreachable"
    MISROUTED = "misrouted"
    FENCE_SUPERSEDED = "fence_superseded"


@dataclass(frozen=True)
class Delivery:
    """The verdict on one delivery; `reason` is what goes into the journal's last error.

    `current_fence`: for a 412, the fence the collector holds now, when its body says so.
    """

    outcome: Outcome
    status: int | None
    reason: str
    retry_after: float | None
    current_fence: int | None = None


class WriteRefused(Exception):  # noqa: N818 - a refusal, not an error of the request
    """`may_write` said no right before the request's first byte: nothing was written."""


class _WriteGate:
    """Asked by aiohttp's tracing right before it writes: the headers, then each body chunk.

    Headers go out on their own in older aiohttp and with the first body chunk since 3.12, so
    both moments are checked; from the check to `transport.write` nothing awaits, so no other
    task or timer runs in between (only a pause of the whole process can still come between).
    """

    def __init__(self, may_write: Callable[[], bool]) -> None:
        self.may_write = may_write
        self.refused = False

    def check(self) -> None:
        if not self.may_write():
            self.refused = True
            raise WriteRefused("the sync lease ended before the request was written")


async def _check_gate(_: object, ctx: SimpleNamespace, __: object) -> None:
    gate = getattr(ctx.trace_request_ctx, "gate", None)
    if isinstance(gate, _WriteGate):
        gate.check()


def _gate_tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(_check_gate)
    tracing.on_request_chunk_sent.append(_check_gate)
    return tracing


def build_body(entry: JournalEntry) -> dict[str, Any]:
    """The JSON body of SPEC section 4: the decoded fields, the FD's identity and its raw TLV.

    Only SPEC's fields are sent: what else the journal keeps (a decode error) is for the
    operator, and the identity and the raw bytes come from the journal row itself.
    """
    body: dict[str, Any] = {"fn": entry.fn, "fd": entry.fd}
    body.update((k, entry.fields[k]) for k in BODY_FIELDS if k in entry.fields)
    body["tlv"] = base64.b64encode(entry.raw).decode("ascii")
    return body


def classify_status(status: int) -> Outcome:
    """The outcome of an HTTP answer by its status alone."""
    if status == FENCE_SUPERSEDED:
        return Outcome.FENCE_SUPERSEDED
    if status in ACCEPTED:
        return Outcome.ACCEPTED
    if status in DUPLICATE:
        return Outcome.DUPLICATE
    if status in REJECTED:
        return Outcome.REJECTED
    if status in FORBIDDEN:
        return Outcome.FORBIDDEN
    return Outcome.TRANSIENT


def error_text(body: bytes) -> str:
    """The upstream's error text: `{"error": ...}` when it sent that JSON, else the body itself."""
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:REASON_LIMIT]
    if isinstance(parsed, dict) and "error" in parsed:
        error = parsed["error"]
        return (error if isinstance(error, str) else json.dumps(error, ensure_ascii=False))[
            :REASON_LIMIT
        ]
    return text.strip()[:REASON_LIMIT]


class UpstreamClient:
    """Delivers FDs to `upstream.url` over one aiohttp session for the whole process."""

    def __init__(
        self,
        cfg: UpstreamConfig,
        *,
        instance_id: str,
        version: str,
        connect_timeout: float = CONNECT_TIMEOUT,
        tracing: tuple[aiohttp.TraceConfig, ...] = (),
    ) -> None:
        self._instance_id = instance_id
        # aiohttp tracing that runs before the write gate's (tests pause a request with it)
        self._tracing = tracing
        self._connect_timeout = connect_timeout
        self._user_agent = f"kktd/{version}"
        self._session: aiohttp.ClientSession | None = None
        self.reconfigure(cfg)

    def reconfigure(self, cfg: UpstreamConfig) -> None:
        """New settings (SIGHUP), used from the next request on."""
        self._cfg = cfg
        self._ssl = ssl.create_default_context(
            cafile=str(cfg.ca_file) if cfg.ca_file is not None else None
        )
        # `connect` spans DNS, the TCP connect and the TLS handshake: all "never reached"
        self._timeout = aiohttp.ClientTimeout(
            total=cfg.timeout, connect=min(self._connect_timeout, cfg.timeout)
        )

    @property
    def max_in_flight(self) -> int:
        """How many deliveries the engine may run at once (`upstream.max_in_flight`)."""
        return self._cfg.max_in_flight

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent},
                raise_for_status=False,
                trace_configs=[*self._tracing, _gate_tracing()],
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self, entry: JournalEntry, fence: int | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{entry.fn}-{entry.fd}",
            "X-Kktd-Instance": self._instance_id,
        }
        if self._cfg.token is not None:
            headers["Authorization"] = f"Bearer {self._cfg.token.reveal()}"
        if fence is not None:
            headers["X-Kktd-Fence"] = str(fence)
        return headers

    async def deliver(
        self,
        entry: JournalEntry,
        fence: int | None,
        *,
        may_write: Callable[[], bool] = lambda: True,
    ) -> Delivery:
        """POST one FD and classify the answer; network and HTTP trouble come back as outcomes.

        `may_write` is asked right before the request's bytes are written (again for a retry
        on a fresh connection); when it says no, nothing is written and `WriteRefused` is raised.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        data = json.dumps(build_body(entry), ensure_ascii=False).encode("utf-8")
        gate = _WriteGate(may_write)
        delivery = await self._post(entry, fence, data, gate)
        if gate.refused:  # refused in aiohttp's body writer, which wraps it as a connection error
            raise WriteRefused(f"FD {entry.fn}/{entry.fd} not sent: the sync lease ended")
        self._log(entry, delivery)
        return delivery

    async def _post(
        self, entry: JournalEntry, fence: int | None, data: bytes, gate: _WriteGate
    ) -> Delivery:
        assert self._session is not None
        try:
            async with self._session.post(
                self._cfg.url,
                data=data,
                headers=self._headers(entry, fence),
                timeout=self._timeout,
                ssl=self._ssl,
                allow_redirects=False,  # a redirected POST could drop the body: retry instead
                trace_request_ctx=SimpleNamespace(gate=gate),
            ) as resp:
                body = await resp.content.read(_BODY_READ_LIMIT)
                delivery = self._verdict(resp.status, resp.headers.get("Retry-After"), body)
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            aiohttp.InvalidURL,
            aiohttp.NonHttpUrlClientError,
            aiohttp.ServerFingerprintMismatch,
        ) as exc:
            # refused, DNS, TLS, connect timeout or an unusable URL: the FD never left this host
            delivery = Delivery(Outcome.UNREACHABLE, None, _describe(exc), None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # after connecting: a reset, a read timeout or an answer that is not HTTP
            delivery = Delivery(Outcome.TRANSIENT, None, _describe(exc), None)
        return delivery

    @staticmethod
    def _verdict(status: int, retry_after: str | None, body: bytes) -> Delivery:
        outcome = classify_status(status)
        if outcome is Outcome.FENCE_SUPERSEDED:
            return superseded(body)
        if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            return Delivery(outcome, status, "", None)
        if status == 404 and not _is_error_object(body):
            # Not a verdict on this FD but a wrong upstream.url (a web server's own 404 page):
            # dead-lettering the whole backlog would be SPEC's rule followed off a cliff.
            return Delivery(
                Outcome.MISROUTED,
                status,
                'HTTP 404 without an {"error"} body: upstream.url names no receipt collector',
                None,
            )
        text = error_text(body)
        if outcome is Outcome.REJECTED:
            return Delivery(outcome, status, text or f"HTTP {status}", None)
        reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
        wait = parse_retry_after(retry_after) if outcome is Outcome.TRANSIENT else None
        return Delivery(outcome, status, reason[:REASON_LIMIT], wait)

    def _log(self, entry: JournalEntry, delivery: Delivery) -> None:
        fields = {"fn": entry.fn, "fd": entry.fd, "status": delivery.status}
        if delivery.outcome is Outcome.FORBIDDEN:
            # kktd is locked out: nothing gets delivered until an operator fixes the token
            log.error("sync.forbidden", url=self._cfg.url, reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.MISROUTED:
            log.error("sync.misrouted", url=self._cfg.url, reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.REJECTED:
            log.warning("sync.rejected", reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.TRANSIENT and _unexpected(delivery.status):
            log.warning("sync.unexpected_status", reason=delivery.reason, **fields)
        else:
            log.debug("sync.delivered", outcome=str(delivery.outcome), **fields)


def superseded(body: bytes) -> Delivery:
    """A 412: another instance holds the FN now; the collector may say its current fence."""
    current = _current_fence(body)
    by = f" by fence {current}" if current is not None else ""
    reason = f"HTTP 412: this fence was superseded{by}: another instance syncs this FN now"
    return Delivery(Outcome.FENCE_SUPERSEDED, FENCE_SUPERSEDED, reason, None, current)


def _current_fence(body: bytes) -> int | None:
    """`"current_fence"` of a 412's JSON body: a number, or a string of digits, below 2**63."""
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    value = parsed.get("current_fence") if isinstance(parsed, dict) else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _is_error_object(body: bytes) -> bool:
    """True for the collector's own JSON error (`{"error": ...}`), the contract of SPEC 4."""
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return False
    return isinstance(parsed, dict) and "error" in parsed


def _unexpected(status: int | None) -> bool:
    """A status outside SPEC section 3's table (retried as transient, but worth a warning)."""
    return status is not None and status not in TRANSIENT and not 500 <= status < 600


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:REASON_LIMIT]
