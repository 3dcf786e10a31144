"""What the server and its endpoints share: the application's keys and the error answer.

Its own module so that `kktd.control.api.server` imports the routes and the routes import none of
the server: the keys and `error` are all either needs of the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from kktd.control.api.metrics import Metrics
    from kktd.control.runtime import Runtime

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")
REFUSED_KEY: web.AppKey[set[str]] = web.AppKey("refused")


class ParameterError(Exception):
    """A path or query parameter an endpoint cannot use: the answer is 400."""


def error(code: int, name: str, detail: str, **extra: Any) -> web.Response:
    """The API's error answer: ``{"error": name, "detail": detail, ...extra}``."""
    return web.json_response({"error": name, "detail": detail, **extra}, status=code)
