"""Line noise counted, not narrated (issue 12): a counter per kind, and a few lines per burst.

A bad cable or a flaky RNDIS link garbles a frame every few exchanges for hours; the handshake
recovers each time (NAK, ENQ, the KKT resends), so each garbled frame is a fact for a counter
(`kktd_kkt_line_errors_total{kind}`), not for the log. The log gets one line when noise starts,
at most one summary a minute while it lasts (the counts since the last line), and one line with
the burst's totals once a minute has passed with none.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import structlog

from kktd.kkt.handshake import Discarded

log = structlog.get_logger(__name__)

SUMMARY_EVERY = 60.0  # at most one line a minute while the noise lasts
CLEAN_AFTER = 60.0  # a minute without noise ends a burst


class LineNoise:
    """What the protocol discarded off one link, by kind, and the burst it belongs to."""

    def __init__(self, port: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.totals: Counter[str] = Counter()  # events by kind since the daemon started
        self._monotonic = monotonic
        self._burst: Counter[str] = Counter()  # events and bytes by kind, this burst
        self._since_line: Counter[str] = Counter()  # ... since the last line about it
        self._started: float | None = None
        self._line_at = 0.0
        self._last_seen = 0.0

    @property
    def noisy(self) -> bool:
        """Inside a burst (noise seen within the last `CLEAN_AFTER` seconds, or not yet ended)."""
        return self._started is not None

    def seen(self, what: Discarded) -> None:
        now = self._monotonic()
        self.totals[what.kind] += 1
        if self._started is None:
            self._started = self._line_at = now
            log.warning(
                "kkt.line_noise", port=self.port, kind=what.kind, sample=what.data[:16].hex(" ")
            )
        else:
            self._since_line[f"{what.kind}_events"] += 1
            self._since_line[f"{what.kind}_bytes"] += len(what.data)
            if now - self._line_at >= SUMMARY_EVERY:
                log.warning(
                    "kkt.line_noise_continues",
                    port=self.port,
                    seconds=round(now - self._line_at),
                    **self._since_line,
                )
                self._since_line.clear()
                self._line_at = now
        self._burst[f"{what.kind}_events"] += 1
        self._burst[f"{what.kind}_bytes"] += len(what.data)
        self._last_seen = now

    def clean_exchange(self) -> None:
        """An exchange went through; a burst ends once `CLEAN_AFTER` passed without noise."""
        if self._started is None:
            return
        now = self._monotonic()
        if now - self._last_seen < CLEAN_AFTER:
            return
        log.info(
            "kkt.line_clean",
            port=self.port,
            lasted=round(self._last_seen - self._started, 1),
            **self._burst,
        )
        self._burst.clear()
        self._since_line.clear()
        self._started = None
