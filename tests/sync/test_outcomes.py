"""What a round records of each answer (SPEC section 3): only evidence about an FD counts.

The real mock upstream on loopback, a real journal file, the engine's wall clock injected.
"""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from kktd.config import SyncConfig
from kktd.journal import Journal
from kktd.sync.breaker import BreakerState
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.clock import T0, FakeClock
from tests.support.upstream import FN, Rig, engine_rig, running, store_fds
from tests.support.wait import wait_until
from tests.sync.test_engine import row

DAY = 86_400.0


@pytest.fixture
def journal_clock(wall: FakeClock) -> FakeClock:
    """The suite's journal, on the injected wall clock the engine reads too."""
    return wall


async def dead_fds(journal: Journal) -> list[int]:
    return [entry.fd for entry in await journal.list_dead(100)]


async def half_open(rig: Rig) -> None:
    await wait_until(lambda: rig.breaker.state is BreakerState.HALF_OPEN, what="a probe's turn")


# -- transient: counted only in a round where the upstream accepted another FD --


async def test_a_transient_failure_beside_an_accepted_fd_counts_an_attempt(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2])
    mock.set_faults(fail_fds=[1])
    async with engine_rig(journal, mock.url, wall=wall, backoff=(2.0, 60.0)) as rig:
        report = await rig.engine.sync_now()
    entry = await row(journal, 1)
    assert (entry.state, entry.attempts, entry.last_error, entry.next_attempt_at) == (
        "pending",
        1,
        "HTTP 500: cannot store FD 1",
        T0 + 2.0,
    )
    assert (report.synced, report.failed, report.dead) == (1, 1, 0)


@pytest.mark.parametrize(
    "fault",
    [{"fail_fds": [1, 2]}, {"gateway_down": True}, {"rate_limit_rate": 1.0, "retry_after": 7}],
)
async def test_a_transient_failure_in_a_round_that_accepted_nothing_is_not_counted(
    journal: Journal, mock: MockUpstream, wall: FakeClock, fault: dict[str, Any]
) -> None:
    await store_fds(journal, [1, 2])
    mock.set_faults(**fault)
    async with engine_rig(journal, mock.url, wall=wall, backoff=(2.0, 60.0)) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures == 2
        delay = rig.backoff.current_delay
    entry = await row(journal, 1)
    assert (entry.state, entry.attempts) == ("pending", 0)
    assert entry.last_error is not None
    assert entry.last_error.startswith(("HTTP 500", "HTTP 503", "HTTP 429"))
    assert entry.next_attempt_at == T0 + delay  # still waits the round's backoff delay
    assert (report.failed, report.dead) == (2, 0)


async def test_a_half_open_probe_that_fails_never_counts(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 11))
    mock.set_faults(gateway_down=True)
    sync = SyncConfig(interval=60.0, batch_size=50, max_attempts=3)
    async with engine_rig(journal, mock.url, wall=wall, sync=sync, max_in_flight=1) as rig:
        await rig.engine.sync_now()  # five 503s open the breaker
        for _ in range(4):
            wall.now += 1.0  # FD 1 is due again: it is the probe each time
            await half_open(rig)
            probe = await rig.engine.sync_now()
            assert (probe.failed, probe.dead) == (1, 0)
            assert rig.breaker.state is BreakerState.OPEN
    assert sum(1 for r in mock.state.requests if r.fd == 1) == 5  # 1 in the round + 4 probes
    entry = await row(journal, 1)
    assert (entry.state, entry.attempts) == ("pending", 0)
    assert await dead_fds(journal) == []


# -- misrouted: any 4xx that names no FD, any 3xx --


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"not_found_page": True}, 404),
        ({"proxy_page": True}, 400),
        ({"redirect": 301}, 301),
        ({"redirect": 308}, 308),
    ],
)
async def test_a_page_that_names_no_fd_is_a_breaker_failure_never_counted(
    journal: Journal, mock: MockUpstream, wall: FakeClock, fault: dict[str, Any], status: int
) -> None:
    await store_fds(journal, [1, 2, 3])
    before = await row(journal, 1)
    mock.set_faults(**fault)
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        with capture_logs() as logs:
            report = await rig.engine.sync_now()
        assert rig.breaker.consecutive_failures == 3
        assert rig.engine.deliveries["misrouted"] == 3
    assert await row(journal, 1) == before  # pending, no attempt counted, no error written
    assert (report.synced, report.failed, report.dead) == (0, 3, 0)
    alerts = [e for e in logs if e["event"] == "sync.misrouted"]
    assert len(alerts) == 1  # once per change, not once per FD
    assert (alerts[0]["log_level"], alerts[0]["status"]) == ("error", status)
    assert "upstream.url" in alerts[0]["reason"]


# -- rejected: a 4xx naming the FD --


async def test_a_422_naming_fd_5_dead_letters_fd_5_and_nothing_else(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 11))
    mock.set_faults(reject_fds=[5])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        report = await rig.engine.sync_now()
        assert rig.breaker.state is BreakerState.CLOSED
    assert await dead_fds(journal) == [5]
    assert (await row(journal, 5)).last_error == "FD 5 rejected: document not acceptable"
    assert (report.synced, report.dead) == (9, 1)


async def test_fewer_than_five_rejections_in_a_round_are_dead_as_usual(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 5))
    mock.set_faults(reject_fds=[1, 2, 3, 4])
    async with engine_rig(journal, mock.url, wall=wall) as rig:
        await rig.engine.sync_now()
        assert rig.breaker.state is BreakerState.CLOSED
    assert await dead_fds(journal) == [1, 2, 3, 4]


async def test_a_round_that_rejects_every_fd_holds_them_pending_and_opens_the_breaker(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 7))
    mock.set_faults(reject_fds=list(range(1, 8)))
    async with engine_rig(journal, mock.url, wall=wall, reset_timeout=60.0) as rig:
        with capture_logs() as logs:
            report = await rig.engine.sync_now()
        assert rig.breaker.state is BreakerState.OPEN
        failure = rig.engine.last_failure
    assert (report.synced, report.failed, report.dead) == (0, 6, 0)
    counts = await journal.counts()
    assert (counts.pending, counts.dead) == (6, 0)
    held = await row(journal, 1)
    assert (held.attempts, held.last_error) == (0, "FD 1 rejected: document not acceptable")
    assert failure is not None
    assert failure.delivery.reason.startswith("the upstream rejects every FD: FD 1 rejected")
    alerts = [e for e in logs if e["event"] == "sync.all_rejected"]
    assert [(e["log_level"], e["fds"]) for e in alerts] == [("error", 6)]


async def test_an_upstream_rejecting_every_fd_for_a_while_dead_letters_none(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, range(1, 7))
    mock.set_faults(reject_fds=list(range(1, 20)))
    async with engine_rig(journal, mock.url, wall=wall) as rig, running(rig.engine):
        await wait_until(lambda: rig.opens() == 1, what="the round of six rejections")
        for fd in (7, 8, 9):  # new FDs are the probes while the held ones wait
            await store_fds(journal, [fd])
            rig.engine.wake()

            def probed(fd: int = fd) -> bool:
                return rig.opens() == fd - 5

            await wait_until(probed, what=f"FD {fd}'s probe")
        mock.set_faults(reject_fds=[])
        wall.now += 300.0  # the held FDs come due
        rig.engine.wake()

        async def drained() -> bool:
            return (await journal.counts()).synced == 9

        await wait_until(drained, what="every FD delivered once the upstream accepts again")
    assert sum(1 for r in mock.state.requests if r.status == 422) == 9
    assert await dead_fds(journal) == []


async def test_bad_fds_held_with_no_company_go_dead_beside_an_accepted_one(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    """Held FDs wait as long as any schedule, so a probe finds a good FD if there is one."""
    await store_fds(journal, range(1, 7))
    mock.set_faults(reject_fds=list(range(1, 7)))
    async with engine_rig(journal, mock.url, wall=wall) as rig, running(rig.engine):
        await wait_until(lambda: rig.opens() == 1, what="six held, the breaker open")
        await store_fds(journal, [7])
        rig.engine.wake()
        await wait_until(lambda: (FN, 7) in mock.state.accepted, what="FD 7 as the probe")
        assert rig.breaker.state is BreakerState.CLOSED
        await store_fds(journal, [8])
        wall.now += 300.0  # 1-6 are due again, and go with 8: the upstream judges FDs
        rig.engine.wake()

        async def judged() -> bool:
            return len(await dead_fds(journal)) == 6

        await wait_until(judged, what="the six rejected FDs to go dead")
    assert await dead_fds(journal) == [1, 2, 3, 4, 5, 6]
    assert set(mock.state.accepted) == {(FN, 7), (FN, 8)}
    assert sorted(r.fd or 0 for r in mock.state.requests if r.status == 422) == sorted(
        [1, 2, 3, 4, 5, 6] * 2
    )


# -- due times across clock steps, and the manual sync --


async def test_an_fd_scheduled_while_the_wall_clock_was_a_day_fast_is_due_once_it_is_set_right(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2])
    wall.now = T0 + DAY
    mock.set_faults(fail_fds=[1])
    async with engine_rig(journal, mock.url, wall=wall, backoff=(30.0, 60.0)) as rig:
        await rig.engine.sync_now()
        assert (await row(journal, 1)).next_attempt_at == T0 + DAY + 30.0
        mock.set_faults(fail_fds=[])
        wall.now = T0  # NTP steps the clock back
        async with running(rig.engine):

            async def synced() -> bool:
                return (await row(journal, 1)).state == "synced"

            await wait_until(synced, what="FD 1 delivered by the loop")


async def test_a_due_time_within_the_longest_schedule_is_kept(journal: Journal) -> None:
    await store_fds(journal, [1])
    await journal.defer(FN, 1, T0 + 300.0, "HTTP 429: slow down")  # Retry-After's cap
    assert await journal.claim_due(10, T0, horizon=300.0) == []
    assert [e.fd for e in await journal.claim_due(10, T0 + 300.0, horizon=300.0)] == [1]
    # set a day ahead of this clock: the clock has been stepped back since
    assert [e.fd for e in await journal.claim_due(10, T0 - DAY, horizon=300.0)] == [1]


async def test_a_manual_sync_sends_fds_that_are_not_due_yet(
    journal: Journal, mock: MockUpstream, wall: FakeClock
) -> None:
    await store_fds(journal, [1, 2])
    mock.set_faults(fail_fds=[1])
    async with engine_rig(journal, mock.url, wall=wall, backoff=(60.0, 60.0)) as rig:
        await rig.engine.sync_now()
        assert (await row(journal, 1)).next_attempt_at == T0 + 60.0
        mock.set_faults(fail_fds=[])
        report = await rig.engine.sync_now()  # the operator asks: now, not in a minute
    assert (report.status, report.synced) == ("completed", 1)
    assert (await row(journal, 1)).state == "synced"


# -- upstream-wide failures through many breaker cycles --

FAST = SyncConfig(interval=0.05, batch_size=10, max_attempts=2)


async def test_a_gateway_answering_503_for_many_breaker_cycles_dead_letters_nothing(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 31))
    mock.set_faults(gateway_down=True)
    async with engine_rig(journal, mock.url, sync=FAST) as rig, running(rig.engine):
        await wait_until(lambda: rig.opens() >= 8, what="eight breaker cycles")
        assert (await journal.counts()).dead == 0
        mock.set_faults(gateway_down=False)

        async def drained() -> bool:
            return (await journal.counts()).synced == 30

        await wait_until(drained, what="the journal to drain")
    probes = sum(1 for r in mock.state.requests if r.fd == 1 and r.status == 503)
    assert probes >= 5  # FD 1 was the probe again and again: max_attempts is 2
    assert await dead_fds(journal) == []
    assert [(await row(journal, fd)).attempts for fd in (1, 2, 30)] == [0, 0, 0]


async def test_a_till_whose_upstream_answered_pages_for_a_while_then_was_fixed_delivers_all(
    journal: Journal, mock: MockUpstream
) -> None:
    """404/400 pages, then a redirect, then fixed: 0 dead; a 422 naming FD 5 kills FD 5 only."""
    await store_fds(journal, range(1, 41))
    async with engine_rig(journal, mock.url, sync=FAST) as rig, running(rig.engine):
        faults: list[dict[str, Any]] = [
            {"not_found_page": True},
            {"proxy_page": True},
            {"redirect": 308},
        ]
        for opens, fault in enumerate(faults, start=1):
            mock.set_faults(
                **{"not_found_page": False, "proxy_page": False, "redirect": 0, **fault}
            )

            def cycled(n: int = opens) -> bool:
                return rig.opens() >= 3 * n

            await wait_until(cycled, what=f"cycles of {fault}")
            await store_fds(journal, range(40 + opens * 5 - 4, 41 + opens * 5))
            assert (await journal.counts()).dead == 0
        mock.set_faults(redirect=0, reject_fds=[5])

        async def drained() -> bool:
            counts = await journal.counts()
            return counts.pending == 0

        await wait_until(drained, what="the journal to drain")
    assert await dead_fds(journal) == [5]
    assert (await row(journal, 5)).last_error == "FD 5 rejected: document not acceptable"
    assert set(mock.state.accepted) == {(FN, fd) for fd in range(1, 56) if fd != 5}
    assert {r.status for r in mock.state.requests} == {201, 308, 400, 404, 422}
