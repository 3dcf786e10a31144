"""What the daemon tells an operator about itself: the /v1/status snapshot and the STATUS= line.

`Readings` gathers the live state of the components once (the journal counts are the only
awaited part), so the snapshot, the STATUS= line, the metrics and the fleet heartbeat all show
the same numbers from the same moment. A journal that cannot be read leaves the counts out
(None) and says why: the status, the health and the metrics keep answering whatever it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from kktd import __version__
from kktd.config import redact_url
from kktd.contract import BREAKER_WORDS
from kktd.control.fn_health import FnHealth, assess
from kktd.journal import JournalCounts, JournalError, RecoveryRecord
from kktd.journal.skips import list_skips, skipped_count
from kktd.kkt.link import LinkState
from kktd.kkt.poller import PollerStatus
from kktd.sync.engine import SyncStatus
from kktd.sync.redis_trouble import LockProblem

if TYPE_CHECKING:
    from kktd.control.runtime import Runtime
    from kktd.lifecycle.components import Components

SKIPS_SHOWN = 5  # the newest skips in /v1/status; the journal keeps them all


@dataclass(frozen=True, slots=True)
class Readings:
    """One consistent look at every component; `now` is the wall clock of that look."""

    now: float
    counts: JournalCounts | None  # None while the journal cannot be read
    link: LinkState
    kkt: PollerStatus
    sync: SyncStatus
    fn: FnHealth
    skipped: int | None = None  # FDs the operator skipped (`kktd skip`), ever, in this journal

    @property
    def oldest_pending_age(self) -> float | None:
        oldest = None if self.counts is None else self.counts.oldest_pending_journaled_at
        return None if oldest is None else max(0.0, self.now - oldest)


async def read(
    components: Components,
    *,
    wall: Callable[[], float] = time.time,
    local_now: Callable[[], datetime] = datetime.now,
) -> Readings:
    """Look at every component now (`local_now` is the wall clock the KKT's dates are in)."""
    counts: JournalCounts | None = None
    skipped: int | None = None
    try:
        counts = await components.journal.counts()
        skipped = await skipped_count(components.journal)
    except JournalError:
        pass  # the journal is unavailable or busy: `journal_problem` says which
    kkt = components.poller.status()
    ofd = kkt.ofd
    fn = assess(
        None if ofd is None else ofd.unsent_count,
        None if ofd is None else ofd.first_unsent_at,
        kkt.warning_flags,
        local_now(),
    )
    sync = components.engine.status()
    return Readings(wall(), counts, components.link.state, kkt, sync, fn, skipped)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _kkt(components: Components, r: Readings) -> dict[str, Any]:
    device = r.link.device
    return {
        "port": components.link.port,
        "connected": r.link.connected,
        "since": r.link.since,
        "model": None if device is None else device.name,
        "last_error": r.link.last_error,
        "read_error": r.kkt.last_error if r.link.connected else None,
        "stuck_at_fd": stuck_fd(r),
        "reconnect_in_seconds": _round(r.link.reconnect_in),
        "fn": r.kkt.fn,
        "last_fd": r.kkt.last_fd,
        "cursor": r.kkt.cursor,
        "journal_blocked": r.kkt.journal_blocked,
        "stuck": None if r.kkt.stuck is None else asdict(r.kkt.stuck),
    }


def stuck_fd(r: Readings) -> int | None:
    """The FD the poller cannot get past, when the KKT answers but reading it keeps failing."""
    kkt = r.kkt
    if not r.link.connected or not kkt.last_error or kkt.cursor is None or kkt.last_fd is None:
        return None
    if kkt.stuck is not None and kkt.stuck.fn == kkt.fn:
        return kkt.stuck.fd  # the poller knows which FD failed: the one `kktd skip` accepts
    return kkt.cursor + 1 if kkt.cursor < kkt.last_fd else None


def _fn(r: Readings) -> dict[str, Any]:
    health = r.fn
    at = health.oldest_unsent_at
    return {
        "level": health.level,
        "unsent": health.unsent,
        "oldest_unsent_at": None if at is None else at.isoformat(),
        "backlog_age_seconds": _round(health.backlog_age_seconds),
        "days_left": _round(health.days_left, 1),
        "warning_flags": health.warning_flags,
        "warnings": list(health.warnings),
        "message": health.message,
        "read_at": r.kkt.ofd_read_at,
    }


def _sync(components: Components, r: Readings) -> dict[str, Any]:
    sync = r.sync
    report = sync.last_report
    failure = components.engine.last_failure
    return {
        "upstream": redact_url(components.config.upstream.url),
        "breaker": str(sync.breaker_state),
        "retry_in_seconds": _round(sync.retry_in_seconds),
        "backoff_delay_seconds": _round(sync.backoff_delay),
        "backoff_failures": sync.backoff_failures,
        "lock": {
            "holder": sync.lock_holder or components.lock.holder_seen,
            "fence": sync.lock_fence,
            "held": components.lock.holder_seen == components.instance,
            "problem": _lock_problem(sync.lock_problem),
        },
        "last_round": None
        if report is None
        else {
            "at": sync.last_round_at,
            "status": report.status,
            "synced": report.synced,
            "failed": report.failed,
            "dead": report.dead,
            "duration_seconds": round(report.duration_seconds, 3),
        },
        "next_round_in_seconds": _round(sync.next_round_in_seconds),
        "deliveries": dict(components.engine.deliveries),
        "last_failure": None
        if failure is None
        else {
            "at": failure.at,
            "outcome": str(failure.delivery.outcome),
            "status": failure.delivery.status,
            "reason": failure.delivery.reason,
        },
    }


def _lock_problem(problem: LockProblem | None) -> dict[str, Any] | None:
    if problem is None:
        return None
    return {
        "kind": problem.kind,
        "error": problem.error,
        "next_step": problem.next_step,
        "since": problem.since,
        "skipped_rounds": problem.skipped_rounds,
    }


async def snapshot(runtime: Runtime) -> dict[str, Any]:
    """Everything /v1/status shows (SPEC section 6), as JSON-ready values."""
    components = runtime.components
    r = await read(components)
    reload = runtime.last_reload
    return {
        "version": __version__,
        "instance": runtime.instance,
        "now": r.now,
        "started_at": runtime.started_at,
        "uptime_seconds": round(r.now - runtime.started_at, 3),
        "kkt": _kkt(components, r),
        "fn": _fn(r),
        "journal": _journal(runtime, r, await _recent_skips(components)),
        "sync": _sync(components, r),
        "ofd_relay": None if components.relay is None else components.relay.status().to_dict(),
        "config": {
            "file": str(runtime.config_path),
            "reload": None
            if reload is None
            else {"ok": reload.ok, "at": reload.at, "error": reload.error},
            "reloads": dict(runtime.reloads),
        },
    }


async def _recent_skips(components: Components) -> list[dict[str, Any]] | None:
    """The newest skips for /v1/status; None while the journal cannot be read."""
    try:
        return [s.to_dict() for s in await list_skips(components.journal, SKIPS_SHOWN)]
    except JournalError:
        return None


def _journal(runtime: Runtime, r: Readings, skips: list[dict[str, Any]] | None) -> dict[str, Any]:
    components = runtime.components
    counts = r.counts
    recovery = shown_recovery(components, r.now)
    return {
        "path": str(runtime.config.journal.path),
        "state": journal_state(components),
        "error": journal_problem(components),
        "pending": None if counts is None else counts.pending,
        "synced": None if counts is None else counts.synced,
        "dead": None if counts is None else counts.dead,
        "oldest_pending_age_seconds": _round(r.oldest_pending_age),
        "journaled_total": r.kkt.journaled,
        "recovered_from": None if recovery is None else recovery.moved_to,
        "recovery": None
        if recovery is None
        else {"at": recovery.at, "moved_to": recovery.moved_to, "reason": recovery.reason},
        "skipped": r.skipped,
        "skips": skips,
    }


def shown_recovery(components: Components, now: float) -> RecoveryRecord | None:
    """The journal's last recovery while the operator should still see it (SPEC section 2)."""
    recovery = components.journal.recovery
    return recovery if recovery is not None and recovery.shown(now) else None


JournalState = Literal["ok", "full", "damaged", "io", "busy", "unavailable"]
JOURNAL_STATES: tuple[JournalState, ...] = ("ok", "full", "damaged", "io", "busy", "unavailable")


def journal_state(components: Components) -> JournalState:
    """One word for the journal, for the status and ``kktd_journal_state``."""
    journal = components.journal
    failure = journal.unavailable() or journal.write_failure
    if failure is None:
        return "ok"
    kind = failure.kind
    return kind if kind in ("full", "damaged", "io", "busy") else "unavailable"


def journal_problem(components: Components) -> str | None:
    """What is wrong with the journal, in an operator's words; None while it works."""
    unavailable = components.journal.unavailable()
    if unavailable is not None:
        return str(unavailable)  # "journal unavailable: disk full (/var/lib/kktd/kktd.db, …)"
    blocked = components.poller.status().journal_blocked
    return None if blocked is None else f"journal writes failing: {blocked}"


def health(runtime: Runtime) -> dict[str, Any]:
    """GET /v1/health: "ok" or "degraded" while the process is sound; the parts say which one is
    not, and why, in a few words."""
    components = runtime.components
    breaker = str(components.engine.status().breaker_state)
    parts = {
        "journal": _journal_health(components),
        "kkt": "ok" if components.link.connected else "offline",
        "upstream": "ok" if breaker == "closed" else breaker,
        "lock": "ok"
        if (problem := components.lock.problem) is None
        else f"refused: {problem.kind}",
        "supervisor": _supervisor_health(runtime),
    }
    status = "ok" if all(v == "ok" for v in parts.values()) else "degraded"
    return {"status": status, "components": parts}


def _journal_health(components: Components) -> str:
    if (unavailable := components.journal.unavailable()) is not None:
        return f"error: {unavailable}"
    blocked = components.poller.status().journal_blocked
    return "ok" if blocked is None else f"blocked: {blocked}"


def _supervisor_health(runtime: Runtime) -> str:
    supervisor = runtime.supervisor
    loops = supervisor.crash_loops()
    stale = [name for name in supervisor.stale() if name not in loops]
    words = [f"crash loop: {name} ({why})" for name, why in sorted(loops.items())]
    if stale:
        words.append("stale: " + ", ".join(stale))
    return "; ".join(words) or "ok"


async def heartbeat(components: Components) -> dict[str, Any]:
    """The fleet's view of one instance (SPEC section 6): the facts `kktd fleet` lists."""
    r = await read(components)
    return {
        "instance": components.instance,
        "version": __version__,
        "at": r.now,
        "fn": r.kkt.fn,
        "kkt_connected": r.link.connected,
        "model": r.link.device.name if r.link.device is not None else None,
        "last_fd": r.kkt.last_fd,
        "pending": None if r.counts is None else r.counts.pending,
        "dead": None if r.counts is None else r.counts.dead,
        "oldest_pending_age_seconds": _round(r.oldest_pending_age),
        "breaker": str(r.sync.breaker_state),
        "fn_level": r.fn.level,
        "fn_unsent": r.fn.unsent,
        "fn_backlog_age_seconds": _round(r.fn.backlog_age_seconds),
    }


async def status_line(runtime: Runtime, readings: Readings | None = None) -> str:
    """One short line for systemd's STATUS=, changing only when something an operator cares
    about changes: no ages or clocks in it, or it would change every second.

    `readings`: the look to describe, when the caller has taken one already (`read`)."""
    components = runtime.components
    r = await read(components) if readings is None else readings
    return render_line(
        r,
        instance=runtime.instance,
        reload_failed=_failed_reload(runtime),
        recovered=shown_recovery(components, r.now) is not None,
        journal=None if components.journal.unavailable() is None else journal_problem(components),
        crash_loops=sorted(runtime.supervisor.crash_loops()),
    )


def _failed_reload(runtime: Runtime) -> str | None:
    """None when the last reload (if any) worked; else what to show: the key at fault."""
    result = runtime.last_reload
    if result is None or result.ok:
        return None
    return result.key or "see log"


def render_line(
    r: Readings,
    *,
    instance: str,
    reload_failed: str | None,
    recovered: bool,
    journal: str | None = None,
    crash_loops: Sequence[str] = (),
) -> str:
    """`journal`: why the journal is unavailable, said in place of the counts."""
    model = r.link.device.name if r.link.connected and r.link.device is not None else None
    parts = [f"KKT online ({model})" if model else "KKT offline"]
    if journal is not None or r.counts is None:
        parts.append(journal or "journal unreadable")
    else:
        parts += [f"pending {r.counts.pending}", f"dead {r.counts.dead}"]
    words = BREAKER_WORDS.get(str(r.sync.breaker_state))
    parts.append(f"upstream {'unknown' if words is None else words[0]}")
    if r.sync.lock_holder and r.sync.lock_holder != instance:
        parts.append(f"lock held by {r.sync.lock_holder}")
    if r.sync.lock_problem is not None:
        parts.append(f"Redis REFUSES the sync lock ({r.sync.lock_problem.kind}): not syncing")
    if r.fn.level != "ok" and r.fn.days_left is not None:
        parts.append(f"FN backlog {r.fn.level}: {r.fn.days_left:.0f} days left")
    elif r.fn.level != "ok":
        parts.append(f"FN {r.fn.level}: {', '.join(r.fn.warnings)}")
    if (stuck := stuck_fd(r)) is not None:
        parts.append(f"KKT reads failing at FD {stuck}")
    if r.kkt.journal_blocked and journal is None:
        parts.append("journal writes failing, KKT reads paused")
    if crash_loops:
        parts.append(f"crash loop: {', '.join(crash_loops)}")
    if reload_failed is not None:
        parts.append(f"config reload FAILED ({reload_failed}), old config running")
    if recovered:
        parts.append("journal was damaged and replaced: see kktd status")
    return ", ".join(parts)
