"""Prometheus metrics (SPEC section 6), with prometheus-client on a per-daemon registry.

Most values already live in the components (journal counts, breaker, lock, link, the engine's
delivery counters, the daemon's reload counters), so a custom collector reads them at scrape
time instead of mirroring them into gauges that could drift. The journal counts are the one
awaited reading: `render` takes it first, then lets the registry collect. Only the round
duration histogram is fed as events happen: `RoundHistogram` holds it, and the wiring
(`kktd.lifecycle.components`) feeds it from the engine's `on_round` hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kktd import __version__
from kktd.control.status import JOURNAL_STATES, Readings, journal_state, read
from kktd.ofd.metrics import relay_metrics
from kktd.sync.breaker import BreakerState
from kktd.sync.engine import SyncReport

if TYPE_CHECKING:
    from kktd.control.runtime import Runtime
    from kktd.lifecycle.components import Components

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROUND_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RoundHistogram:
    """`kktd_sync_round_seconds`: fed by the engine's `on_round` hook (see
    kktd.lifecycle.components)."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "kktd_sync_round_seconds",
            "Duration of sync rounds (one FN each), lock to last outcome.",
            buckets=ROUND_BUCKETS,
            registry=None,
        )

    def observe(self, report: SyncReport) -> None:
        self.histogram.observe(report.duration_seconds)


class Metrics:
    """The daemon's registry; `render()` is the body of GET /metrics."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self._live = _LiveCollector(runtime)
        self.registry.register(self._live)
        self.registry.register(runtime.components.rounds.histogram)

    async def render(self) -> bytes:
        self._live.readings = await read(self._live.runtime.components)
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Reads the components when the registry collects; `readings` is set just before."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.readings: Readings | None = None

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("kktd_build_info", "kktd version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        components, r = self.runtime.components, self.readings
        if r is None:
            return
        yield CounterMetricFamily(
            "kktd_documents_journaled",
            "FDs read from the FN and journaled since the daemon started.",
            value=r.kkt.journaled,
        )
        # absent while the journal cannot be read: a made-up 0 would look like nothing pending
        if r.counts is not None:
            documents = GaugeMetricFamily("kktd_documents", "FDs in the journal.", labels=["state"])
            for state, count in (
                ("pending", r.counts.pending),
                ("synced", r.counts.synced),
                ("dead", r.counts.dead),
            ):
                documents.add_metric([state], count)
            yield documents
            yield GaugeMetricFamily(
                "kktd_oldest_pending_age_seconds",
                "Age of the oldest pending FD (0 when none is pending).",
                value=r.oldest_pending_age or 0.0,
            )
        if r.skipped is not None:
            yield CounterMetricFamily(
                "kktd_documents_skipped",
                "FDs the operator skipped with `kktd skip` (the KKT could not produce them).",
                value=r.skipped,
            )
        yield from self._lifecycle(components)
        yield from self._sync(r)
        yield from self._kkt(r)
        if components.relay is not None:
            yield from relay_metrics(components.relay.status())
        reloads = CounterMetricFamily(
            "kktd_config_reloads", "Config reloads (SIGHUP) by result.", labels=["result"]
        )
        for result, count in sorted(self.runtime.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads

    def _lifecycle(self, components: Components) -> Iterator[Metric]:
        """The journal's state and the supervisor's restarts (issue 11)."""
        state = journal_state(components)
        journal = GaugeMetricFamily(
            "kktd_journal_state",
            "The journal: 1 for the current state (ok, or why it cannot be written).",
            labels=["state"],
        )
        for each in JOURNAL_STATES:
            journal.add_metric([each], 1 if each == state else 0)
        yield journal
        restarts = CounterMetricFamily(
            "kktd_component_restarts",
            "Restarts of each supervised component after it crashed (or returned).",
            labels=["component"],
        )
        for component, count in sorted(self.runtime.supervisor.all_restarts().items()):
            restarts.add_metric([component], count)
        yield restarts

    def _sync(self, r: Readings) -> Iterator[Metric]:
        components = self.runtime.components
        deliveries = CounterMetricFamily(
            "kktd_sync_deliveries", "Deliveries to the upstream by result.", labels=["result"]
        )
        for result, count in sorted(components.engine.deliveries.items()):
            deliveries.add_metric([result], count)
        yield deliveries
        breaker = GaugeMetricFamily(
            "kktd_breaker_state",
            "Upstream circuit breaker: 1 for the current state.",
            labels=["state"],
        )
        for state in BreakerState:
            breaker.add_metric([state.value], 1 if r.sync.breaker_state is state else 0)
        yield breaker
        held = components.lock.holder_seen == components.instance
        yield GaugeMetricFamily(
            "kktd_lock_held", "1 while this instance holds the sync lock.", value=int(held)
        )
        yield GaugeMetricFamily(
            "kktd_lock_fence", "The last fence granted with the lock.", value=r.sync.lock_fence or 0
        )
        yield CounterMetricFamily(
            "kktd_lock_unavailable",
            "Rounds that found Redis unreachable (lock.on_unavailable decided what followed).",
            value=components.lock.unavailable_total,
        )
        yield GaugeMetricFamily(
            "kktd_lock_refused",
            "1 while Redis refuses the sync lock (password, replica, memory, scripts): no sync.",
            value=int(components.lock.problem is not None),
        )

    def _kkt(self, r: Readings) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "kktd_kkt_connected", "1 while the KKT answers.", value=int(r.link.connected)
        )
        line_errors = CounterMetricFamily(
            "kktd_kkt_line_errors",
            "What the link discarded off the line (noise bytes, garbled frames), by kind.",
            labels=["kind"],
        )
        for kind in ("noise", "bad_frame"):  # both always present: a rate needs a zero first
            line_errors.add_metric([kind], self.runtime.components.link.noise.totals[kind])
        yield line_errors
        fn = r.fn
        # absent until FF39/FF01 have been read: a made-up 0 would look like a healthy FN
        if fn.unsent is not None:
            yield GaugeMetricFamily(
                "kktd_fn_ofd_unsent", "FDs the FN has not handed to the OFD yet.", value=fn.unsent
            )
            yield GaugeMetricFamily(
                "kktd_fn_ofd_oldest_unsent_age_seconds",
                "Age of the oldest FD the FN has not handed to the OFD (it blocks at 30 days).",
                value=fn.backlog_age_seconds or 0.0,
            )
        if fn.warning_flags is not None:
            yield GaugeMetricFamily(
                "kktd_fn_warning_flags", "FF01 warning flags of the FN.", value=fn.warning_flags
            )
