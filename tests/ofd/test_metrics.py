"""The relay's metrics as Prometheus text: every outcome shown, unknowns left out."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from kktd.ofd.metrics import relay_metrics
from kktd.ofd.relay import RelayStatus


def status(**changes: object) -> RelayStatus:
    base: dict[str, object] = {
        "enabled": True,
        "ofd": "ofd.example:7777",
        "breaker": "open",
        "backoff_seconds": 4.0,
        "last_success_at": None,
        "last_attempt_at": 1_700_000_000.0,
        "last_outcome": "timeout",
        "last_error": "no whole answer in 60 s",
        "consecutive_failures": 3,
        "relayed": 7,
        "failed": 3,
        "outcomes": {"relayed": 7, "timeout": 3},
        "pending_bytes": None,
        "backlog": 4,
        "backlog_oldest_at": None,
        "backlog_trend": "rising",
        "exchange_mode": 0,
        "kkt_ofd_server": None,
    }
    return RelayStatus(**{**base, **changes})  # type: ignore[arg-type]


def render(relay: RelayStatus) -> str:
    class Once(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from relay_metrics(relay)

    registry = CollectorRegistry()
    registry.register(Once())
    return generate_latest(registry).decode()


def test_outcomes_breaker_and_failures_are_exported() -> None:
    text = render(status())
    assert "kktd_ofd_relay_enabled 1.0" in text
    assert 'kktd_ofd_exchanges_total{outcome="relayed"} 7.0' in text
    assert 'kktd_ofd_exchanges_total{outcome="timeout"} 3.0' in text
    assert 'kktd_ofd_exchanges_total{outcome="fn_refused"} 0.0' in text
    assert 'kktd_ofd_breaker_state{state="open"} 1.0' in text
    assert 'kktd_ofd_breaker_state{state="closed"} 0.0' in text
    assert "kktd_ofd_consecutive_failures 3.0" in text


def test_values_not_known_yet_are_left_out_rather_than_zero() -> None:
    text = render(status())
    assert "kktd_ofd_last_success_timestamp_seconds" not in text
    assert "kktd_ofd_pending_bytes" not in text
    text = render(status(last_success_at=1_700_000_100.0, pending_bytes=334, enabled=False))
    assert "kktd_ofd_last_success_timestamp_seconds 1.7000001e+09" in text
    assert "kktd_ofd_pending_bytes 334.0" in text
    assert "kktd_ofd_relay_enabled 0.0" in text
