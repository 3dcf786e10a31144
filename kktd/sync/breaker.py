"""Circuit breaker for upstream calls (SPEC section 3), a pure state machine on an injected clock.

CLOSED counts consecutive failures and opens at the threshold. OPEN refuses every call until
`reset_timeout` has passed, then turns HALF_OPEN, where exactly one caller at a time may probe:
its success closes the breaker, its failure re-opens it for another `reset_timeout`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Guards upstream calls: ask `try_acquire` before a call, report its verdict after."""

    def __init__(
        self,
        failure_threshold: int,
        reset_timeout: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._monotonic = monotonic
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns HALF_OPEN here once `reset_timeout` has passed."""
        if (
            self._state is BreakerState.OPEN
            and self._monotonic() >= self._opened_at + self._reset_timeout
        ):
            self._probe_in_flight = False
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def try_acquire(self) -> bool:
        """May one upstream call start now? In HALF_OPEN only the first caller gets the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """A call reached the upstream and was answered well: reset, or close after a probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN and self._probe_in_flight:
            self._failures = 0
            self._probe_in_flight = False
            self._move(BreakerState.CLOSED)
        # OPEN: a late answer to a call started before the breaker opened proves nothing now.

    def record_failure(self) -> None:
        """A call failed: count it while CLOSED; a failed probe re-opens the breaker."""
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()
        elif state is BreakerState.HALF_OPEN and self._probe_in_flight:
            self._failures += 1
            self._probe_in_flight = False
            self._open()

    def trip(self) -> None:
        """Open now, whatever the count: every FD of a round failed alike (SPEC section 3)."""
        if self.state is not BreakerState.OPEN:
            self._probe_in_flight = False
            self._open()

    def release(self) -> None:
        """A call ended with no verdict (e.g. cancelled): free the probe slot for another caller."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def retry_in(self) -> float:
        """Seconds until a probe may go: 0.0 unless OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._reset_timeout - self._monotonic())

    def reconfigure(self, failure_threshold: int, reset_timeout: float) -> None:
        """New settings (SIGHUP); an open breaker's probe time follows the new timeout."""
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout

    def _open(self) -> None:
        self._opened_at = self._monotonic()
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            log.warning("breaker.opened", failures=self._failures, retry_in=self._reset_timeout)
        elif new is BreakerState.HALF_OPEN:
            log.info("breaker.half_open", failures=self._failures, retry_in=0.0)
        else:
            log.info("breaker.closed", failures=self._failures, retry_in=0.0)
        if self._on_change is not None:
            self._on_change(old, new)
