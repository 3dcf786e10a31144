"""The drain through the sender pool: the next batch in flight before this one ends (issue 14),
each batch still a round of its own, and quiet points between batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress

import pytest

from kktd.config import SyncConfig
from kktd.journal import Journal, Outgoing
from kktd.sync.lock import LeaseLost
from kktd.sync.pool import Batch, SenderPool
from kktd.testbed.mock_upstream import MockUpstream
from tests.support.upstream import FN, engine_rig, make_entry, running, store_fds
from tests.support.wait import wait_until

LOOP = SyncConfig(interval=60.0, batch_size=2, max_attempts=5)


async def test_the_next_batch_is_sent_while_the_one_before_is_in_flight(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 9))
    mock.set_faults(delay=1.0)  # every request stays open a second
    async with (
        engine_rig(journal, mock.url, sync=LOOP, max_in_flight=4) as rig,
        running(rig.engine),
    ):

        async def drained() -> bool:
            return (await journal.counts()).synced == 8

        await wait_until(drained, timeout=20.0, what="the drain")
    # batches of 2: only a batch claimed before the one in flight ended fills 4 slots
    assert mock.state.peak_in_flight == 4
    assert [r.synced for r in rig.reports] == [2, 2, 2, 2]  # each batch a round of its own
    assert mock.state.duplicates == 0


async def test_a_batch_after_a_failed_one_is_not_sent(journal: Journal, mock: MockUpstream) -> None:
    await store_fds(journal, range(1, 21))
    mock.set_faults(fail_fds=[2])
    sync = SyncConfig(interval=60.0, batch_size=5, max_attempts=5)
    async with (
        engine_rig(journal, mock.url, sync=sync, max_in_flight=1, backoff=(30.0, 30.0)) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: rig.reports, what="the first round")
        await wait_until(lambda: rig.engine.status().next_round_in_seconds is not None)
    # one sender: FDs 1-5 in order, FD 2 failed, and the batch claimed meanwhile went unsent
    assert [r.fd for r in mock.state.requests] == [1, 2, 3, 4, 5]
    counts = await journal.counts()
    assert (counts.synced, counts.pending) == (4, 16)
    assert rig.backoff.failures == 1  # one failed round: the backoff grew once


async def test_a_shutdown_waits_only_for_the_batches_in_flight(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 201))
    mock.set_faults(delay=0.05)
    async with engine_rig(journal, mock.url, sync=LOOP, max_in_flight=2) as rig:
        task = asyncio.create_task(rig.engine.run(lambda: None))
        try:
            await wait_until(lambda: len(mock.state.accepted) >= 6, what="a drain under way")
            async with rig.engine.idle():  # a quiet point: no run, no delivery in flight
                accepted = len(mock.state.accepted)
                assert mock.state.in_flight == 0
                # every FD the upstream took is recorded, and the drain did not run to its end
                assert (await journal.counts()).synced == accepted
                assert accepted < 40  # 20 batches of 2 make one run
                task.cancel()
                await asyncio.wait([task])
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert task.cancelled()


async def test_a_manual_sync_during_a_drain_gets_its_turn_after_the_batches_in_flight(
    journal: Journal, mock: MockUpstream
) -> None:
    await store_fds(journal, range(1, 201))
    mock.set_faults(delay=0.05)
    async with (
        engine_rig(journal, mock.url, sync=LOOP, max_in_flight=2) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: len(mock.state.accepted) >= 6, what="a drain under way")
        report = await rig.engine.sync_now()
        assert (report.status, report.synced) == ("completed", 2)  # one batch
        assert len(mock.state.accepted) < 60
    assert all(fn == FN for fn, _ in mock.state.accepted)


async def test_the_senders_go_on_while_a_rounds_outcomes_wait_for_the_disk(
    journal: Journal, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store_fds(journal, range(1, 13))
    commits: list[int] = []
    release = asyncio.Event()
    original = journal.mark_synced_many

    async def slow_disk(keys: Sequence[tuple[str, int]], now: float) -> None:
        commits.append(len(keys))
        if len(commits) == 1:
            await release.wait()  # the first round's commit hangs on the disk
        await original(keys, now)

    monkeypatch.setattr(journal, "mark_synced_many", slow_disk)
    async with (
        engine_rig(journal, mock.url, sync=LOOP, max_in_flight=1) as rig,
        running(rig.engine),
    ):
        await wait_until(lambda: commits, what="the first round's commit")
        # batches of 2: the two batches claimed ahead (FDs 3-6) are sent behind the hung commit
        await wait_until(lambda: len(mock.state.accepted) >= 6, what="FDs 3-6 sent meanwhile")
        release.set()

        async def drained() -> bool:
            return (await journal.counts()).synced == 12

        await wait_until(drained, what="the drain")
    # rounds that ended while a commit hung were recorded together: fewer commits than rounds
    assert len(commits) < 6
    assert sum(commits) == 12
    assert [r.synced for r in rig.reports] == [2] * 6  # still a round per batch
    assert mock.state.duplicates == 0


async def test_a_sender_that_lost_its_cancellation_does_not_hold_the_pool() -> None:
    """Python 3.11: a cancel that lands as an HTTP timeout expires can be swallowed. The sender
    then finishes its delivery and asks for more; leaving the pool must not wait for it."""
    sending = asyncio.Event()
    sent: list[int] = []

    async def send(batch: Batch[None], entry: Outgoing) -> None:
        sending.set()
        with suppress(asyncio.CancelledError):
            await asyncio.sleep(30)  # the cancellation is lost here, as the timeout's would be
        sent.append(entry.fd)

    entries = [make_entry(fd) for fd in (1, 2, 3)]

    async def a_pass_cancelled_mid_delivery() -> None:
        async with SenderPool[None](1, may_start=lambda batch: True, send=send) as pool:
            pool.add(Batch(0, entries, None, 0.0))
            await sending.wait()
            raise LeaseLost("the lease ended")

    with pytest.raises(LeaseLost):
        await asyncio.wait_for(a_pass_cancelled_mid_delivery(), timeout=10)
    assert sent == [1]  # the one in flight finished; nothing more was taken
