"""The HTTP client of the local API, for the client commands (`kktd status` …).

It finds the daemon where the config says it listens (`api.listen`: host:port or unix:/path) and
sends the API token when one is configured. Anything that keeps us from talking to the daemon is
`DaemonUnreachable`, naming the address tried, so the command can exit 3 with a useful message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

from kktd.config import ApiConfig

CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 30.0
# a manual sync waits for a whole round: a batch of deliveries, each up to upstream.timeout
SYNC_TIMEOUT = 300.0


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


class ApiClient:
    """One session to the daemon; use as ``async with ApiClient(config.api) as api``."""

    def __init__(self, cfg: ApiConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = cfg.listen
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        self._headers = {}
        if cfg.token is not None:
            self._headers["Authorization"] = f"Bearer {cfg.token.reveal()}"
        if cfg.listen.startswith("unix:"):
            self._socket: str | None = cfg.listen.removeprefix("unix:")
            self._base = "http://kktd"
        else:
            self._socket = None
            self._base = f"http://{cfg.listen}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.UnixConnector(path=self._socket) if self._socket else None
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._timeout
        )
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
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one call; an error status is returned, not raised."""
        session = self._open()
        bound = None if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.request(
                method, self._base + path, params=params, timeout=bound
            ) as resp:
                text = await resp.text()
                return resp.status, _json_object(resp.status, text)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as in `request`
    ) -> dict[str, Any]:
        """The JSON body of a successful call; `ApiError` for an error status."""
        status, body = await self.request(method, path, params, timeout=timeout)
        if status >= 400:
            raise ApiError(status, body)
        return body

    async def lines(self, path: str, params: Mapping[str, str]) -> AsyncIterator[bytes]:
        """The lines of a streamed answer, as they arrive (no overall time limit)."""
        session = self._open()
        endless = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=60)
        try:
            async with session.get(self._base + path, params=params, timeout=endless) as resp:
                if resp.status >= 400:
                    raise ApiError(resp.status, _json_object(resp.status, await resp.text()))
                async for line in resp.content:
                    yield line
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            # the daemon stopped in the middle of the stream
            raise self._unreachable(exc) from exc

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ApiClient as an async context manager")
        return self._session

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        if isinstance(exc, TimeoutError):
            return DaemonUnreachable(self.address, "no answer in time")
        reason = getattr(exc, "os_error", None) or exc
        return DaemonUnreachable(self.address, str(getattr(reason, "strerror", None) or reason))


def _json_object(status: int, text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        return {"error": f"HTTP {status}", "detail": text.strip()[:500]}
    return body if isinstance(body, dict) else {"value": body}
