"""Upstream-wide conditions, logged once per change (STYLE: "log once per change").

A wrong `upstream.url` or a refused token fails every FD alike, one answer after another: one
error line when the condition starts (or changes), one line when an answer shows it has ended,
with how many answers it spanned. `kktd_sync_deliveries_total{result}` counts the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Alert:
    """One repeating condition at a time, identified by a key such as ("misrouted", 404)."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._key: tuple[Any, ...] | None = None
        self._event = ""
        self._count = 0
        self._since = 0.0

    @property
    def active(self) -> str | None:
        """The event that started the current condition, None when there is none."""
        return self._event if self._key is not None else None

    def start(self, event: str, key: tuple[Any, ...], **fields: Any) -> None:
        """The condition `key` was seen again: logged at error only when it is new."""
        if key != self._key:
            self._key, self._event, self._count = key, event, 0
            self._since = self._monotonic()
            log.error(event, **fields)
        self._count += 1

    def end(self, **fields: Any) -> None:
        """An answer that shows the condition is over (logged when there was one)."""
        if self._key is None:
            return
        log.warning(
            "sync.upstream_recovered",
            was=self._event,
            answers=self._count,
            seconds=round(self._monotonic() - self._since, 3),
            **fields,
        )
        self._key = None
