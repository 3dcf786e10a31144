"""What the daemon tells an operator about itself: the /v1/status snapshot and the STATUS= line.

`Readings` gathers the live state of the components once (the journal counts are the only
awaited part), so the snapshot, the STATUS= line, the metrics and the fleet heartbeat all show
the same numbers from the same moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kktd import __version__
from kktd.config import redact_url
from kktd.fn_health import FnHealth, assess
from kktd.journal import JournalCounts
from kktd.kkt.link import LinkState
from kktd.kkt.poller import PollerStatus
from kktd.sync.engine import SyncStatus

if TYPE_CHECKING:
    from kktd.components import Components
    from kktd.daemon import Daemon

_UPSTREAM_WORDS = {"closed": "ok", "open": "circuit open", "half_open": "probing"}


@dataclass(frozen=True, slots=True)
class Readings:
    """One consistent look at every component; `now` is the wall clock of that look."""

    now: float
    counts: JournalCounts
    link: LinkState
    kkt: PollerStatus
    sync: SyncStatus
    fn: FnHealth

    @property
    def oldest_pending_age(self) -> float | None:
        oldest = self.counts.oldest_pending_journaled_at
        return None if oldest is None else max(0.0, self.now - oldest)


async def read(
    components: Components,
    *,
    clock: Callable[[], float] = time.time,
    local_now: Callable[[], datetime] = datetime.now,
) -> Readings:
    """Look at every component now (`local_now` is the wall clock the KKT's dates are in)."""
    counts = await components.journal.counts()
    kkt = components.poller.status()
    ofd = kkt.ofd
    fn = assess(
        None if ofd is None else ofd.unsent_count,
        None if ofd is None else ofd.first_unsent_at,
        kkt.warning_flags,
        local_now(),
    )
    return Readings(clock(), counts, components.link.state, kkt, components.engine.status(), fn)


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
    }


def stuck_fd(r: Readings) -> int | None:
    """The FD the poller cannot get past, when the KKT answers but reading it keeps failing."""
    kkt = r.kkt
    if not r.link.connected or not kkt.last_error or kkt.cursor is None or kkt.last_fd is None:
        return None
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


async def snapshot(daemon: Daemon) -> dict[str, Any]:
    """Everything /v1/status shows (SPEC section 6), as JSON-ready values."""
    components = daemon.components
    assert components is not None
    r = await read(components)
    reload = daemon.last_reload
    recovered = components.journal.recovered_from
    return {
        "version": __version__,
        "instance": daemon.instance,
        "now": r.now,
        "started_at": daemon.started_at,
        "uptime_seconds": round(r.now - daemon.started_at, 3),
        "kkt": _kkt(components, r),
        "fn": _fn(r),
        "journal": {
            "path": str(daemon.config.journal.path),
            "pending": r.counts.pending,
            "synced": r.counts.synced,
            "dead": r.counts.dead,
            "oldest_pending_age_seconds": _round(r.oldest_pending_age),
            "journaled_total": r.kkt.journaled,
            "recovered_from": None if recovered is None else str(recovered),
        },
        "sync": _sync(components, r),
        "ofd_relay": None if components.relay is None else components.relay.status().to_dict(),
        "config": {
            "file": str(daemon.config_path),
            "reload": None
            if reload is None
            else {"ok": reload.ok, "at": reload.at, "error": reload.error},
            "reloads": dict(daemon.reloads),
        },
    }


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
        "pending": r.counts.pending,
        "dead": r.counts.dead,
        "oldest_pending_age_seconds": _round(r.oldest_pending_age),
        "breaker": str(r.sync.breaker_state),
        "fn_level": r.fn.level,
        "fn_unsent": r.fn.unsent,
        "fn_backlog_age_seconds": _round(r.fn.backlog_age_seconds),
    }


async def status_line(daemon: Daemon) -> str:
    """One short line for systemd's STATUS=, changing only when something an operator cares
    about changes: no ages or clocks in it, or it would change every second."""
    components = daemon.components
    assert components is not None
    r = await read(components)
    daemon.fn_health_log.observe(r.fn)
    return render_line(
        r,
        instance=daemon.instance,
        reload_failed=_failed_reload(daemon),
        recovered=components.journal.recovered_from is not None,
    )


def _failed_reload(daemon: Daemon) -> str | None:
    """None when the last reload (if any) worked; else what to show: the key at fault."""
    result = daemon.last_reload
    if result is None or result.ok:
        return None
    return result.key or "see log"


def render_line(r: Readings, *, instance: str, reload_failed: str | None, recovered: bool) -> str:
    model = r.link.device.name if r.link.connected and r.link.device is not None else None
    parts = [f"KKT online ({model})" if model else "KKT offline"]
    parts += [f"pending {r.counts.pending}", f"dead {r.counts.dead}"]
    parts.append(f"upstream {_UPSTREAM_WORDS.get(str(r.sync.breaker_state), 'unknown')}")
    if r.sync.lock_holder and r.sync.lock_holder != instance:
        parts.append(f"lock held by {r.sync.lock_holder}")
    if r.fn.level != "ok" and r.fn.days_left is not None:
        parts.append(f"FN backlog {r.fn.level}: {r.fn.days_left:.0f} days left")
    elif r.fn.level != "ok":
        parts.append(f"FN {r.fn.level}: {', '.join(r.fn.warnings)}")
    if (stuck := stuck_fd(r)) is not None:
        parts.append(f"KKT reads failing at FD {stuck}")
    if r.kkt.journal_blocked:
        parts.append("journal writes failing, KKT reads paused")
    if reload_failed is not None:
        parts.append(f"config reload FAILED ({reload_failed}), old config running")
    if recovered:
        parts.append("journal was damaged: re-reading from FN")
    return ", ".join(parts)
