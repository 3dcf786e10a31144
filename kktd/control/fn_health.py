"""FN health: the FN's own backlog toward the OFD (FF39) and its warning flags (FF01).

An FN that cannot hand its documents to the OFD keeps them, but only for 30 days: after that it
refuses to fiscalise anything and the till stops selling. kktd cannot fix the OFD link, but it
can say early and loudly that the clock is running. `assess` is pure (the clock is an argument);
`FnHealthLog` turns level changes into log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

Level = Literal["ok", "warning", "error"]

WARN_AFTER_DAYS = 3.0
ERROR_AFTER_DAYS = 25.0
BLOCK_AT_DAYS = 30.0

# FF01 warning flags (Shtrih-M "Протокол работы ККТ с ФН"): bit -> (level, what it means)
WARNING_FLAGS: dict[int, tuple[Level, str]] = {
    0x01: ("error", "FN must be replaced urgently (3 days left)"),
    0x02: ("warning", "FN resource nearly exhausted (30 days left)"),
    0x04: ("warning", "FN memory 90% full"),
    0x08: ("warning", "OFD answer overdue"),
    0x80: ("error", "critical FN error"),
}
_RANK: dict[Level, int] = {"ok": 0, "warning": 1, "error": 2}


@dataclass(frozen=True, slots=True)
class FnHealth:
    """What the FN's state means for the operator; `message` says what to do, when anything."""

    level: Level
    unsent: int | None  # None: FF39 not read yet
    oldest_unsent_at: datetime | None  # the KKT's wall clock, as the FN reports it
    backlog_age_seconds: float | None
    days_left: float | None  # before the FN blocks, by the 30-day rule
    warning_flags: int | None
    warnings: tuple[str, ...]
    message: str | None


def decode_flags(flags: int) -> list[tuple[Level, str]]:
    """The named FF01 warning bits that are set; unknown bits are named by number."""
    named = [WARNING_FLAGS[bit] for bit in sorted(WARNING_FLAGS) if flags & bit]
    unknown = flags & ~sum(WARNING_FLAGS)
    named += [("warning", f"FN warning bit {n}") for n in range(8) if unknown & (1 << n)]
    return named


def assess(
    unsent: int | None,
    oldest_unsent_at: datetime | None,
    warning_flags: int | None,
    now: datetime,
) -> FnHealth:
    """Judge the FN's backlog and flags at `now` (naive, the same wall clock as the KKT's)."""
    age = None
    if unsent and oldest_unsent_at is not None:
        age = max(0.0, (now - oldest_unsent_at).total_seconds())
    days = None if age is None else age / 86400
    level: Level = "ok"
    messages: list[str] = []
    if days is not None and days > WARN_AFTER_DAYS:
        level = "error" if days > ERROR_AFTER_DAYS else "warning"
        messages.append(
            f"FN backlog to the OFD is {days:.0f} days old: the FN blocks at"
            f" {BLOCK_AT_DAYS:.0f} days, check the OFD connection"
        )
    flags = decode_flags(warning_flags or 0)
    for flag_level, _ in flags:
        if _RANK[flag_level] > _RANK[level]:
            level = flag_level
    if flags:
        messages.append("FN reports: " + "; ".join(text for _, text in flags))
    return FnHealth(
        level=level,
        unsent=unsent,
        oldest_unsent_at=oldest_unsent_at if unsent else None,
        backlog_age_seconds=age,
        days_left=None if days is None else max(0.0, BLOCK_AT_DAYS - days),
        warning_flags=warning_flags,
        warnings=tuple(text for _, text in flags),
        message=". ".join(messages) or None,
    )


class FnHealthLog:
    """Logs the FN's health when its level or warnings change, not on every look."""

    def __init__(self) -> None:
        self._last: tuple[Level, tuple[str, ...]] = ("ok", ())

    def observe(self, health: FnHealth) -> None:
        key = (health.level, health.warnings)
        if key == self._last:
            return
        self._last = key
        fields = {
            "unsent": health.unsent,
            "backlog_days": None
            if health.backlog_age_seconds is None
            else round(health.backlog_age_seconds / 86400, 1),
            "days_left": None if health.days_left is None else round(health.days_left, 1),
            "warnings": list(health.warnings),
        }
        if health.level == "error":
            log.error("fn.backlog_critical", action=health.message, **fields)
        elif health.level == "warning":
            log.warning("fn.backlog_aging", action=health.message, **fields)
        else:
            log.info("fn.backlog_cleared", **fields)
