"""The sync loop (SPEC section 3 "A round"), and the manual sync of section 6.

Per FN with pending FDs: take the lock -> claim up to `sync.batch_size` due FDs, lowest first ->
send them through the sender pool (`upstream.max_in_flight` at once, each FD only with the
breaker's leave and a live lease) -> record the round's outcomes (`rounds`). While a full batch
goes cleanly, the next one is claimed and queued before this one ends, so the senders never
wait for a round's tail. An FD due further ahead than any schedule kktd makes is due now (the
wall clock was stepped back); a manual sync (one batch) ignores due times.

After a run: one that ended on a full, clean batch goes again at once; an open breaker sleeps
until its probe time; a failed round waits the backoff delay; otherwise the loop idles
`sync.interval`. A `wake()` (a new FD, a retried one) ends the wait early, except a wait the
upstream asked for with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import structlog

from kktd.config import SyncConfig
from kktd.journal import Journal, JournalError, Outgoing
from kktd.lifecycle.supervisor import Wake, sleep_beating
from kktd.sync.backoff import Backoff
from kktd.sync.breaker import BreakerState, CircuitBreaker
from kktd.sync.client import Outcome, UpstreamClient, WriteRefused
from kktd.sync.lock import LeaseLost, LockBusy, LockUnavailable, SyncLock
from kktd.sync.pool import Batch, SenderPool
from kktd.sync.redis_trouble import LockProblem
from kktd.sync.rounds import LOOKAHEAD, DeliveryFailure, Rounds, Run, Tally

log = structlog.get_logger(__name__)

ReportStatus = Literal["completed", "busy", "circuit_open", "skipped"]
_RAN = ("completed", "lease_lost", "fence_superseded")  # FN rounds that sent (or could have)
_BEAT_SLICE = 1.0  # seconds: idle waits are sliced so the loop beats at least this often


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
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._client = client
        self._breaker = breaker
        self._backoff = backoff
        self._lock = lock
        self._cfg = cfg
        self._wall = wall
        self._monotonic = monotonic
        self._wake = Wake()
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
        self._rounds = Rounds(journal, breaker, backoff, wall=wall, monotonic=monotonic)

    @property
    def last_failure(self) -> DeliveryFailure | None:
        """The last delivery that failed or was rejected (wall-clock time)."""
        return self._rounds.last_failure

    def wake(self) -> None:
        """Something is due now (a new FD was journaled, a dead one retried): look again."""
        self._wake.set()

    def idle(self) -> AbstractAsyncContextManager[None]:
        """Held between rounds, for a clean shutdown.

        Entering waits for the batches in flight to finish and be recorded (a drain in progress
        claims no more once someone waits); no round starts while it is held, so the loop can
        be cancelled inside it.
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

    def _next_pause(self, tally: Tally) -> tuple[float, bool]:
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
        self._next_round_at = self._monotonic() + seconds
        try:
            await sleep_beating(
                seconds,
                self._beat,
                wake=self._wake if interruptible else None,
                monotonic=self._monotonic,
                slice_seconds=_BEAT_SLICE,
            )
        finally:
            self._next_round_at = None

    # -- rounds --

    async def _pass_in_own_task(self, *, manual: bool) -> tuple[Tally, SyncReport]:
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

    async def _pass(self, *, manual: bool) -> tuple[Tally, SyncReport]:
        """One run for every FN with pending FDs; the report sums them."""
        started = self._monotonic()
        self._wake.clear()  # from here on, a wake means "journaled after this pass looked"
        total = Tally()
        status: ReportStatus = "completed"
        holder: str | None = None
        try:
            fns = await self._journal.pending_fns()
        except JournalError as exc:
            # the journal is unavailable (it logs that, and reopens itself): no round now
            log.debug("sync.journal_unavailable", error=str(exc))
            fns, status = [], "skipped"
        for fn in fns:
            last = Tally()  # the rounds that an error ended, reported with the error
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
                self._report_round(fn, outcome, last, duration, fence, holder)
            stop = outcome in ("lease_lost", "journal_failed")
            if stop or self._breaker.state is BreakerState.OPEN:
                break
        report = SyncReport(
            status, total.synced, total.failed, total.dead, self._monotonic() - started, holder
        )
        self._last_report, self._last_round_at = report, self._wall()
        return total, report

    async def _drain(self, fn: str, total: Tally, last: Tally, *, manual: bool) -> int | None:
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
            several = manual is False and self._lock.shuts_others_out(lease)
            run = Run(lease, self._cfg, several=several)
            run.pool = pool = SenderPool[Tally](
                self._client.max_in_flight,
                may_start=lambda batch: self._may_start(batch, run),
                send=lambda batch, entry: self._deliver(entry, batch, run),
            )
            outstanding: deque[Batch[Tally]] = deque()
            try:
                async with pool:
                    first = await self._claim(fn, None, manual=manual)
                    if first is not None:
                        outstanding.append(first)
                        pool.add(first)
                    claiming = first is not None
                    while outstanding:
                        # Claim ahead first, then record: the senders must not run dry while
                        # a round's outcomes wait for the disk.
                        while claiming and len(outstanding) <= LOOKAHEAD:
                            claiming = await self._claim_next(fn, outstanding, pool, run)
                        await outstanding[0].done.wait()
                        ended = [outstanding.popleft()]
                        while outstanding and outstanding[0].done.is_set():
                            ended.append(outstanding.popleft())
                        await self._finish(fn, ended, run, total)
            finally:
                self._holder = None
                while outstanding:
                    batch = outstanding.popleft()
                    await self._rounds.settle(batch.tally, run, self._cfg.max_attempts)
                    last.add(batch.tally)
        return lease.fence

    async def _claim_next(
        self, fn: str, outstanding: deque[Batch[Tally]], pool: SenderPool[Tally], run: Run
    ) -> bool:
        """Queue the batch after the newest one, if the run goes on; False when it does not."""
        newest = outstanding[-1]
        if pool.broken or not run.goes_on(newest, quiet_wanted=self._waiting > 0, cfg=self._cfg):
            return False
        nxt = await self._claim(fn, newest, manual=False)
        if nxt is None:
            return False
        newest.tally.full = False  # the run goes on: this was no end
        outstanding.append(nxt)
        pool.add(nxt)
        return True

    async def _claim(
        self, fn: str, before: Batch[Tally] | None, *, manual: bool
    ) -> Batch[Tally] | None:
        """The batch after `before`, None if nothing more is due (the first, even empty)."""
        now = None if manual else self._wall()
        after = None if before is None or not before.entries else before.entries[-1].fd
        entries = await self._journal.claim_due(
            self._cfg.batch_size, now, fn=fn, horizon=self._rounds.horizon(), after=after
        )
        if before is not None and not entries:
            return None
        tally = Tally(full=len(entries) == self._cfg.batch_size)
        index = 0 if before is None else before.index + 1
        return Batch(index, entries, tally, self._monotonic())

    def _may_start(self, batch: Batch[Tally], run: Run) -> bool:
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

    async def _deliver(self, entry: Outgoing, batch: Batch[Tally], run: Run) -> None:
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
            self._rounds.supersede(entry, delivery, run, batch.tally)
            return
        self._rounds.record(entry, delivery, batch.tally)
        if batch.tally.failure and (run.failed_at is None or batch.index < run.failed_at):
            run.failed_at = batch.index

    async def _finish(self, fn: str, ended: list[Batch[Tally]], run: Run, total: Tally) -> None:
        """Rounds that have ended, in order: record their outcomes (one commit for the accepted
        FDs of all of them), report each."""
        dropped = [batch.index > 0 and batch.sent == 0 for batch in ended]  # none of it ran
        for batch, none_ran in zip(ended, dropped, strict=True):
            batch.tally.full = batch.tally.full and not none_ran
        await self._rounds.settle_many([b.tally for b in ended], run, self._cfg.max_attempts)
        for batch, none_ran in zip(ended, dropped, strict=True):
            total.add(batch.tally)
            if none_ran:
                continue
            total.superseded = total.superseded or run.superseded
            outcome = "completed" if run.superseded is None else "fence_superseded"
            duration = self._monotonic() - batch.started_at
            self._report_round(fn, outcome, batch.tally, duration, run.lease.fence, None)

    def _report_round(  # noqa: PLR0917 - the round's facts, in the order they are logged
        self,
        fn: str,
        outcome: str,
        tally: Tally,
        duration: float,
        fence: int | None,
        holder: str | None,
    ) -> None:
        self._rounds.log(fn, outcome, tally, duration=duration, fence=fence, holder=holder)
        if self.on_round is not None and outcome in _RAN:
            ran: ReportStatus = "completed" if outcome == "completed" else "skipped"
            self.on_round(SyncReport(ran, tally.synced, tally.failed, tally.dead, duration))


def _no_beat() -> None:
    """Outside `run` (a manual sync before the loop starts) nobody watches the beat."""
