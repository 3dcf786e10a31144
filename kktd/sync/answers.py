"""What an upstream answer means (SPEC sections 3 and 4): a pure core, no I/O.

Only an answer that names the FD (its Idempotency-Key in a 4xx JSON body) is a verdict on the FD;
any other 4xx and every 3xx come from something that is not the collector (a wrong URL, a proxy,
a framework's default page) and are misrouting. 412 is a superseded fence. Statuses the outcome
table does not name (other 2xx, 1xx …) are transient: the FD is retried, and the Idempotency-Key
makes a retry of something the upstream did store come back as 409, so nothing is lost or doubled.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kktd.sync.backoff import parse_retry_after

REASON_LIMIT = 500  # characters of the upstream's error text kept (SPEC section 4)

ACCEPTED = frozenset({200, 201, 202})
DUPLICATE = frozenset({409})
FORBIDDEN = frozenset({401, 403})
TRANSIENT = frozenset({408, 425, 429})
FENCE_SUPERSEDED = 412  # a fencing collector has seen a higher X-Kktd-Fence for this FN
_SNIPPET = 120  # characters of a page that is not a verdict, quoted in the alert


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


def classify(status: int, body: bytes, key: str) -> Outcome:
    """The outcome of an HTTP answer to the delivery whose Idempotency-Key is `key`."""
    if status == FENCE_SUPERSEDED:
        return Outcome.FENCE_SUPERSEDED
    if status in ACCEPTED:
        return Outcome.ACCEPTED
    if status in DUPLICATE:
        return Outcome.DUPLICATE
    if status in FORBIDDEN:
        return Outcome.FORBIDDEN
    if 300 <= status < 400:
        return Outcome.MISROUTED
    if 400 <= status < 500 and status not in TRANSIENT:
        return Outcome.REJECTED if _names(body, key) else Outcome.MISROUTED
    return Outcome.TRANSIENT


def verdict(status: int, headers: Mapping[str, str], body: bytes, key: str) -> Delivery:
    """The whole verdict on an answer: outcome, the reason kept, how long it asks to wait."""
    outcome = classify(status, body, key)
    if outcome is Outcome.FENCE_SUPERSEDED:
        return superseded(body)
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


def superseded(body: bytes) -> Delivery:
    """A 412: another instance holds the FN now; the collector may say its current fence."""
    current = _current_fence(body)
    by = f" by fence {current}" if current is not None else ""
    reason = f"HTTP 412: this fence was superseded{by}: another instance syncs this FN now"
    return Delivery(Outcome.FENCE_SUPERSEDED, FENCE_SUPERSEDED, reason, None, current)


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


def unexpected(status: int | None) -> bool:
    """A status outside SPEC section 3's table (retried as transient, but worth a warning)."""
    return status is not None and status not in TRANSIENT and not 500 <= status < 600


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


def _names(body: bytes, key: str) -> bool:
    """True when the body is the collector's verdict on this FD: JSON with `"key": <key>`."""
    parsed = _json_object(body)
    return parsed is not None and parsed.get("key") == key


def _current_fence(body: bytes) -> int | None:
    """`"current_fence"` of a 412's JSON body: a number, or a string of digits, below 2**63."""
    parsed = _json_object(body)
    value = parsed.get("current_fence") if parsed is not None else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"
