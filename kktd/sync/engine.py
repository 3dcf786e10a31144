"""Sync rounds and the sync loop (SPEC section 3 "A round"), and the manual sync of section 6.

A round, per FN: take the lock -> claim up to `sync.batch_size` due FDs, lowest first -> send
them, at most `upstream.max_in_flight` at once, each only with the breaker's leave and a live
lease -> record every outcome in the journal and the breaker. Rejections and transient failures
are written at the end of the round, when it is known what the round says about the upstream.

Only evidence about an FD counts against it (SPEC section 3): a transient failure is counted in
a round where the upstream accepted another FD, never otherwise (so never in a half-open probe);
a round that rejected five or more FDs and accepted none holds them pending and opens the
breaker, and until an FD is accepted again a rejected probe is held too. A due time further ahead
than any schedule kktd makes means the wall clock was stepped back since: the FD is due now. A
manual sync ignores due times.

After a round: a full, clean batch goes again at once (a backlog drains at the upstream's pace);
an open breaker sleeps until its probe time; a failed round waits the backoff delay; otherwise
the loop idles `sync.interval`. A `wake()` (a new FD, a retried one) ends the wait early,
except a wait the upstream asked for with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import structlog

from kktd.config import SyncConfig
from kktd.journal import Journal, JournalEntry, JournalError
from kktd.sync.alerts import Alert
from kktd.sync.backoff import RETRY_AFTER_CAP, Backoff
from kktd.sync.breaker import BreakerState, CircuitBreaker
from kktd.sync.client import Delivery, Outcome, UpstreamClient, WriteRefused
from kktd.sync.lock import (
    Lease,
    LeaseLost,
    LocalSyncLock,
    LockBusy,
    LockUnavailable,
    SyncLock,
)
from kktd.sync.pool import Batch, SenderPool
from kktd.sync.redis_trouble import LockProblem

log = structlog.get_logger(__name__)

ReportStatus = Literal["completed", "busy", "circuit_open", "skipped"]
_RAN = ("completed", "lease_lost", "fence_superseded")  # FN rounds that sent (or could have)
_BEAT_SLICE = 1.0  # seconds: idle waits are sliced so the loop beats at least this often
ALL_REJECTED_MIN = 5  # a round rejecting this many FDs and accepting none indicts the upstream
RUN_BATCHES = 20  # batches per FN per pass at most: then the next FN, and a quiet point


@dataclass(frozen=True)
class SyncReport:
    """What a round (or a manual sync) did, in the shape of SPEC section 6."""

    status: ReportStatus
    synced: int
    failed: int
    dead: int
    duration_seconds: float
    holder: str | None = None
    retry_in_seconds: float | None = None


@dataclass(frozen=True)
class SyncStatus:
    """The engine's state for `/v1/status`; `next_round_in_seconds` None while a round runs."""

    breaker_state: BreakerState
    retry_in_seconds: float
    backoff_delay: float
    backoff_failures: int
    last_report: SyncReport | None
    last_round_at: float | None
    lock_holder: str | None
    lock_fence: int | None
    next_round_in_seconds: float | None
    lock_problem: LockProblem | None = None  # Redis refuses the lock: no round runs


@dataclass(frozen=True)
class DeliveryFailure:
    """The last delivery that did not end synced, for the operator's status."""

    at: float
    fn: str
    fd: int
    delivery: Delivery


@dataclass
class _Tally:
    """One pass's counts, and what decides the pause after it."""

    synced: int = 0
    failed: int = 0
    dead: int = 0
    full: bool = False  # a batch came back full: more is due
    refused: bool = False  # the breaker stopped the sending
    failure: bool = False  # a delivery failed: the backoff grows
    delivered: bool = False  # the upstream answered something
    retry_after: float | None = None
    transient: list[tuple[JournalEntry, Delivery]] = field(default_factory=list)
    rejected: list[tuple[JournalEntry, Delivery]] = field(default_factory=list)
    accepted: list[tuple[str, int]] = field(default_factory=list)
    superseded: Delivery | None = None  # a 412: another instance holds the FN now

    def add(self, other: _Tally) -> None:
        """Fold one FN round into the pass."""
        self.synced += other.synced
        self.failed += other.failed
        self.dead += other.dead
        self.full = self.full or other.full
        self.refused = self.refused or other.refused
        self.failure = self.failure or other.failure
        self.delivered = self.delivered or other.delivered
        if other.retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, other.retry_after)


@dataclass
class _Run:
    """One FN's batches under one lease."""

    lease: Lease
    cfg: SyncConfig  # a reload (a new object) ends the run after the batch in flight
    several: bool  # may claim more than one batch
    stopped: bool = False  # lease gone, breaker refused, or superseded: start nothing more
    failed_at: int | None = None  # the first batch with a failure: no later batch is sent
    backed_off: bool = False  # the backoff has grown for this run
    superseded: Delivery | None = None
    pool: SenderPool[_Tally] | None = None


class SyncEngine:
    """Delivers the journal to the upstream, round after round, until cancelled."""

    def __init__(  # noqa: PLR0917 - the pinned API passes the six collaborators positionally
        self,
        journal: Journal,
        client: UpstreamClient,
        breaker: CircuitBreaker,
        backoff: Backoff,
        lock: SyncLock,
        cfg: SyncConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._client = client
        self._breaker = breaker
        self._backoff = backoff
        self._lock = lock
        self._cfg = cfg
        self._clock = clock
        self._monotonic = monotonic
        self._woken = False
        self._sleepers: set[asyncio.Future[None]] = set()
        self._round_lock = asyncio.Lock()
        self._waiting = 0  # callers waiting for the round lock: a run ends at its next batch
        self._beat: Callable[[], None] = _no_beat
        self._last_report: SyncReport | None = None
        self._last_round_at: float | None = None
        self._next_round_at: float | None = None
        self._holder: str | None = None
        #: deliveries by outcome since start, for `kktd_sync_deliveries_total{result}`
        self.deliveries: dict[str, int] = {outcome.value: 0 for outcome in Outcome}
        #: called with each FN round's report, for `kktd_sync_round_seconds`
        self.on_round: Callable[[SyncReport], None] | None = None
        #: the last delivery that failed or was rejected (wall-clock time)
        self.last_failure: DeliveryFailure | None = None
        # "the upstream rejects every FD": rejections are held until it accepts one again
        self._rejecting = Alert(monotonic=monotonic)

    def wake(self) -> None:
        """Something is due now (a new FD was journaled, a dead one retried): look again."""
        self._woken = True
        for sleeper in self._sleepers:
            _resolve(sleeper)

    def idle(self) -> AbstractAsyncContextManager[None]:
        """Held between rounds, for a clean shutdown.

        Entering waits for a round in progress and its in-flight deliveries to finish; no round
        starts while it is held, so the loop can be cancelled inside it.
        """
        return self._turn()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The round lock, asked for so that a run in progress ends after its current batches
        (a backlog drain does not hold up a shutdown or a manual sync)."""
        self._waiting += 1
        try:
            await self._round_lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._round_lock.release()

    def reconfigure(self, cfg: SyncConfig) -> None:
        """New settings (SIGHUP), used from the next round on."""
        self._cfg = cfg

    async def run(self, beat: Callable[[], None]) -> None:
        """The sync loop: rounds and the waits between them, until cancelled."""
        self._beat = beat
        while True:
            beat()
            if self._breaker.state is BreakerState.OPEN:
                await self._pause(self._breaker.retry_in(), interruptible=False)
                continue
            async with self._round_lock:
                tally, _ = await self._pass_in_own_task(manual=False)
            seconds, interruptible = self._next_pause(tally)
            await self._pause(seconds, interruptible=interruptible)

    async def sync_now(self) -> SyncReport:
        """A manual sync: one round now, after any round in progress, due or not."""
        if self._breaker.state is BreakerState.OPEN:
            return SyncReport(
                "circuit_open", 0, 0, 0, 0.0, retry_in_seconds=self._breaker.retry_in()
            )
        async with self._turn():
            tally, report = await self._pass_in_own_task(manual=True)
        if self._next_pause(tally)[0] == 0:
            self.wake()  # more is due: let the loop carry on draining
        return report

    def status(self) -> SyncStatus:
        """Breaker, backoff, last round, lock holder and fence, and when the next round is due."""
        next_at = self._next_round_at
        return SyncStatus(
            breaker_state=self._breaker.state,
            retry_in_seconds=self._breaker.retry_in(),
            backoff_delay=self._backoff.current_delay,
            backoff_failures=self._backoff.failures,
            last_report=self._last_report,
            last_round_at=self._last_round_at,
            lock_holder=self._holder,
            lock_fence=self._lock.last_fence,
            lock_problem=self._lock.problem,
            next_round_in_seconds=None
            if next_at is None
            else max(0.0, next_at - self._monotonic()),
        )

    # -- the loop's waits --

    def _next_pause(self, tally: _Tally) -> tuple[float, bool]:
        """(seconds, ended early by a wake?) before the next round."""
        if self._breaker.state is BreakerState.OPEN:
            return self._breaker.retry_in(), False
        if tally.failure:
            # A new FD may end the backoff wait early (SPEC section 3), unless the upstream
            # asked for the pause itself with Retry-After: then new FDs wait too.
            return self._backoff.current_delay, tally.retry_after is None
        if tally.full or (tally.refused and self._breaker.state is BreakerState.CLOSED):
            return 0.0, True  # a backlog, or a probe that just closed the breaker
        if not tally.delivered and self._backoff.failures > 0:
            # nothing was due yet: the failed round's FDs come due after its backoff delay
            return min(self._cfg.interval, self._backoff.current_delay), True
        return self._cfg.interval, True

    async def _pause(self, seconds: float, *, interruptible: bool) -> None:
        """Wait `seconds` in slices, beating; a wake ends an interruptible wait early."""
        deadline = self._monotonic() + seconds
        self._next_round_at = deadline
        try:
            while (left := deadline - self._monotonic()) > 0:
                self._beat()
                if interruptible and self._woken:
                    return
                await self._sleep(min(left, _BEAT_SLICE), interruptible=interruptible)
        finally:
            self._next_round_at = None

    async def _sleep(self, seconds: float, *, interruptible: bool) -> None:
        """A plain future and a timer, so that nothing in this task plays with cancellation.

        (`asyncio.timeout` cancels and uncancels the task; on Python 3.11 a stop request that
        lands in the same loop iteration as its expiry can be lost, and the loop never ends.)
        """
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, sleeper)
        if interruptible:
            self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)

    # -- rounds --

    async def _pass_in_own_task(self, *, manual: bool) -> tuple[_Tally, SyncReport]:
        """Run a pass in a task of its own.

        The lock cancels the task holding a lost lease, and Redis and HTTP timeouts cancel and
        uncancel the task they run in; a short-lived task keeps all of that away from the
        long-lived loop (or the API handler). Cancelling the caller cancels the pass, and should
        something in the pass swallow that cancellation, the caller still stops here.
        """
        result = await asyncio.create_task(self._pass(manual=manual), name="sync-pass")
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise asyncio.CancelledError
        return result

    async def _pass(self, *, manual: bool) -> tuple[_Tally, SyncReport]:
        """One run for every FN with pending FDs; the report sums them."""
        started = self._monotonic()
        self._woken = False  # from here on, a wake means "journaled after this pass looked"
        total = _Tally()
        status: ReportStatus = "completed"
        holder: str | None = None
        try:
            fns = await self._journal.pending_fns()
        except JournalError as exc:
            # the journal is unavailable (it logs that, and reopens itself): no round now
            log.debug("sync.journal_unavailable", error=str(exc))
            fns, status = [], "skipped"
        for fn in fns:
            last = _Tally()  # the rounds that an error ended, reported with the error
            outcome, fence, run_started = "", None, self._monotonic()
            try:
                fence = await self._drain(fn, total, last, manual=manual)
            except LockBusy as exc:
                outcome, status, holder = "busy", "busy", exc.holder
                self._holder = exc.holder
            except LockUnavailable:
                outcome = status = "skipped"
            except LeaseLost:
                outcome, status = "lease_lost", "skipped"  # the lock has logged lock.lost
            except JournalError as exc:
                # e.g. the disk is full: the outcomes are not written, so those FDs go again
                # later (the Idempotency-Key makes that a 409); wait an interval, do not spin
                outcome, status = "journal_failed", "skipped"
                total.full = total.refused = False
                # not a bug of ours, so no traceback: the error says what the disk said
                log.error("sync.journal_failed", fn=fn, error=str(exc))  # noqa: TRY400
            if total.superseded is not None:
                status = "busy"  # logged as sync.fence_superseded
            if outcome:
                total.add(last)
                duration = self._monotonic() - run_started
                self._report_round(fn, outcome, last, duration, fence=fence, holder=holder)
            stop = outcome in ("lease_lost", "journal_failed")
            if stop or self._breaker.state is BreakerState.OPEN:
                break
        report = SyncReport(
            status, total.synced, total.failed, total.dead, self._monotonic() - started, holder
        )
        self._last_report, self._last_round_at = report, self._clock()
        return total, report

    async def _drain(self, fn: str, total: _Tally, last: _Tally, *, manual: bool) -> int | None:
        """One FN under its lock: batch after batch through the sender pool while a full batch
        went cleanly (one batch for a manual sync); returns the fence it ran under.

        Each batch is a round of its own (SPEC section 3): its outcomes are recorded when its
        last delivery ends, while the next batch, claimed meanwhile, is in flight. Rounds that an
        error ends are recorded on the way out and added to `last`.
        """
        async with self._lock.hold(fn) as lease:
            self._holder = lease.instance
            # Batch after batch only under a lease that shuts others out: a fenced one, or the
            # in-process lock. Without Redis ("proceed") each round asks for the lock again.
            several = manual is False and (
                lease.fence is not None or isinstance(self._lock, LocalSyncLock)
            )
            run = _Run(lease, self._cfg, several=several)
            pool: SenderPool[_Tally] = SenderPool(
                self._client.max_in_flight,
                may_start=lambda batch: self._may_start(batch, run),
                send=lambda batch, entry: self._deliver(entry, batch, run),
            )
            outstanding: deque[Batch[_Tally]] = deque()
            run.pool = pool
            try:
                async with pool:
                    batch: Batch[_Tally] | None = await self._claim(fn, None, manual=manual)
                    if batch is not None:
                        outstanding.append(batch)
                        pool.add(batch)
                    while batch is not None:
                        nxt = None
                        if self._goes_on(batch, run):
                            nxt = await self._claim(fn, batch, manual=False)
                        if nxt is not None:
                            batch.tally.full = False  # the run goes on: this was no end
                            outstanding.append(nxt)
                            pool.add(nxt)
                        await batch.done.wait()
                        outstanding.remove(batch)
                        await self._finish(fn, batch, run, total)
                        batch = nxt
            finally:
                self._holder = None
                while outstanding:
                    batch = outstanding.popleft()
                    await self._settle(batch.tally, run)
                    last.add(batch.tally)
        return lease.fence

    async def _claim(
        self, fn: str, before: Batch[_Tally] | None, *, manual: bool
    ) -> Batch[_Tally] | None:
        """The batch after `before` (the first when None; an empty first batch is a round that
        found nothing due); None when nothing more is due."""
        now = None if manual else self._clock()
        after = None if before is None or not before.entries else before.entries[-1].fd
        entries = await self._journal.claim_due(
            self._cfg.batch_size, now, fn=fn, horizon=self._horizon(), after=after
        )
        if before is not None and not entries:
            return None
        tally = _Tally(full=len(entries) == self._cfg.batch_size)
        index = 0 if before is None else before.index + 1
        return Batch(index, entries, tally, self._monotonic())

    def _goes_on(self, batch: Batch[_Tally], run: _Run) -> bool:
        """Claim the batch after this one now? While full ones go cleanly, up to `RUN_BATCHES`
        (then the next pass: other FNs get their turn), and nobody waits for a quiet point, and
        no reload came since the run began."""
        return (
            run.several
            and batch.tally.full
            and not run.stopped
            and run.failed_at is None
            and batch.index + 1 < RUN_BATCHES
            and self._waiting == 0
            and self._cfg is run.cfg
        )

    def _may_start(self, batch: Batch[_Tally], run: _Run) -> bool:
        """Right before each FD: the run still on, the lease alive, the breaker's leave.

        (The client checks the lease again right before the request's first byte.) FDs of a
        batch after one with a failure are not sent: that round would not have started.
        """
        if run.stopped or (run.failed_at is not None and batch.index > run.failed_at):
            return False
        if not self._lock.lease_alive(run.lease):
            run.stopped = True
            return False
        if not self._breaker.try_acquire():
            batch.tally.refused = run.stopped = True
            return False
        return True

    async def _deliver(self, entry: JournalEntry, batch: Batch[_Tally], run: _Run) -> None:
        try:
            delivery = await self._client.deliver(
                entry, run.lease.fence, may_write=lambda: self._lock.lease_alive(run.lease)
            )
        except WriteRefused:
            self._breaker.release()  # nothing was sent; the lock has cancelled the round
            return
        except BaseException:
            self._breaker.release()  # no verdict (cancelled, or a bug): free a half-open probe
            raise
        self._beat()
        self.deliveries[delivery.outcome.value] += 1
        if delivery.outcome is Outcome.FENCE_SUPERSEDED:
            self._supersede(entry, delivery, run, batch.tally)
            return
        self._record(entry, delivery, batch.tally)
        if batch.tally.failure and (run.failed_at is None or batch.index < run.failed_at):
            run.failed_at = batch.index

    async def _finish(self, fn: str, batch: Batch[_Tally], run: _Run, total: _Tally) -> None:
        """A round's end: record its outcomes (one commit for the accepted FDs), report it."""
        if batch.index > 0 and batch.sent == 0:
            batch.tally.full = False  # dropped whole: no round ran
            await self._settle(batch.tally, run)
            total.add(batch.tally)
            return
        await self._settle(batch.tally, run)
        total.add(batch.tally)
        outcome = "completed" if run.superseded is None else "fence_superseded"
        if run.superseded is not None:
            total.superseded = run.superseded
        duration = self._monotonic() - batch.started_at
        self._report_round(fn, outcome, batch.tally, duration, fence=run.lease.fence, holder=None)

    def _report_round(
        self,
        fn: str,
        outcome: str,
        tally: _Tally,
        duration: float,
        *,
        fence: int | None,
        holder: str | None,
    ) -> None:
        self._log_round(fn, outcome, tally, duration=duration, fence=fence, holder=holder)
        if self.on_round is not None and outcome in _RAN:
            ran: ReportStatus = "completed" if outcome == "completed" else "skipped"
            self.on_round(SyncReport(ran, tally.synced, tally.failed, tally.dead, duration))

    def _supersede(self, entry: JournalEntry, delivery: Delivery, run: _Run, tally: _Tally) -> None:
        """A 412: another instance holds this FN now. End the run at once: the pool cancels the
        deliveries in flight and starts no more. Not the FD's fault and not the upstream's, so
        nothing is counted and the breaker is left alone (a half-open probe is freed)."""
        self._breaker.release()
        tally.full = False  # the FN is someone else's now: no draining at once
        run.stopped = True
        if run.superseded is not None:
            return  # the run is already ending; one line per run
        run.superseded = delivery
        if run.pool is not None:
            run.pool.cancel_others()
        log.warning(
            "sync.fence_superseded",
            fn=entry.fn,
            fd=entry.fd,
            fence=run.lease.fence,
            current_fence=delivery.current_fence,
            action="round ended; another instance syncs this FN now",
        )

    def _record(self, entry: JournalEntry, delivery: Delivery, tally: _Tally) -> None:
        """The breaker at once; the journal row at the end of the round (`_settle`)."""
        outcome = delivery.outcome
        if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            self._breaker.record_success()
            tally.delivered = True
            self._rejecting.end(fn=entry.fn, fd=entry.fd)
        elif outcome is Outcome.REJECTED and self._rejecting.active is None:
            self._breaker.record_success()  # the upstream at work, judging this FD
            tally.delivered = True
        else:
            # a rejected probe while the upstream rejects every FD proves it still does
            self._breaker.record_failure()
            tally.failure = True
        if outcome not in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            self.last_failure = DeliveryFailure(self._clock(), entry.fn, entry.fd, delivery)
        if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            # written with the round's other outcomes in one commit (_settle): a crash before it
            # only re-sends, and the Idempotency-Key turns that into a 409
            tally.accepted.append((entry.fn, entry.fd))
            tally.synced += 1
        elif outcome is Outcome.REJECTED:
            tally.rejected.append((entry, delivery))
        elif outcome is Outcome.TRANSIENT:
            tally.transient.append((entry, delivery))
            if delivery.retry_after is not None:
                tally.retry_after = max(tally.retry_after or 0.0, delivery.retry_after)
        else:
            # forbidden, misrouted or unreachable: the FD is not at fault; its row stays as is
            tally.failed += 1

    async def _settle(self, tally: _Tally, run: _Run) -> None:
        """End of a round: record the accepted FDs, judge the rejections, grow or reset the
        backoff, then record the transient failures (counted only beside an accepted FD).

        The backoff moves once per run: a round that ends after a failed one of the same run
        (its FDs were in flight already) neither grows it again nor resets it.
        """
        accepted, tally.accepted = tally.accepted, []
        await self._journal.mark_synced_many(accepted, self._clock())
        rejected, tally.rejected = tally.rejected, []
        if rejected and not accepted and self._upstream_rejects_all(rejected):
            await self._hold(rejected, tally)
        else:
            for entry, delivery in rejected:
                await self._journal.mark_dead(entry.fn, entry.fd, delivery.reason)
                tally.dead += 1
                log.warning("sync.dead", fn=entry.fn, fd=entry.fd, reason=delivery.reason)
        if tally.failure and run.backed_off:
            delay = self._backoff.current_delay
        elif tally.failure:
            delay = self._backoff.record_failure(tally.retry_after)
            run.backed_off = True
        else:
            if tally.delivered and not run.backed_off:
                self._backoff.record_success()
            delay = 0.0
        transient, tally.transient = tally.transient, []
        next_attempt_at = self._clock() + delay
        for entry, delivery in transient:
            if not accepted:
                # nothing in this round shows the upstream at work: the failure says nothing
                # about this FD (an outage, a gateway's 503, a lone probe)
                await self._journal.defer(entry.fn, entry.fd, next_attempt_at, delivery.reason)
                tally.failed += 1
                continue
            went_dead = await self._journal.mark_failed(
                entry.fn, entry.fd, delivery.reason, next_attempt_at, self._cfg.max_attempts
            )
            if went_dead:
                tally.dead += 1
                log.warning(
                    "sync.dead", fn=entry.fn, fd=entry.fd, reason=delivery.reason, attempts="max"
                )
            else:
                tally.failed += 1

    def _upstream_rejects_all(self, rejected: list[tuple[JournalEntry, Delivery]]) -> bool:
        """In a round that accepted nothing: does it show the upstream rejecting every FD?

        Yes while it is known to (a rejected probe proves nothing new), or when the round saw
        `ALL_REJECTED_MIN` rejections (SPEC says "every claimed FD": FDs that failed otherwise
        beside them make the upstream no more trustworthy, so they do not save the rejections).
        """
        return self._rejecting.active is not None or len(rejected) >= ALL_REJECTED_MIN

    async def _hold(self, rejected: list[tuple[JournalEntry, Delivery]], tally: _Tally) -> None:
        """Keep FDs the upstream rejects wholesale pending, and open the breaker.

        Held as far ahead as any schedule goes, so that the probes meanwhile try other FDs:
        the next probe then tells a collector that rejects everything from FDs that are bad.
        """
        entry, delivery = rejected[0]
        reason = f"the upstream rejects every FD: {delivery.reason}"
        self._rejecting.start(
            "sync.all_rejected", ("rejected",), fn=entry.fn, fds=len(rejected), reason=reason
        )
        self.last_failure = DeliveryFailure(
            self._clock(), entry.fn, entry.fd, replace(delivery, reason=reason)
        )
        until = self._clock() + self._horizon()
        for held, answer in rejected:
            await self._journal.defer(held.fn, held.fd, until, answer.reason)
        tally.failed += len(rejected)
        tally.failure = True
        self._breaker.trip()

    def _horizon(self) -> float:
        """How far ahead kktd ever schedules an attempt: the backoff's cap, or Retry-After's."""
        return max(self._backoff.max_delay, RETRY_AFTER_CAP)

    def _log_round(
        self,
        fn: str,
        outcome: str,
        tally: _Tally,
        *,
        duration: float,
        fence: int | None,
        holder: str | None,
    ) -> None:
        """One `sync.round` line per FN round; an idle one (nothing to do) only at debug."""
        idle = outcome == "completed" and tally.synced + tally.failed + tally.dead == 0
        (log.debug if idle else log.info)(
            "sync.round",
            fn=fn,
            status=outcome,
            synced=tally.synced,
            failed=tally.failed,
            dead=tally.dead,
            duration=round(duration, 3),
            fence=fence,
            holder=holder,
            breaker=str(self._breaker.state),
            backoff=round(self._backoff.current_delay, 3),
        )


def _resolve(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


def _no_beat() -> None:
    """Outside `run` (a manual sync before the loop starts) nobody watches the beat."""
