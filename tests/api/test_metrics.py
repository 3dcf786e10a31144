"""GET /metrics: every name of SPEC section 6, with values that follow known events."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kktd.control.api.server import create_app
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import DocumentGenerator
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import (
    ClientFactory,
    Harness,
    auth,
    build_daemon,
    journal_fds,
    kkt_config,
    make_config,
    polled_kkt,
)
from tests.support.wait import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SPEC_NAMES = {
    "kktd_documents_journaled_total",
    "kktd_documents",
    "kktd_oldest_pending_age_seconds",
    "kktd_sync_deliveries_total",
    "kktd_sync_round_seconds_count",
    "kktd_breaker_state",
    "kktd_lock_held",
    "kktd_lock_fence",
    "kktd_kkt_connected",
    "kktd_config_reloads_total",
    "kktd_build_info",
    "kktd_documents_skipped_total",
}
FN_NAMES = {
    "kktd_fn_ofd_unsent",
    "kktd_fn_ofd_oldest_unsent_age_seconds",
    "kktd_fn_warning_flags",
}


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(harness: Harness) -> Samples:
    resp = await harness.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_every_spec_name_is_exposed(harness: Harness) -> None:
    samples = await scrape(harness)
    names = {name for name, _ in samples}
    assert names >= SPEC_NAMES
    assert value(samples, "kktd_build_info", version="0.1.0") == 1
    # the FN has not been read: no made-up backlog
    assert not names & FN_NAMES
    # beyond SPEC: the OFD relay (off here) and Redis outages the lock met
    assert value(samples, "kktd_ofd_relay_enabled") == 0
    assert value(samples, "kktd_lock_unavailable_total") == 0
    assert value(samples, "kktd_lock_refused") == 0


async def test_journaled_fds_are_pending_until_delivered_then_counted_accepted(
    harness: Harness,
) -> None:
    await journal_fds(harness.daemon, 1, 2, 3, 4)
    before = await scrape(harness)
    assert value(before, "kktd_documents", state="pending") == 4
    assert value(before, "kktd_oldest_pending_age_seconds") >= 0
    assert value(before, "kktd_sync_deliveries_total", result="accepted") == 0
    await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    after = await scrape(harness)
    assert value(after, "kktd_documents", state="pending") == 0
    assert value(after, "kktd_documents", state="synced") == 4
    assert value(after, "kktd_oldest_pending_age_seconds") == 0
    assert value(after, "kktd_sync_deliveries_total", result="accepted") == 4
    assert value(after, "kktd_sync_round_seconds_count") == 1
    assert value(after, "kktd_lock_held") == 0  # released after the round


async def test_breaker_state_follows_an_upstream_outage(harness: Harness) -> None:
    await journal_fds(harness.daemon, 1, 2, 3)
    closed = await scrape(harness)
    assert value(closed, "kktd_breaker_state", state="closed") == 1
    assert value(closed, "kktd_breaker_state", state="open") == 0
    await harness.upstream.go_down()
    await harness.client.post("/v1/kkt/buffer/sync", headers=auth())
    opened = await scrape(harness)
    assert value(opened, "kktd_breaker_state", state="open") == 1
    assert value(opened, "kktd_breaker_state", state="closed") == 0
    assert value(opened, "kktd_breaker_state", state="half_open") == 0
    assert value(opened, "kktd_sync_deliveries_total", result="unreachable") >= 2


async def test_reloads_are_counted_by_result(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a good reload reconfigures logging process-wide; the rest of the suite keeps its own
    monkeypatch.setattr("kktd.lifecycle.daemon.configure_logging", lambda level, fmt: None)
    config_file = harness.daemon.config_path
    config_file.write_text("[sync]\nbatch_sise = 3\n", encoding="utf-8")
    assert not (await harness.daemon.reload()).ok
    samples = await scrape(harness)
    assert value(samples, "kktd_config_reloads_total", result="failed") == 1
    assert value(samples, "kktd_config_reloads_total", result="ok") == 0
    config_file.write_text(
        f'[upstream]\nurl = "{harness.upstream.url}"\n\n[sync]\nbatch_size = 3\n',
        encoding="utf-8",
    )
    assert (await harness.daemon.reload()).ok
    samples = await scrape(harness)
    assert value(samples, "kktd_config_reloads_total", result="failed") == 1
    assert value(samples, "kktd_config_reloads_total", result="ok") == 1


async def test_fn_backlog_and_kkt_link_come_from_the_emulated_kkt(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> None:
    twelve_days_ago = datetime.now().replace(microsecond=0) - timedelta(days=12)
    device = KktDevice(DocumentGenerator(wall=lambda: twelve_days_ago), archive=3)
    device.issue()
    device.issue()  # two FDs the OFD has not confirmed
    device.warning_flags = 0x08
    config = make_config(tmp_path, upstream.url, kkt=kkt_config(tmp_path))
    daemon = await build_daemon(config)
    assert daemon.components is not None
    poller = daemon.components.poller
    client = await aiohttp_client(create_app(daemon.runtime))
    try:
        async with polled_kkt(daemon, device):

            async def read_all() -> bool:
                status = poller.status()
                return status.journaled == 5 and status.ofd is not None

            await wait_until(read_all)
            resp = await client.get("/metrics")
            samples = parse(await resp.text())
    finally:
        await daemon.components.close()
    assert value(samples, "kktd_documents_journaled_total") == 5
    assert value(samples, "kktd_documents", state="pending") == 5
    assert value(samples, "kktd_kkt_connected") == 1
    assert value(samples, "kktd_fn_ofd_unsent") == 2
    age_days = value(samples, "kktd_fn_ofd_oldest_unsent_age_seconds") / 86400
    assert 11.9 < age_days < 12.1
    assert value(samples, "kktd_fn_warning_flags") == 8


async def test_line_errors_are_counted_by_kind_from_zero(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> None:
    device = KktDevice(archive=3)
    config = make_config(tmp_path, upstream.url, kkt=kkt_config(tmp_path))
    daemon = await build_daemon(config)
    assert daemon.components is not None
    link = daemon.components.link
    client = await aiohttp_client(create_app(daemon.runtime))
    try:
        before = parse(await (await client.get("/metrics")).text())
        async with polled_kkt(daemon, device):
            device.corrupt_lrc(3)
            device.inject_garbage(b"\x41\x42")

            async def counted() -> bool:
                return link.noise.totals["bad_frame"] >= 3 and link.noise.totals["noise"] >= 1

            await wait_until(counted)
            samples = parse(await (await client.get("/metrics")).text())
    finally:
        await daemon.components.close()
    assert value(before, "kktd_kkt_line_errors_total", kind="bad_frame") == 0
    assert value(before, "kktd_kkt_line_errors_total", kind="noise") == 0
    assert value(samples, "kktd_kkt_line_errors_total", kind="bad_frame") >= 3
    assert value(samples, "kktd_kkt_line_errors_total", kind="noise") >= 1
