"""The HTTP client of the local API, for the client commands (`kktd status` …).

It finds the daemon where the config says it listens (`api.listen`: host:port or unix:/path) and
sends the API token, when one is configured, only on the requests that need it (POSTs and reads
of receipts, `kktd.control.api.access`): whatever answers on the port while kktd is down must not
collect it from a `kktd status`. Anything that keeps us from talking to the daemon is
`DaemonUnreachable`, naming the address tried, so the command can exit 3 with a useful message.
An answer that is not kktd's (an HTML page from some other server, JSON of another shape, a body
cut short) is `BadAnswer`: the command exits 1 saying so, and never takes it for a success.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

from kktd.config import ApiConfig
from kktd.control.api.access import needs_token

CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0
NDJSON = "application/x-ndjson"  # what /v1/export streams
QUOTED = 80  # characters of a foreign answer quoted in the error
PEEK = 1024  # bytes read of a foreign stream to quote it

Shape = Mapping[str, type | tuple[type, ...]]
"""The fields a successful answer must hold, each with the Python type its JSON value maps to."""
ERROR_SHAPE: Shape = {"error": str}  # every error kktd answers names itself (api/server.py)


class DaemonUnreachable(Exception):  # noqa: N818 - reads as the situation the command reports
    """No answer from the daemon's API at `address`."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"kktd is not answering at {address}: {reason}")
        self.address = address
        self.reason = reason


class ApiError(Exception):
    """The daemon answered with an error status; `body` is its JSON (`error`, `detail` …)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        detail = body.get("detail") or body.get("error") or ""
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class BadAnswer(Exception):  # noqa: N818 - reads as the situation the command reports
    """Something answered at the address, but not as kktd's API does (the message says how)."""


class ApiClient:
    """One session to the daemon; use as ``async with ApiClient(config.api) as api``."""

    def __init__(self, cfg: ApiConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = cfg.listen
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        self._token = cfg.token
        if cfg.listen.startswith("unix:"):
            self._socket: str | None = cfg.listen.removeprefix("unix:")
            # the Host the API accepts on a unix socket, as curl --unix-socket sends it
            self._base = "http://localhost"
        else:
            self._socket = None
            self._base = f"http://{cfg.listen}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.UnixConnector(path=self._socket) if self._socket else None
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call bound passed on to aiohttp
        shape: Shape | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one call; an error status is returned, not raised.

        `BadAnswer` unless the body is kktd's: a JSON object, with kktd's `error` field when the
        status is an error, and with the fields of `shape` when it is not.
        """
        session = self._open()
        bound = None if timeout is None else aiohttp.ClientTimeout(total=timeout)
        url = self._base + path
        try:
            # a redirect is not kktd's (it never sends one): report it, do not follow it
            async with session.request(
                method,
                url,
                params=params,
                headers={**self._auth(method, path), **(headers or {})},
                timeout=bound,
                allow_redirects=False,
                json=body,
            ) as resp:
                raw = await resp.read()
                status, content_type = resp.status, resp.content_type
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        except aiohttp.ClientError as exc:
            raise self._broken(exc) from exc
        return status, self._object(status, content_type, raw, shape)

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as in `request`
        shape: Shape | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of a successful call; `ApiError` for an error status."""
        status, answer = await self.request(
            method, path, params, timeout=timeout, shape=shape, body=body, headers=headers
        )
        if status >= 400:
            raise ApiError(status, answer)
        return answer

    async def records(
        self, path: str, params: Mapping[str, str], shape: Shape
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Each line of a streamed answer of JSON lines, with its object, as they arrive.

        There is no overall time limit. A line that is not a JSON object of `shape`, or a stream
        that breaks off, is `BadAnswer` naming how many records came before it.
        """
        session = self._open()
        endless = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=60)
        count = 0
        try:
            async with session.get(
                self._base + path,
                params=params,
                headers=self._auth("GET", path),
                timeout=endless,
                allow_redirects=False,
            ) as resp:
                if resp.status >= 400:
                    body = self._object(resp.status, resp.content_type, await resp.read(), None)
                    raise ApiError(resp.status, body)
                if resp.status != 200 or resp.content_type != NDJSON:
                    peek = await resp.content.read(PEEK)
                    raise self._foreign(resp.status, resp.content_type, peek, "")
                async for line in resp.content:
                    if not line.strip():
                        continue
                    yield self._record(line, count, shape)
                    count += 1
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            # the daemon stopped in the middle of the stream
            raise self._unreachable(exc) from exc
        except aiohttp.ClientError as exc:
            raise self._broken(exc, after=count) from exc

    def _record(self, line: bytes, count: int, shape: Shape) -> tuple[str, dict[str, Any]]:
        where = f"after {_records(count)}"
        if not line.endswith(b"\n"):  # kktd ends every record; the stream stopped in one
            raise BadAnswer(f"the answer from {self.address} broke off {where}: {_quote(line)}")
        try:
            text = line.decode("utf-8")
            item = json.loads(text)
        except ValueError:
            item = None
        missing = _missing(item, shape)
        if missing:
            raise BadAnswer(
                f"{self.address} sent a line that is not kktd's export {where}"
                f" ({missing}): {_quote(line)}"
            )
        assert isinstance(item, dict)  # _missing checked it
        return text, item

    def _object(
        self, status: int, content_type: str, raw: bytes, shape: Shape | None
    ) -> dict[str, Any]:
        """The answer's JSON object, if it is one kktd would send (see `request`)."""
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            raise self._foreign(status, content_type, raw, "") from None
        missing = _missing(body, ERROR_SHAPE if status >= 400 else shape or {})
        if missing:
            raise self._foreign(status, content_type, raw, f"; {missing}")
        assert isinstance(body, dict)  # _missing checked it
        return body

    def _foreign(self, status: int, content_type: str, raw: bytes, why: str) -> BadAnswer:
        return BadAnswer(
            f"{self.address} answered something that is not kktd's API"
            f" (HTTP {status}, {content_type}{why}): {_quote(raw)}"
        )

    def _broken(self, exc: aiohttp.ClientError, *, after: int | None = None) -> BadAnswer:
        if isinstance(exc, aiohttp.ClientPayloadError):
            where = "" if after is None else f" after {_records(after)}"
            return BadAnswer(f"the answer from {self.address} broke off{where}: {_line(exc)}")
        # not HTTP at all, or HTTP that aiohttp cannot parse
        reason = exc.message if isinstance(exc, aiohttp.ClientResponseError) else exc
        return BadAnswer(
            f"{self.address} answered something that is not kktd's API (not HTTP): {_line(reason)}"
        )

    def _auth(self, method: str, path: str) -> dict[str, str]:
        if self._token is None or not needs_token(method, path):
            return {}
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ApiClient as an async context manager")
        return self._session

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        if isinstance(exc, TimeoutError):
            return DaemonUnreachable(self.address, "no answer in time")
        reason = getattr(exc, "os_error", None) or exc
        return DaemonUnreachable(self.address, str(getattr(reason, "strerror", None) or reason))


def _missing(body: object, shape: Shape) -> str:
    """What keeps `body` from being a JSON object of `shape`; empty when nothing does."""
    if not isinstance(body, dict):
        return "not a JSON object"
    for key, kind in shape.items():
        if not isinstance(body.get(key), kind):
            return f"no {key!r}"
    return ""


def _records(count: int) -> str:
    return "1 record" if count == 1 else f"{count} records"


def _line(reason: object) -> str:
    return " ".join(str(reason).split())


def _quote(raw: bytes) -> str:
    """The start of an answer, on one line, for an error message."""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    if not text:
        return "(nothing)"
    return text if len(text) <= QUOTED else text[:QUOTED] + "…"
