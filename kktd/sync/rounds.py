"""A round's outcomes (SPEC section 3): what each delivery tells the breaker at once, and what
the round writes to the journal when its last delivery has ended.

Only evidence about an FD counts against it: a transient failure is counted in a round where the
upstream accepted another FD, never otherwise (so never in a half-open probe); a round that
rejected five or more FDs and accepted none holds them pending and opens the breaker, and until an
FD is accepted again a rejected probe is held too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from kktd.config import SyncConfig
from kktd.journal import Journal, Outgoing
from kktd.sync.alerts import Alert
from kktd.sync.backoff import RETRY_AFTER_CAP, Backoff
from kktd.sync.breaker import CircuitBreaker
from kktd.sync.client import Delivery, Outcome
from kktd.sync.lock import Lease
from kktd.sync.pool import Batch, SenderPool

log = structlog.get_logger(__name__)

ALL_REJECTED_MIN = 5  # a round rejecting this many FDs and accepting none indicts the upstream
RUN_BATCHES = 20  # batches per FN per pass at most: then the next FN, and a quiet point
# batches claimed beyond the oldest one in flight: enough queued that the senders keep going
# while a round's outcomes are committed (a commit waits for the disk, as long as a batch takes)
LOOKAHEAD = 2


@dataclass(frozen=True)
class DeliveryFailure:
    """The last delivery that did not end synced, for the operator's status."""

    at: float
    fn: str
    fd: int
    delivery: Delivery


@dataclass
class Tally:
    """One pass's counts, and what decides the pause after it."""

    synced: int = 0
    failed: int = 0
    dead: int = 0
    full: bool = False  # a batch came back full: more is due
    refused: bool = False  # the breaker stopped the sending
    failure: bool = False  # a delivery failed: the backoff grows
    delivered: bool = False  # the upstream answered something
    retry_after: float | None = None
    transient: list[tuple[Outgoing, Delivery]] = field(default_factory=list)
    rejected: list[tuple[Outgoing, Delivery]] = field(default_factory=list)
    accepted: list[tuple[str, int]] = field(default_factory=list)
    superseded: Delivery | None = None  # a 412: another instance holds the FN now

    def add(self, other: Tally) -> None:
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
class Run:
    """One FN's batches under one lease."""

    lease: Lease
    cfg: SyncConfig  # a reload (a new object) ends the run after the batch in flight
    several: bool  # may claim more than one batch
    stopped: bool = False  # lease gone, breaker refused, or superseded: start nothing more
    failed_at: int | None = None  # the first batch with a failure: no later batch is sent
    backed_off: bool = False  # the backoff has grown for this run
    superseded: Delivery | None = None
    pool: SenderPool[Tally] | None = None

    def goes_on(self, batch: Batch[Tally], *, quiet_wanted: bool, cfg: SyncConfig) -> bool:
        """Claim the batch after this one now? While full ones go cleanly, up to `RUN_BATCHES`
        (then the next pass: other FNs get their turn), nobody waits for a quiet point (a
        shutdown, a manual sync) and no reload came since the run began."""
        return (
            self.several
            and batch.tally.full
            and not self.stopped
            and self.failed_at is None
            and batch.index + 1 < RUN_BATCHES
            and not quiet_wanted
            and cfg is self.cfg
        )


class Rounds:
    """Records deliveries as they end and settles each round; keeps the last failure."""

    def __init__(
        self,
        journal: Journal,
        breaker: CircuitBreaker,
        backoff: Backoff,
        *,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._journal = journal
        self._breaker = breaker
        self._backoff = backoff
        self._wall = wall
        #: the last delivery that failed or was rejected (wall-clock time)
        self.last_failure: DeliveryFailure | None = None
        # "the upstream rejects every FD": rejections are held until it accepts one again
        self._rejecting = Alert(monotonic=monotonic)

    def record(self, entry: Outgoing, delivery: Delivery, tally: Tally) -> None:
        """The breaker at once; the journal row at the end of the round (`settle`)."""
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
            self.last_failure = DeliveryFailure(self._wall(), entry.fn, entry.fd, delivery)
        if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            # written with the round's other outcomes in one commit (settle): a crash before it
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

    async def settle(self, tally: Tally, run: Run, max_attempts: int) -> None:
        """End of a round: record the accepted FDs, judge the rejections, grow or reset the
        backoff, then record the transient failures (counted only beside an accepted FD).

        The backoff moves once per run: a round that ends after a failed one of the same run
        (its FDs were in flight already) neither grows it again nor resets it.
        """
        await self.settle_many([tally], run, max_attempts)

    async def settle_many(self, tallies: Sequence[Tally], run: Run, max_attempts: int) -> None:
        """`settle` for rounds that ended together, in order: the accepted FDs of all of them in
        one commit. (A commit waits for the disk, about 15 ms here; one per round would cap a
        drain at a batch per commit, below what the upstream takes.)"""
        accepted = [tally.accepted for tally in tallies]
        for tally in tallies:
            tally.accepted = []
        keys = [key for keys in accepted for key in keys]
        await self._journal.mark_synced_many(keys, self._wall())
        for tally, its_accepted in zip(tallies, accepted, strict=True):
            await self._settle_rest(tally, its_accepted, run, max_attempts)

    async def _settle_rest(
        self, tally: Tally, accepted: list[tuple[str, int]], run: Run, max_attempts: int
    ) -> None:
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
        next_attempt_at = self._wall() + delay
        for entry, delivery in transient:
            if not accepted:
                # nothing in this round shows the upstream at work: the failure says nothing
                # about this FD (an outage, a gateway's 503, a lone probe)
                await self._journal.defer(entry.fn, entry.fd, next_attempt_at, delivery.reason)
                tally.failed += 1
                continue
            went_dead = await self._journal.mark_failed(
                entry.fn, entry.fd, delivery.reason, next_attempt_at, max_attempts
            )
            if went_dead:
                tally.dead += 1
                log.warning(
                    "sync.dead", fn=entry.fn, fd=entry.fd, reason=delivery.reason, attempts="max"
                )
            else:
                tally.failed += 1

    def _upstream_rejects_all(self, rejected: list[tuple[Outgoing, Delivery]]) -> bool:
        """In a round that accepted nothing: does it show the upstream rejecting every FD?

        Yes while it is known to (a rejected probe proves nothing new), or when the round saw
        `ALL_REJECTED_MIN` rejections (SPEC says "every claimed FD": FDs that failed otherwise
        beside them make the upstream no more trustworthy, so they do not save the rejections).
        """
        return self._rejecting.active is not None or len(rejected) >= ALL_REJECTED_MIN

    async def _hold(self, rejected: list[tuple[Outgoing, Delivery]], tally: Tally) -> None:
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
            self._wall(), entry.fn, entry.fd, replace(delivery, reason=reason)
        )
        until = self._wall() + self.horizon()
        for held, answer in rejected:
            await self._journal.defer(held.fn, held.fd, until, answer.reason)
        tally.failed += len(rejected)
        tally.failure = True
        self._breaker.trip()

    def horizon(self) -> float:
        """How far ahead kktd ever schedules an attempt: the backoff's cap, or Retry-After's."""
        return max(self._backoff.max_delay, RETRY_AFTER_CAP)

    def log(
        self,
        fn: str,
        outcome: str,
        tally: Tally,
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

    def supersede(self, entry: Outgoing, delivery: Delivery, run: Run, tally: Tally) -> None:
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
