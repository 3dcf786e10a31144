"""What the mock upstream knows and decides, without sockets (SPEC sections 4 and 8).

`MockState.decide` takes one parsed request and returns the answer: a status with a JSON body
(or a page, when something other than the collector answers), or a connection reset, or a hang.
It keeps the accepted set, counts duplicate deliveries and checks fences; the aiohttp layer in
`server` only carries bytes and waits. Its own refusal of a document names the document
(`{"error": ..., "key": <Idempotency-Key>}`, SPEC section 4); the upstream-wide faults answer
like the things that stand in for a collector in real life: a framework's 404 page, a proxy's
400 page, a redirect, a load balancer's 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

# A request carrying a fence lower than the highest accepted for its FN comes from a lease that
# has been superseded: a fencing collector refuses the write. 412 Precondition Failed says exactly
# that (SPEC section 4), with the current fence in the body; kktd ends that round at once.
# Only accepted requests raise the fence: one refused for another reason (a bad token, a broken
# body) must not be able to lock the real holder out.
STALE_FENCE_STATUS = 412
ERROR_BODY_LIMIT = 200
RECEIPTS_PATH = "/v1/receipts"
REDIRECTS = (301, 302, 303, 307, 308)
# what stands in for a collector in the upstream-wide faults (real-world pages, abridged)
PROXY_PAGE = (
    "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
    "<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
    "<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
    "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
GATEWAY_PAGE = (
    "<html><body><h1>503 Service Unavailable</h1>\n"
    "No server is available to handle this request.\n</body></html>\n"
)


class FaultError(ValueError):
    """A fault switch was given a name or value it cannot take."""


@dataclass
class Faults:
    """Fault switches; every rate is a probability in [0, 1] drawn per request."""

    error_rate: float = 0.0
    error_codes: list[int] = field(default_factory=lambda: [500, 502, 503])
    rate_limit_rate: float = 0.0
    retry_after: int = 1
    delay: float = 0.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    reject_fds: list[int] = field(default_factory=list)
    fail_fds: list[int] = field(default_factory=list)
    unauthorized: bool = False
    # upstream-wide: every request is answered by something that is not the collector
    not_found_page: bool = False  # a framework's 404 JSON page (a wrong path)
    proxy_page: bool = False  # a proxy's 400 HTML page (http:// to an HTTPS port)
    redirect: int = 0  # 301, 302, 303, 307 or 308 to the same path over https; 0 = off
    gateway_down: bool = False  # a load balancer's 503 page: the collector behind it is down

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply the given switches (the JSON of `POST /_mock/faults`); FaultError on nonsense."""
        if not isinstance(changes, Mapping):
            raise FaultError("expected a JSON object of fault switches")
        known = self.to_json()
        for name, value in changes.items():
            if name not in known:
                raise FaultError(f"unknown fault switch {name!r}")
            setattr(self, name, _checked(name, value, known[name]))


def _checked(name: str, value: Any, current: Any) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise FaultError(f"{name}: expected true or false")
        return value
    if isinstance(current, list):
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            raise FaultError(f"{name}: expected a list of integers")
        return list(value)
    if isinstance(current, int) and not _is_int(value):
        raise FaultError(f"{name}: expected an integer")
    if name == "redirect" and value not in (0, *REDIRECTS):
        raise FaultError(f"redirect: expected 0 or one of {', '.join(map(str, REDIRECTS))}")
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise FaultError(f"{name}: expected a number >= 0")
    if name.endswith("_rate") and value > 1:
        raise FaultError(f"{name}: expected a probability in [0, 1]")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Incoming:
    """One delivery request as the server read it."""

    body: bytes
    idempotency_key: str | None
    fence: int | None
    instance: str | None
    host: str = "127.0.0.1"  # the Host header, for a redirect's Location


@dataclass(frozen=True)
class Answer:
    """What to do with a request: answer it, reset its connection, or never answer."""

    action: Literal["respond", "reset", "hang"]
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    page: str | None = None  # sent as text/html instead of `body`


@dataclass(frozen=True)
class Recorded:
    """One request as the mock saw it; `status` None when it was reset or left hanging."""

    fn: str | None
    fd: int | None
    fence: int | None
    instance: str | None
    at: float
    status: int | None


def fn_of_key(key: str | None) -> str:
    """The FN part of an Idempotency-Key `<fn>-<fd>` ("" when there is none)."""
    return key.rsplit("-", 1)[0] if key else ""


def parse_fence(value: str | None) -> int | None:
    """The `X-Kktd-Fence` header as a number; a garbled one counts as absent."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class MockState:
    """The accepted set, the request log, fence bookkeeping and the fault switches."""

    def __init__(
        self,
        *,
        rng: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._rng = rng if rng is not None else random.Random(0).random
        self._wall = wall
        self.reset()

    def reset(self) -> None:
        """Forget everything and clear the faults (benchmarks reuse one mock)."""
        self.faults = Faults()
        self.accepted: dict[tuple[str, int], dict[str, Any]] = {}
        self.deliveries: Counter[tuple[str, int]] = Counter()
        self.requests: list[Recorded] = []
        self.duplicates = 0
        self.fence_violations = 0
        self.highest_fence: dict[str, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.overlaps = 0
        self._open: Counter[tuple[str, str | None]] = Counter()

    def enter(self, fn: str, instance: str | None) -> None:
        """A request arrived, open until `leave`.

        The peak shows the client's concurrency; a request for an FN while another instance
        has one open for the same FN is an overlap (two syncs of one FN at once).
        """
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if any(f == fn and i != instance and n > 0 for (f, i), n in self._open.items()):
            self.overlaps += 1
        self._open[(fn, instance)] += 1

    def leave(self, fn: str, instance: str | None) -> None:
        self.in_flight = max(0, self.in_flight - 1)  # a `reset` meanwhile zeroed it
        if self._open[(fn, instance)] > 0:
            self._open[(fn, instance)] -= 1

    def decide(self, incoming: Incoming) -> Answer:
        """The answer to one delivery, in the order a real collector would fail."""
        at = self._wall()
        parsed = _parse(incoming)
        fn, fd = (parsed[0], parsed[1]) if isinstance(parsed, tuple) else (None, None)
        answer = self._answer(incoming, parsed)
        if fn is not None and incoming.fence is not None and answer.status in (201, 409):
            # checked and raised in one step, as a collector does in the write's transaction
            self.highest_fence[fn] = max(incoming.fence, self.highest_fence.get(fn, 0))
        self.requests.append(Recorded(fn, fd, incoming.fence, incoming.instance, at, answer.status))
        return answer

    def _superseded(self, fn: str, fence: int | None, delay: float) -> Answer | None:
        """412 for a fence below the highest accepted for this FN, saying which one that is."""
        highest = self.highest_fence.get(fn)
        if fence is None or highest is None or fence >= highest:
            return None
        self.fence_violations += 1
        body = {
            "error": f"fence {fence} is superseded: fence {highest} holds FN {fn} now",
            "current_fence": highest,
        }
        return Answer("respond", STALE_FENCE_STATUS, body, delay=delay)

    def _answer(self, incoming: Incoming, parsed: tuple[str, int, dict[str, Any]] | str) -> Answer:
        faults = self.faults
        delay = faults.delay
        if faults.reset_rate and self._rng() < faults.reset_rate:
            return Answer("reset", delay=delay)
        if faults.hang_rate and self._rng() < faults.hang_rate:
            return Answer("hang")
        if (stand_in := self._stand_in(incoming, delay)) is not None:
            return stand_in
        if faults.unauthorized:
            return _error(401, "invalid token", delay)
        key = incoming.idempotency_key
        if isinstance(parsed, str):
            return _error(400, parsed, delay, key=key)
        fn, fd, body = parsed
        if (superseded := self._superseded(fn, incoming.fence, delay)) is not None:
            return superseded
        if faults.rate_limit_rate and self._rng() < faults.rate_limit_rate:
            answer = _error(429, "slow down", delay)
            answer.headers["Retry-After"] = str(faults.retry_after)
            return answer
        if faults.error_rate and self._rng() < faults.error_rate and faults.error_codes:
            code = faults.error_codes[int(self._rng() * len(faults.error_codes))]
            return _error(code, "injected failure", delay)
        if fd in faults.fail_fds:
            return _error(500, f"cannot store FD {fd}", delay)
        if fd in faults.reject_fds:
            return _error(422, f"FD {fd} rejected: document not acceptable", delay, key=key)
        self.deliveries[(fn, fd)] += 1
        if (fn, fd) in self.accepted:
            self.duplicates += 1
            return Answer("respond", 409, {"status": "duplicate"}, delay=delay)
        self.accepted[(fn, fd)] = body
        return Answer("respond", 201, {"status": "accepted"}, delay=delay)

    def _stand_in(self, incoming: Incoming, delay: float) -> Answer | None:
        """The answer of whatever stands where the collector should, when a fault says so."""
        faults = self.faults
        if faults.redirect:
            where = {"Location": f"https://{incoming.host}{RECEIPTS_PATH}"}
            return Answer("respond", faults.redirect, headers=where, delay=delay)
        if faults.proxy_page:
            return Answer("respond", 400, delay=delay, page=PROXY_PAGE)
        if faults.not_found_page:
            stamp = datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="milliseconds")
            page = {"timestamp": stamp, "status": 404, "error": "Not Found", "path": RECEIPTS_PATH}
            return Answer("respond", 404, page, delay=delay)
        if faults.gateway_down:
            return Answer("respond", 503, delay=delay, page=GATEWAY_PAGE)
        return None

    def stats(self) -> dict[str, Any]:
        """The counters tests, benchmarks and the chaos harness read (`GET /_mock/stats`)."""
        by_status = Counter(str(r.status) for r in self.requests)
        return {
            "requests": len(self.requests),
            "accepted": len(self.accepted),
            "duplicates": self.duplicates,
            "fence_violations": self.fence_violations,
            "highest_fence": dict(self.highest_fence),
            "peak_in_flight": self.peak_in_flight,
            "overlaps": self.overlaps,
            "by_status": dict(sorted(by_status.items())),
            "faults": self.faults.to_json(),
        }


def _error(status: int, message: str, delay: float, *, key: str | None = None) -> Answer:
    """The collector's own error; a refusal of one document names it by its key."""
    body: dict[str, Any] = {"error": message}
    if key is not None:
        body["key"] = key
    return Answer("respond", status, body, delay=delay)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _parse(incoming: Incoming) -> tuple[str, int, dict[str, Any]] | str:
    """(fn, fd, body) of a valid delivery, else the error text for a 400."""
    try:
        body = json.loads(incoming.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"body is not JSON: {str(exc)[:ERROR_BODY_LIMIT]}"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    fn, fd, tlv = body.get("fn"), body.get("fd"), body.get("tlv")
    if not isinstance(fn, str) or not fn:
        return "fn: expected a non-empty string"
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 1:
        return "fd: expected a positive integer"
    if not isinstance(tlv, str) or not _is_base64(tlv):
        return "tlv: expected a base64 string"
    if incoming.idempotency_key != f"{fn}-{fd}":
        return f"Idempotency-Key must be {fn}-{fd}"
    return fn, fd, body
