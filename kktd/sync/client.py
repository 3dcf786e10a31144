"""The upstream HTTP client: one FD per POST, every answer classified (SPEC sections 3 and 4).

`deliver` never raises for network or HTTP trouble: it returns a `Delivery` whose `outcome` tells
the engine what to do with the FD and the breaker. Only an answer that names the FD (its
Idempotency-Key in a 4xx JSON body) is a verdict on the FD; any other 4xx and every 3xx come from
something that is not the collector (a wrong URL, a proxy, a framework's default page) and are
misrouting. Statuses the outcome table does not name (other 2xx, 1xx …) are transient: the FD is
retried, and the Idempotency-Key makes a retry of something the upstream did store come back as
409, so nothing is lost or doubled.
"""

from __future__ import annotations

import base64
import json
import ssl
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from kktd.config import UpstreamConfig
from kktd.journal import JournalEntry
from kktd.kkt.tlv import BODY_FIELDS
from kktd.sync.alerts import Alert
from kktd.sync.backoff import parse_retry_after

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 5.0
REASON_LIMIT = 500  # characters of the upstream's error text kept (SPEC section 4)
BODY_READ_LIMIT = 64 * 1024  # bytes of an answer read (SPEC section 4)

ACCEPTED = frozenset({200, 201, 202})
DUPLICATE = frozenset({409})
FORBIDDEN = frozenset({401, 403})
TRANSIENT = frozenset({408, 425, 429})
# 412 (a superseded fence) is retried like an unnamed status until fencing gives it its own row
_FENCE_STATUS = 412
_SNIPPET = 120  # characters of a page that is not a verdict, quoted in the alert
_FORBIDDEN_STEP = "check upstream.token_file, and that the collector knows this till's token"


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


def classify(status: int, body: bytes, key: str) -> Outcome:
    """The outcome of an HTTP answer to the delivery whose Idempotency-Key is `key`."""
    if status in ACCEPTED:
        return Outcome.ACCEPTED
    if status in DUPLICATE:
        return Outcome.DUPLICATE
    if status in FORBIDDEN:
        return Outcome.FORBIDDEN
    if 300 <= status < 400:
        return Outcome.MISROUTED
    if 400 <= status < 500 and status not in TRANSIENT and status != _FENCE_STATUS:
        return Outcome.REJECTED if _names(body, key) else Outcome.MISROUTED
    return Outcome.TRANSIENT


def clean(text: str) -> str:
    """`text` without control characters; line breaks and tabs become spaces (SPEC section 4)."""
    return "".join(
        " " if ch in "\t\n\r" else ch for ch in text if ch in "\t\n\r" or not _is_control(ch)
    )


def error_text(body: bytes) -> str:
    """The upstream's error text: `{"error": ...}` when it sent that JSON, else the body itself.

    The first `REASON_LIMIT` characters, control characters removed, otherwise verbatim.
    """
    parsed = _json_object(body)
    if parsed is not None and "error" in parsed:
        error = parsed["error"]
        text = error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
    else:
        text = body.decode("utf-8", errors="replace").strip()
    return clean(text)[:REASON_LIMIT]


def _names(body: bytes, key: str) -> bool:
    """True when the body is the collector's verdict on this FD: JSON with `"key": <key>`."""
    parsed = _json_object(body)
    return parsed is not None and parsed.get("key") == key


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


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
        # a wrong URL or a refused token: logged once per change rather than once per FD
        self._alert = Alert()
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
        key = f"{entry.fn}-{entry.fd}"
        try:
            async with self._session.post(
                self._cfg.url,
                data=data,
                headers=self._headers(entry, fence),
                timeout=self._timeout,
                ssl=self._ssl,
                allow_redirects=False,  # a redirected POST could drop the body: misrouting
            ) as resp:
                body = await read_body(resp.content, BODY_READ_LIMIT)
                delivery = _verdict(resp.status, resp.headers, body, key)
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

    def _log(self, entry: JournalEntry, delivery: Delivery) -> None:
        fields = {"fn": entry.fn, "fd": entry.fd, "status": delivery.status}
        outcome = delivery.outcome
        if outcome in (Outcome.FORBIDDEN, Outcome.MISROUTED):
            # nothing gets delivered until an operator fixes the token or the URL
            self._alert.start(
                f"sync.{outcome}",
                (outcome, delivery.status),
                url=self._cfg.url,
                reason=delivery.reason,
                **({"next_step": _FORBIDDEN_STEP} if outcome is Outcome.FORBIDDEN else {}),
                **fields,
            )
        elif outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.REJECTED):
            self._alert.end(url=self._cfg.url, **fields)
        if outcome is Outcome.REJECTED:
            log.warning("sync.rejected", reason=delivery.reason, **fields)
        elif outcome is Outcome.TRANSIENT and _unexpected(delivery.status):
            log.warning("sync.unexpected_status", reason=delivery.reason, **fields)
        else:
            log.debug("sync.delivered", outcome=str(outcome), **fields)


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer's body up to `limit` bytes, however many pieces it arrives in.

    (`StreamReader.read(n)` returns what one chunk brought: a 422 split after '{"error":' would
    lose its verdict, and a split 404 page its key.)
    """
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _verdict(status: int, headers: Mapping[str, str], body: bytes, key: str) -> Delivery:
    outcome = classify(status, body, key)
    if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
        return Delivery(outcome, status, "", None)
    if outcome is Outcome.MISROUTED:
        return Delivery(outcome, status, _misrouting(status, headers, body), None)
    text = error_text(body)
    if outcome is Outcome.REJECTED:
        return Delivery(outcome, status, text or f"HTTP {status}", None)
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    wait = parse_retry_after(headers.get("Retry-After")) if outcome is Outcome.TRANSIENT else None
    return Delivery(outcome, status, reason[:REASON_LIMIT], wait)


def _misrouting(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """What answered instead of the collector, the next step first (status lines clip it)."""
    if status < 400:
        where = clean(headers.get("Location", "nowhere"))[:_SNIPPET]
        return (
            f"HTTP {status} redirect to {where}: set upstream.url to the address the collector"
            " answers at (kktd does not follow redirects: a redirected POST can lose its body)"
        )
    page = " ".join(clean(body.decode("utf-8", errors="replace")).split())
    quoted = page[:_SNIPPET] + ("…" if len(page) > _SNIPPET else "")
    return (
        f"HTTP {status} naming no FD, not the collector's verdict: check upstream.url (scheme,"
        f" host, port, path) and any proxy in between; the answer was: {quoted or 'empty'}"
    )


def _unexpected(status: int | None) -> bool:
    """A status outside SPEC section 3's table (retried as transient, but worth a warning)."""
    return status is not None and status not in TRANSIENT and not 500 <= status < 600


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:REASON_LIMIT]
