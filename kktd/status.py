"""What the daemon tells an operator about itself: the status snapshot and the STATUS= line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kktd import __version__

if TYPE_CHECKING:
    from kktd.daemon import Daemon


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


async def snapshot(daemon: Daemon) -> dict[str, Any]:
    """Everything /v1/status shows (SPEC section 6)."""
    now = time.time()
    components = daemon.components
    assert components is not None
    counts = await components.journal.counts()
    kkt = components.poller.status()
    sync = components.engine.status()
    oldest = counts.oldest_pending_journaled_at
    reload = daemon.last_reload
    return {
        "version": __version__,
        "instance": daemon.instance,
        "uptime_seconds": round(now - daemon.started_at, 3),
        "kkt": kkt.to_dict(),
        "journal": {
            "path": str(daemon.config.journal.path),
            "pending": counts.pending,
            "synced": counts.synced,
            "dead": counts.dead,
            "oldest_pending_age_seconds": None if oldest is None else round(now - oldest, 3),
        },
        "sync": sync.to_dict(),
        "config": {
            "file": str(daemon.config_path),
            "reload": None
            if reload is None
            else {"ok": reload.ok, "at": reload.at, "error": reload.error},
        },
    }


async def status_line(daemon: Daemon) -> str:
    """One short line for systemd's STATUS=, changing only when something an operator cares
    about changes (no ages or clocks in it, or it would change every second)."""
    components = daemon.components
    assert components is not None
    counts = await components.journal.counts()
    kkt = components.poller.status()
    sync = components.engine.status()
    parts = [
        f"KKT {'online' if kkt.connected else 'offline'}",
        f"pending {counts.pending}",
        f"dead {counts.dead}",
        f"upstream {sync.breaker_state}",
    ]
    if sync.lock_holder and sync.lock_holder != daemon.instance:
        parts.append(f"lock held by {sync.lock_holder}")
    if daemon.last_reload is not None and not daemon.last_reload.ok:
        parts.append("config reload FAILED, old config running")
    if components.journal.recovered_from is not None:
        parts.append("journal was damaged: re-reading from FN")
    return ", ".join(parts)
