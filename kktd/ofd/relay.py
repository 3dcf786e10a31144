"""The OFD relay (SPEC section 9): the FN's messages to the OFD, the OFD's receipts back.

One message at a time: FF30 says how many bytes wait, FF31 reads them (the link held for the
whole read), one TCP connection carries them to the OFD unchanged and brings the answer, FF32
and FF33 write it back (the link held again). The serial link is shared with the poller; the
OFD is slow and far away, so the link is never held while waiting for it.

Nothing is ever dead-lettered: a message stays in the FN until the FN has the OFD's answer,
and the FN offers it again. So a failure only decides how long to wait: the relay's own
breaker and backoff guard the OFD leg; trouble on the serial side waits for the link's own
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import structlog

from kktd.config import OfdConfig
from kktd.kkt.commands import OfdStatus
from kktd.kkt.link import KktError, KktLink
from kktd.kkt.ofd_protocol import SessionError, SessionHeader
from kktd.lifecycle.supervisor import Beat, Wake, sleep_beating
from kktd.ofd.audit import ExchangeRecord, OfdAudit, Outcome
from kktd.ofd.client import OfdError, exchange
from kktd.ofd.fn import BUSY_PAUSE, FN_TROUBLE, FnBuffer, KktOfdSettings
from kktd.sync.backoff import Backoff
from kktd.sync.breaker import CircuitBreaker

log = structlog.get_logger(__name__)

T = TypeVar("T")

IDLE_INTERVAL = 5.0  # FF30 polls while the FN offers nothing (new FDs wake the relay sooner)
BACKLOG_EVERY = 60.0  # FF39 while idle; after every relayed message too
TREND_WINDOW = 600.0
# A step's serial legs (FF30/FF31 blocks out, FF32/FF33 blocks back) at a slow baud rate, on top
# of the OFD leg's own bound (connect and answer, each within ofd.timeout). Past that a step is
# wedged on something that has no timeout of its own, and is cancelled.
SERIAL_ALLOWANCE = 300.0

Trend = Literal["rising", "falling", "steady"]


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """What /v1/status shows of the relay (wall-clock times, seconds)."""

    enabled: bool
    ofd: str
    breaker: str
    backoff_seconds: float
    last_success_at: float | None
    last_attempt_at: float | None
    last_outcome: Outcome | None
    last_error: str | None
    consecutive_failures: int
    relayed: int
    failed: int
    outcomes: dict[str, int]  # exchanges by outcome since start
    pending_bytes: int | None  # FF30's last word: the message on offer now
    backlog: int | None  # FF39's unsent count: the FN's backlog toward the OFD
    backlog_oldest_at: datetime | None
    backlog_trend: Trend | None
    exchange_mode: int | None  # table 21 field 2 as the KKT reports it (0 = through us)
    kkt_ofd_server: str | None  # table 19: the OFD the KKT itself is set up for

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        at = self.backlog_oldest_at
        data["backlog_oldest_at"] = None if at is None else at.isoformat()
        return data


class OfdRelay:
    """The relay loop; a supervised component (`run(beat)`), idle while `ofd.mode` is off."""

    def __init__(
        self,
        link: KktLink,
        cfg: OfdConfig,
        audit: OfdAudit,
        *,
        breaker: CircuitBreaker | None = None,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        interval: float = IDLE_INTERVAL,
        busy_pause: float = BUSY_PAUSE,
        step_deadline: float | None = None,
    ) -> None:
        self._link = link
        self._cfg = cfg
        self._audit = audit
        self.breaker = breaker or CircuitBreaker(5, 60.0, monotonic=monotonic)
        self.backoff = backoff or Backoff(1.0, 60.0, "full")
        self._monotonic = monotonic
        self._wall = wall
        self._interval = interval
        self._step_deadline = step_deadline  # None: from ofd.timeout (see `deadline`)
        self._fn = FnBuffer(link, busy_pause=busy_pause)
        self._wake = Wake()
        self._last_success_at: float | None = None
        self._last: ExchangeRecord | None = None
        self._last_attempt_at: float | None = None
        self._outcomes: Counter[str] = Counter()
        self._backlog: OfdStatus | None = None
        self._backlog_at = float("-inf")
        self._samples: deque[tuple[float, int]] = deque()
        self._settings_for: float | None = None  # link.state.since when the tables were read
        self._settings = KktOfdSettings(None, None)
        self._fn_trouble: str | None = None

    # --- the component -----------------------------------------------------------------------

    async def run(self, beat: Beat) -> None:
        log.info("ofd.relay_started", mode=self._cfg.mode, ofd=self._address)
        while True:
            beat()
            turn = await _beating(self.step(), beat, self.deadline)
            if turn is None:
                turn = self.backoff.record_failure(), False
                log.error("ofd.step_timed_out", deadline=self.deadline, retry_in=round(turn[0], 3))
            await self._pause(*turn, beat)

    @property
    def deadline(self) -> float:
        """Seconds one step may take in all before it is cancelled as wedged."""
        if self._step_deadline is not None:
            return self._step_deadline
        return 2 * self._cfg.timeout + SERIAL_ALLOWANCE

    def wake(self) -> None:
        """A new FD was journaled: the FN has a new message for the OFD."""
        self._wake.set()

    def reconfigure(self, cfg: OfdConfig) -> None:
        """New [ofd] settings (SIGHUP); they apply from the next message."""
        if cfg != self._cfg:
            log.info("ofd.reconfigured", mode=cfg.mode, ofd=f"{cfg.host}:{cfg.port}")
        self._cfg = cfg
        self._wake.set()

    def status(self) -> RelayStatus:
        last = self._last
        backlog = self._backlog
        return RelayStatus(
            enabled=self._cfg.mode == "relay",
            ofd=self._address,
            breaker=self.breaker.state.value,
            backoff_seconds=round(self.backoff.current_delay, 3),
            last_success_at=self._last_success_at,
            last_attempt_at=self._last_attempt_at,
            last_outcome=None if last is None else last.outcome,
            last_error=None if last is None else last.error,
            consecutive_failures=self.backoff.failures,
            relayed=self._outcomes["relayed"],
            failed=self._outcomes.total() - self._outcomes["relayed"],
            outcomes=dict(self._outcomes),
            pending_bytes=self._fn.pending_bytes,
            backlog=None if backlog is None else backlog.unsent_count,
            backlog_oldest_at=None if backlog is None else backlog.first_unsent_at,
            backlog_trend=self._trend(),
            exchange_mode=self._settings.exchange_mode,
            kkt_ofd_server=self._settings.server,
        )

    @property
    def _address(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    # --- one turn ----------------------------------------------------------------------------

    async def step(self) -> tuple[float, bool]:
        """Relay the message on offer, if any: (seconds until the next turn, wakeable)."""
        if self._cfg.mode != "relay":
            return self._interval, True
        if not self.breaker.try_acquire():
            return max(self.breaker.retry_in(), 0.05), False
        try:
            return await self._turn()
        finally:
            # A verdict (success or failure) has freed the probe slot already. Anything else -
            # no OFD call made, a cancellation, an exception nobody foresaw - must free it too,
            # or a half-open breaker keeps it for good and the OFD is never called again.
            self.breaker.release()

    async def _turn(self) -> tuple[float, bool]:
        started, t0 = self._wall(), self._monotonic()
        try:
            message = await self._fn.take_message()
        except FN_TROUBLE as exc:
            self._on_fn_trouble(exc)
            return self._interval, True
        self._on_fn_trouble(None)
        await self._read_settings()
        if message is None:
            await self._read_backlog(force=False)
            return self._interval, True
        return await self._relay(message, started, self._monotonic() - t0)

    async def _relay(self, message: bytes, started: float, read: float) -> tuple[float, bool]:
        t0 = self._monotonic()
        answer: bytes | None = None
        outcome: Outcome = "relayed"
        error: str | None = None
        write = 0.0
        try:
            answer = await exchange(
                self._cfg.host, self._cfg.port, message, timeout=self._cfg.timeout
            )
        except OfdError as exc:
            self.breaker.record_failure()
            outcome, error = exc.failure, exc.detail
        except OSError as exc:  # e.g. EHOSTUNREACH while sending: the network, not the message
            self.breaker.record_failure()
            outcome, error = "unreachable", f"{self._address}: {exc.strerror or exc}"
        ofd = self._monotonic() - t0
        if answer is not None:
            self.breaker.record_success()  # the OFD answered well, whatever the FN makes of it
            outcome, error = await self._write_answer(answer)
            write = self._monotonic() - t0 - ofd
        record = ExchangeRecord(
            started, _fn_of(message), message, answer, outcome, error, read, ofd, write
        )
        return await self._finish(record)

    async def _finish(self, record: ExchangeRecord) -> tuple[float, bool]:
        self._last, self._last_attempt_at = record, record.started_at
        self._outcomes[record.outcome] += 1
        if record.outcome == "relayed":
            self._last_success_at = self._wall()
            self.backoff.record_success()
            delay = 0.0
        else:
            # Serial trouble waits for the link; everything else for the OFD leg's backoff.
            link = record.outcome == "link_lost"
            delay = self._interval if link else self.backoff.record_failure()
        await self._read_backlog(force=record.outcome == "relayed")
        event = log.info if record.outcome == "relayed" else log.warning
        event(
            "ofd.exchanged",
            **record.summary(),
            consecutive_failures=self.backoff.failures,
            retry_in=round(delay, 3),
            backlog=None if self._backlog is None else self._backlog.unsent_count,
        )
        try:
            await self._audit.record_ofd_exchange(record)
        # The FN keeps the legal record and needs its receipts: an audit sink that fails must
        # not stop the relay, only be reported.
        except Exception as exc:
            log.exception("ofd.audit_failed", error=str(exc), outcome=record.outcome)
        return delay, False

    # --- the FN side -------------------------------------------------------------------------

    async def _write_answer(self, answer: bytes) -> tuple[Outcome, str | None]:
        try:
            await self._fn.write_answer(answer)
        except KktError as exc:
            return "fn_refused", str(exc)
        except FN_TROUBLE as exc:
            return "link_lost", str(exc)
        return "relayed", None

    async def _read_settings(self) -> None:
        """The KKT's OFD settings (1F), once per connection: for status, and to warn."""
        since = self._link.state.since
        if since == self._settings_for:
            return
        self._settings_for = since
        self._settings = settings = await self._fn.settings()
        log.info("ofd.kkt_settings", exchange_mode=settings.exchange_mode, server=settings.server)
        if settings.exchange_mode not in (None, 0):
            log.warning(
                "ofd.kkt_not_in_relay_mode",
                exchange_mode=settings.exchange_mode,
                hint="the KKT talks to the OFD itself (table 21 field 2); kktd will find nothing",
            )

    async def _read_backlog(self, *, force: bool) -> None:
        now = self._monotonic()
        if not force and now - self._backlog_at < BACKLOG_EVERY:
            return
        self._backlog_at = now
        try:
            backlog = await self._fn.backlog()
        except FN_TROUBLE as exc:
            log.debug("ofd.backlog_unread", error=str(exc))
            return
        self._backlog = backlog
        self._samples.append((now, backlog.unsent_count))
        while self._samples and self._samples[0][0] < now - TREND_WINDOW:
            self._samples.popleft()

    def _trend(self) -> Trend | None:
        if len(self._samples) < 2:
            return None
        change = self._samples[-1][1] - self._samples[0][1]
        return "rising" if change > 0 else "falling" if change < 0 else "steady"

    def _on_fn_trouble(self, exc: Exception | None) -> None:
        """Log serial trouble once when it starts or changes, and once when it ends."""
        text = None if exc is None else str(exc)
        if text == self._fn_trouble:
            return
        if text is None:
            log.info("ofd.fn_available")
        else:
            log.warning("ofd.fn_unavailable", error=text)
        self._fn_trouble = text

    async def _pause(self, delay: float, wakeable: bool, beat: Beat) -> None:
        """Wait `delay` seconds beating at least once a second; a wake ends an idle wait."""
        await sleep_beating(delay, beat, wake=self._wake if wakeable else None)
        self._wake.clear()


def _fn_of(message: bytes) -> str | None:
    try:
        return SessionHeader.decode(message).fn
    except SessionError:
        return None  # opaque anyway: relayed as it is


async def _beating(work: Coroutine[Any, Any, T], beat: Beat, deadline: float) -> T | None:
    """Await `work`, beating once a second meanwhile (the OFD may take a minute to answer).

    Past `deadline` seconds the work is cancelled and None returned. The wait for the
    cancellation does not beat: work that will not even stop is what the watchdog is for.
    """
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    try:
        while not task.done():
            if (left := end - loop.time()) <= 0:
                return None
            await asyncio.wait({task}, timeout=min(left, 1.0))
            beat()
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
