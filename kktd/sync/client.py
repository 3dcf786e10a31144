"""The upstream HTTP client: one FD per POST, every answer classified (SPEC sections 3 and 4).

`deliver` never raises for network or HTTP trouble: it returns a `Delivery` whose `outcome` tells
the engine what to do with the FD and the breaker. Statuses the outcome table does not name (3xx,
other 2xx, 418 …) are transient: the FD is retried, and the Idempotency-Key makes a retry of
something the upstream did store come back as 409, so nothing is lost or doubled.
"""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from kktd.config import UpstreamConfig, redact_url
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


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FORBIDDEN = "forbidden"
    TRANSIENT = "transient"
    UNREACHABLE = "unreachable"
    MISROUTED = "misrouted"


@dataclass(frozen=True)
class Delivery:
    """The verdict on one delivery; `reason` is what goes into the journal's last error."""

    outcome: Outcome
    status: int | None
    reason: str
    retry_after: float | None


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
    ) -> None:
        self._instance_id = instance_id
        self._connect_timeout = connect_timeout
        self._user_agent = f"kktd/{version}"
        self._session: aiohttp.ClientSession | None = None
        self.reconfigure(cfg)

    def reconfigure(self, cfg: UpstreamConfig) -> None:
        """New settings (SIGHUP), used from the next request on."""
        self._cfg = cfg
        self._shown_url = redact_url(cfg.url)  # its query may hold a key: never logged as is
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
                headers={"User-Agent": self._user_agent}, raise_for_status=False
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

    async def deliver(self, entry: JournalEntry, fence: int | None) -> Delivery:
        """POST one FD and classify the answer; network and HTTP trouble come back as outcomes."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        data = json.dumps(build_body(entry), ensure_ascii=False).encode("utf-8")
        try:
            async with self._session.post(
                self._cfg.url,
                data=data,
                headers=self._headers(entry, fence),
                timeout=self._timeout,
                ssl=self._ssl,
                allow_redirects=False,  # a redirected POST could drop the body: retry instead
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
        self._log(entry, delivery)
        return delivery

    @staticmethod
    def _verdict(status: int, retry_after: str | None, body: bytes) -> Delivery:
        outcome = classify_status(status)
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
            log.error("sync.forbidden", url=self._shown_url, reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.MISROUTED:
            log.error("sync.misrouted", url=self._shown_url, reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.REJECTED:
            log.warning("sync.rejected", reason=delivery.reason, **fields)
        elif delivery.outcome is Outcome.TRANSIENT and _unexpected(delivery.status):
            log.warning("sync.unexpected_status", reason=delivery.reason, **fields)
        else:
            log.debug("sync.delivered", outcome=str(delivery.outcome), **fields)


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
