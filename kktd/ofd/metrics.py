"""The relay's Prometheus metrics, read from its status at scrape time (like
kktd.control.api.metrics).

The FN's backlog toward the OFD is already `kktd_fn_ofd_unsent` (the poller reads FF39); these
say how the relay is doing at shrinking it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kktd.ofd.audit import Outcome
from kktd.ofd.relay import RelayStatus
from kktd.sync.breaker import BreakerState

OUTCOMES: tuple[Outcome, ...] = (
    "relayed",
    "unreachable",
    "timeout",
    "reset",
    "malformed",
    "fn_refused",
    "link_lost",
)


def relay_metrics(status: RelayStatus) -> Iterator[Metric]:
    """The metric families of one relay status; every outcome is shown, zeros included."""
    yield GaugeMetricFamily(
        "kktd_ofd_relay_enabled", "1 while ofd.mode is relay.", value=int(status.enabled)
    )
    exchanges = CounterMetricFamily(
        "kktd_ofd_exchanges", "FN messages carried to the OFD, by outcome.", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        exchanges.add_metric([outcome], status.outcomes.get(outcome, 0))
    yield exchanges
    yield GaugeMetricFamily(
        "kktd_ofd_consecutive_failures",
        "Failed exchanges since the last success.",
        value=status.consecutive_failures,
    )
    breaker = GaugeMetricFamily(
        "kktd_ofd_breaker_state", "OFD circuit breaker: 1 for the current state.", labels=["state"]
    )
    for state in BreakerState:
        breaker.add_metric([state.value], int(status.breaker == state.value))
    yield breaker
    # absent until known: a made-up 0 would look like an idle, healthy relay
    if status.last_success_at is not None:
        yield GaugeMetricFamily(
            "kktd_ofd_last_success_timestamp_seconds",
            "Wall-clock time of the last message whose answer reached the FN.",
            value=status.last_success_at,
        )
    if status.pending_bytes is not None:
        yield GaugeMetricFamily(
            "kktd_ofd_pending_bytes",
            "Bytes of the FN's message on offer for the OFD (FF30).",
            value=status.pending_bytes,
        )
