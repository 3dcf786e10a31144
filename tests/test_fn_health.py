"""FN health: the 30-day rule on the FN's OFD backlog, and the FF01 warning flags."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from kktd.control.fn_health import FnHealthLog, assess, decode_flags

NOW = datetime(2024, 5, 20, 12, 0, 0)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_nothing_unsent_is_ok_whatever_the_date() -> None:
    health = assess(0, days_ago(40), 0, NOW)
    assert health.level == "ok"
    assert health.backlog_age_seconds is None
    assert health.days_left is None
    assert health.oldest_unsent_at is None
    assert health.message is None


def test_not_read_yet_is_ok_and_unknown() -> None:
    health = assess(None, None, None, NOW)
    assert (health.level, health.unsent, health.warning_flags) == ("ok", None, None)


@pytest.mark.parametrize(
    ("days", "level", "left"),
    [
        (1, "ok", 29),
        (3, "ok", 27),
        (3.5, "warning", 26.5),
        (25, "warning", 5),
        (25.5, "error", 4.5),
        (31, "error", 0),
    ],
)
def test_backlog_age_sets_the_level_and_days_left(days: float, level: str, left: float) -> None:
    health = assess(12, days_ago(days), 0, NOW)
    assert health.level == level
    assert health.days_left == pytest.approx(left)
    assert health.backlog_age_seconds == pytest.approx(days * 86400)


def test_an_aging_backlog_says_what_to_check() -> None:
    health = assess(12, days_ago(12), 0, NOW)
    assert health.message == (
        "FN backlog to the OFD is 12 days old: the FN blocks at 30 days, check the OFD connection"
    )


def test_a_kkt_clock_ahead_of_ours_is_not_a_negative_age() -> None:
    health = assess(1, NOW + timedelta(minutes=5), 0, NOW)
    assert health.backlog_age_seconds == 0
    assert health.level == "ok"


@pytest.mark.parametrize(
    ("flags", "level", "text"),
    [
        (0x08, "warning", "OFD answer overdue"),
        (0x02, "warning", "resource nearly exhausted"),
        (0x01, "error", "replaced urgently"),
        (0x80, "error", "critical FN error"),
        (0x10, "warning", "FN warning bit 4"),
    ],
)
def test_warning_flags_raise_the_level_and_are_named(flags: int, level: str, text: str) -> None:
    health = assess(0, None, flags, NOW)
    assert health.level == level
    assert any(text in warning for warning in health.warnings)
    assert health.message is not None
    assert text in health.message


def test_the_worse_of_backlog_and_flags_wins() -> None:
    assert assess(3, days_ago(26), 0x08, NOW).level == "error"
    assert assess(3, days_ago(5), 0x01, NOW).level == "error"


def test_decode_flags_lists_every_set_bit() -> None:
    assert [text for _, text in decode_flags(0x0C)] == ["FN memory 90% full", "OFD answer overdue"]
    assert decode_flags(0) == []


def test_the_log_speaks_when_the_level_changes_not_on_every_look() -> None:
    watch = FnHealthLog()
    with capture_logs() as logs:
        watch.observe(assess(0, None, 0, NOW))
        watch.observe(assess(5, days_ago(4), 0, NOW))
        watch.observe(assess(5, days_ago(4.5), 0, NOW))
        watch.observe(assess(5, days_ago(26), 0, NOW))
        watch.observe(assess(0, None, 0, NOW))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("fn.backlog_aging", "warning"),
        ("fn.backlog_critical", "error"),
        ("fn.backlog_cleared", "info"),
    ]
    assert logs[1]["days_left"] == 4.0
    assert "check the OFD connection" in logs[1]["action"]
