"""Delay between failed sync rounds (SPEC section 3): capped exponential, optional full jitter.

After k consecutive failed rounds the delay is min(base * 2^(k-1), max) — 1, 2, 4 … 60 s with the
defaults — drawn uniformly from [0, that] with full jitter. A `Retry-After` from the upstream is a
floor on the delay, itself capped so a hostile or broken upstream cannot park the loop for hours.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

# "full": each delay is drawn from [0, cap]; "none": the cap itself (`backoff.jitter` in the
# config, which takes this type from here: a pure core imports nothing of kktd's).
Jitter = Literal["full", "none"]

RETRY_AFTER_CAP = 300.0
# 2**62 times any sane base is far past any sane max: the exponent stops growing there so a very
# long outage cannot overflow the float conversion.
_MAX_EXPONENT = 62


class Backoff:
    """Counts consecutive failed rounds and says how long to wait before the next one."""

    def __init__(
        self,
        base: float,
        max_delay: float,
        jitter: Jitter,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.max_delay = max_delay
        self.jitter: Jitter = jitter
        self._rng = rng
        self.failures = 0
        self._delay = 0.0

    def record_failure(self, retry_after: float | None = None) -> float:
        """One more failed round; returns the delay before the next round."""
        self.failures += 1
        cap = min(self.base * 2.0 ** min(self.failures - 1, _MAX_EXPONENT), self.max_delay)
        delay = cap * self._rng() if self.jitter == "full" else cap
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        self._delay = delay
        return delay

    def record_success(self) -> None:
        self.failures = 0
        self._delay = 0.0

    @property
    def current_delay(self) -> float:
        """The delay last returned by `record_failure`; 0.0 after a success."""
        return self._delay

    def reconfigure(self, base: float, max_delay: float, jitter: Jitter) -> None:
        """New settings (SIGHUP), used from the next failure on; the failure count stays."""
        self.base = base
        self.max_delay = max_delay
        self.jitter = jitter


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delay-seconds or HTTP-date); None when unusable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
