"""The upstream HTTP client: one FD per POST, every answer classified (SPEC sections 3 and 4).

`deliver` never raises for network or HTTP trouble: it returns a `Delivery` whose `outcome` tells
the engine what to do with the FD and the breaker; `answers` says what each answer means. The body
of an answer is read whole, up to 64 KiB, however many pieces it arrives in.

The one exception: `WriteRefused`, when the `may_write` check (the sync lease) says no right
before the request's first byte; then nothing was written.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from types import SimpleNamespace

import aiohttp
import structlog

from kktd.config import UpstreamConfig, redact_url
from kktd.journal import Outgoing
from kktd.sync.alerts import Alert
from kktd.sync.answers import (
    FENCE_SUPERSEDED,
    REASON_LIMIT,
    Delivery,
    Outcome,
    superseded,
    unexpected,
    verdict,
)

__all__ = [
    "FENCE_SUPERSEDED",
    "REASON_LIMIT",
    "Delivery",
    "Outcome",
    "UpstreamClient",
    "WriteRefused",
    "superseded",
]

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 5.0
BODY_READ_LIMIT = 64 * 1024  # bytes of an answer read (SPEC section 4)
_FORBIDDEN_STEP = "check upstream.token_file, and that the collector knows this till's token"


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
        gate_writes: bool = True,
    ) -> None:
        self._instance_id = instance_id
        # The write gate asks `may_write` at the last moment through aiohttp's tracing, which
        # costs tens of us per request (a Trace and five signals, two URL copies). Only a lease
        # that can end (the Redis lock) needs it; without one, `may_write` is asked once before
        # the request starts, and the drain keeps that cost (issue 14).
        self._gate_writes = gate_writes
        self._traced = gate_writes or bool(tracing)
        # aiohttp tracing that runs before the write gate's (tests pause a request with it)
        self._tracing = tracing
        self._connect_timeout = connect_timeout
        self._user_agent = f"kktd/{version}"
        self._session: aiohttp.ClientSession | None = None
        # a wrong URL or a refused token: logged once per change rather than once per FD
        self._alert = Alert()
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
    def gates_writes(self) -> bool:
        """Whether `may_write` is asked right before the first byte (else once, up front)."""
        return self._gate_writes

    @property
    def max_in_flight(self) -> int:
        """How many deliveries the engine may run at once (`upstream.max_in_flight`)."""
        return self._cfg.max_in_flight

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": self._user_agent},
                raise_for_status=False,
                trace_configs=[*self._tracing, *([_gate_tracing()] if self._gate_writes else [])],
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self, entry: Outgoing, fence: int | None) -> dict[str, str]:
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
        entry: Outgoing,
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
        data = entry.body
        gate = _WriteGate(may_write)
        if not self._gate_writes:
            gate.check()  # no tracing to ask it later: now, before anything is sent
        delivery = await self._post(entry, fence, data, gate)
        if gate.refused:  # refused in aiohttp's body writer, which wraps it as a connection error
            raise WriteRefused(f"FD {entry.fn}/{entry.fd} not sent: the sync lease ended")
        self._log(entry, delivery)
        return delivery

    async def _post(
        self, entry: Outgoing, fence: int | None, data: bytes, gate: _WriteGate
    ) -> Delivery:
        assert self._session is not None
        try:
            async with self._session.post(
                self._cfg.url,
                data=data,
                headers=self._headers(entry, fence),
                timeout=self._timeout,
                ssl=self._ssl,
                allow_redirects=False,  # a redirected POST could drop the body: misrouting
                trace_request_ctx=SimpleNamespace(gate=gate) if self._traced else None,
            ) as resp:
                body = await read_body(resp.content, BODY_READ_LIMIT)
                delivery = verdict(resp.status, resp.headers, body, f"{entry.fn}-{entry.fd}")
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

    def _log(self, entry: Outgoing, delivery: Delivery) -> None:
        outcome = delivery.outcome
        if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE) and self._alert.active is None:
            return  # the common case: nothing to say
        fields = {"fn": entry.fn, "fd": entry.fd, "status": delivery.status}
        if outcome in (Outcome.FORBIDDEN, Outcome.MISROUTED):
            # nothing gets delivered until an operator fixes the token or the URL
            self._alert.start(
                f"sync.{outcome}",
                (outcome, delivery.status),
                url=self._shown_url,
                reason=delivery.reason,
                **({"next_step": _FORBIDDEN_STEP} if outcome is Outcome.FORBIDDEN else {}),
                **fields,
            )
        elif outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.REJECTED):
            self._alert.end(url=self._shown_url, **fields)
        if outcome is Outcome.REJECTED:
            log.warning("sync.rejected", reason=delivery.reason, **fields)
        elif outcome is Outcome.TRANSIENT and unexpected(delivery.status):
            log.warning("sync.unexpected_status", reason=delivery.reason, **fields)
        elif outcome not in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            # Not for each accepted FD: the round's line counts those, and a call on a module
            # logger assembles a logger each time, even when debug is off (tens of us per FD)
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


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:REASON_LIMIT]
