"""Backoff delays and Retry-After parsing (SPEC section 3), with the random source injected."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kktd.sync.backoff import RETRY_AFTER_CAP, Backoff, parse_retry_after

ALMOST_ONE = 0.9999999999


def test_capped_sequence_without_jitter() -> None:
    backoff = Backoff(1.0, 60.0, "none")
    delays = [backoff.record_failure() for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.failures == 8
    assert backoff.current_delay == 60


def test_a_very_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, "none")
    for _ in range(5000):
        delay = backoff.record_failure()
    assert delay == 60.0


@pytest.mark.parametrize("draw", [0.0, ALMOST_ONE])
def test_full_jitter_stays_within_zero_and_cap_at_the_extremes(draw: float) -> None:
    backoff = Backoff(1.0, 60.0, "full", rng=lambda: draw)
    caps = [1, 2, 4, 8, 16, 32, 60, 60]
    for cap in caps:
        delay = backoff.record_failure()
        assert 0.0 <= delay <= cap
        assert delay == pytest.approx(cap * draw)


@given(draws=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1))
def test_full_jitter_is_uniform_over_zero_to_cap(draws: list[float]) -> None:
    it = iter(draws)
    backoff = Backoff(1.0, 60.0, "full", rng=lambda: next(it))
    for k, draw in enumerate(draws, start=1):
        cap = min(2.0 ** (k - 1), 60.0)
        delay = backoff.record_failure()
        assert 0.0 <= delay <= cap
        assert delay == cap * draw


def test_success_resets_the_sequence() -> None:
    backoff = Backoff(1.0, 60.0, "none")
    for _ in range(4):
        backoff.record_failure()
    backoff.record_success()
    assert backoff.failures == 0
    assert backoff.current_delay == 0.0
    assert backoff.record_failure() == 1.0


def test_retry_after_is_a_floor() -> None:
    backoff = Backoff(1.0, 60.0, "none")
    assert backoff.record_failure(retry_after=120.0) == 120.0
    assert backoff.record_failure(retry_after=0.5) == 2.0


def test_retry_after_is_capped() -> None:
    backoff = Backoff(1.0, 60.0, "full", rng=lambda: 0.0)
    assert backoff.record_failure(retry_after=86400.0) == RETRY_AFTER_CAP == 300.0


def test_reconfigure_applies_from_the_next_failure() -> None:
    backoff = Backoff(1.0, 60.0, "none")
    backoff.record_failure()
    backoff.reconfigure(0.5, 3.0, "none")
    assert [backoff.record_failure() for _ in range(3)] == [1.0, 2.0, 3.0]


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 01 May 2024 12:01:30 GMT", 90.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5e3", "²", "Wed, 99 Foo 2024"])
def test_parse_retry_after_gives_none_for_garbage(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None
