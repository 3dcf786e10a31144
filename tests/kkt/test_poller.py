"""The poller against the emulated KKT on a real pty and a real SQLite journal."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kktd.config import KktConfig, StartFd
from kktd.journal import Journal, JournalFullError
from kktd.journal.rows import NewFd
from kktd.kkt.commands import Command, ErrorCode, OfdStatus, Request, fd_request
from kktd.kkt.link import KktLink
from kktd.kkt.poller import GROUP_MAX, Poller
from kktd.kkt.tlv import encode_tlv
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.documents import EmulatedDocument
from kktd.testbed.emulator.pty import PtyEmulator
from tests.support.clock import FakeClock
from tests.support.wait import wait_until

NEW_FN = "9999078900009999"


class Harness:
    def __init__(self, emulator: PtyEmulator, journal: Journal, clock: FakeClock) -> None:
        self.emulator = emulator
        self.device = emulator.device
        self.journal = journal
        self.clock = clock
        self.wakes = 0
        self.link = KktLink(str(emulator.path), 115200, control_timeout=0.2, sleep=clock.sleep)

    def poller(self, start_fd: StartFd = "next", journal: Any = None) -> Poller:
        config = KktConfig(port=str(self.emulator.path), poll_interval=5.0, start_fd=start_fd)
        return Poller(
            self.link,
            journal or self.journal,
            config,
            on_journaled=self.wake,
            monotonic=self.clock,
            wall=lambda: 1_700_000_000.0,
            sleep=self.clock.sleep,
        )

    def wake(self) -> None:
        self.wakes += 1

    async def journaled(self, fn: str | None = None) -> list[int]:
        fn = fn or self.device.fn
        found = []
        for fd in range(1, self.device.last_fd + 1):
            entry = await self.journal.get(fn, fd)
            if entry is not None:
                original = self.device.document(fd)
                assert original is not None
                assert entry.raw == original.raw
                assert entry.fields == original.record
                found.append(fd)
        return found


@asynccontextmanager
async def harness(device: KktDevice, tmp_path: Path) -> AsyncIterator[Harness]:
    """`device` on a pty in `tmp_path`, a journal file next to it, and a link to them."""
    async with PtyEmulator(device, link=tmp_path / "kkt0") as emulator:
        journal = await Journal.open(tmp_path / "kktd.db")
        made = Harness(emulator, journal, FakeClock())
        try:
            yield made
        finally:
            await made.link.close()
            await journal.close()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(KktDevice(archive=10, strict_output=True), tmp_path) as made:
        yield made


async def test_next_skips_the_archive_and_journals_what_comes_after(h: Harness) -> None:
    poller = h.poller("next")
    assert await poller.poll() == 0
    assert await h.journal.cursor(h.device.fn) == 10
    for _ in range(3):
        h.device.issue()
    assert await poller.poll() == 3
    assert await h.journaled() == [11, 12, 13]
    assert h.wakes == 3
    status = poller.status()
    assert (status.connected, status.fn, status.last_fd, status.cursor) == (
        True,
        h.device.fn,
        13,
        13,
    )
    assert status.device_name == h.device.device_type.name


@pytest.mark.parametrize(("start_fd", "first"), [("first", 1), (7, 7)])
async def test_first_and_a_number_start_in_the_archive(
    h: Harness, start_fd: StartFd, first: int
) -> None:
    assert await h.poller(start_fd).poll() == 11 - first
    assert await h.journaled() == list(range(first, 11))


async def test_an_existing_cursor_wins_over_start_fd(h: Harness) -> None:
    await h.journal.set_cursor(h.device.fn, 4)
    await h.poller("next").poll()
    assert await h.journaled() == list(range(5, 11))


async def test_after_a_damaged_journal_the_whole_archive_is_read_whatever_start_fd_says(
    h: Harness, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not sqlite" * 1000)
    fresh = await Journal.open(damaged)
    original, h.journal = h.journal, fresh  # journaled() reads from it
    try:
        assert fresh.recovered_from is not None
        assert await h.poller("next", journal=fresh).poll() == 10
        assert await h.journaled() == list(range(1, 11))
    finally:
        h.journal = original
        await fresh.close()


async def test_a_new_fn_is_read_from_its_first_fd(h: Harness) -> None:
    poller = h.poller("next")
    await poller.poll()
    h.device.replace_fn(NEW_FN)
    for _ in range(3):
        h.device.issue()
    with capture_logs() as logs:
        assert await poller.poll() == 3
    assert await h.journaled(NEW_FN) == [1, 2, 3]
    assert "kkt.fn_replaced" in [entry["event"] for entry in logs]


async def test_a_new_empty_fn_is_reported_replaced_once_not_at_every_poll(h: Harness) -> None:
    poller = h.poller("next")
    await poller.poll()
    h.device.replace_fn(NEW_FN)
    with capture_logs() as logs:
        for _ in range(3):
            assert await poller.poll() == 0
    assert [entry["event"] for entry in logs].count("kkt.fn_replaced") == 1
    assert await h.journal.cursor(NEW_FN) == 0


async def test_a_new_fn_seen_first_after_a_restart_is_still_read_from_its_first_fd(
    h: Harness,
) -> None:
    await h.poller("next").poll()
    h.device.replace_fn(NEW_FN)
    for _ in range(3):
        h.device.issue()
    # a new Poller: this process never saw the old FN, only the journal remembers it
    assert await h.poller("next").poll() == 3
    assert await h.journaled(NEW_FN) == [1, 2, 3]


async def test_a_busy_kkt_is_retried_shortly(h: Harness) -> None:
    h.device.busy(4)
    assert await h.poller("first").poll() == 10
    assert await h.journaled() == list(range(1, 11))


class FailingOnce(KktDevice):
    """Answers one FF3B in the middle of FD 5 with an error, once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.armed = True
        self.reads = 0

    def _execute(self, request: Request) -> tuple[int, bytes]:
        if request.cmd == Command.OPEN_FD_TLV:
            self.reads = 0
        if request.cmd == Command.READ_TLV and request.data == b"":
            self.reads += 1
            output = self._output
            if self.armed and output is not None and output.fd == 5 and self.reads == 3:
                self.armed = False
                return ErrorCode.NO_TRANSPORT, b""
        return super()._execute(request)


async def test_an_error_mid_document_restarts_that_document_from_ff3a(tmp_path: Path) -> None:
    device = FailingOnce(archive=6)
    async with PtyEmulator(device, link=tmp_path / "kkt1") as emulator:
        journal = await Journal.open(tmp_path / "kktd.db")
        h = Harness(emulator, journal, FakeClock())
        try:
            with capture_logs() as logs:
                assert await h.poller("first").poll() == 6
            assert await h.journaled() == [1, 2, 3, 4, 5, 6]
        finally:
            await h.link.close()
            await journal.close()
    restarts = [e for e in logs if e["event"] == "kkt.document_restarted"]
    assert [(e["fd"], e["attempt"]) for e in restarts] == [(5, 1)]
    assert device.executed[Command.OPEN_FD_TLV] == 7


class NeverOpens(KktDevice):
    """FD 5 can never be opened as TLV."""

    def _execute(self, request: Request) -> tuple[int, bytes]:
        if request.cmd == Command.OPEN_FD_TLV and request.data == fd_request(5):
            return ErrorCode.NO_TRANSPORT, b""
        return super()._execute(request)


async def test_a_stuck_fd_is_logged_once_not_at_every_poll(
    tmp_path: Path,
) -> None:
    device = NeverOpens(archive=8)
    async with PtyEmulator(device, link=tmp_path / "kkt1") as emulator:
        journal = await Journal.open(tmp_path / "stuck.db")
        harness = Harness(emulator, journal, FakeClock())
        try:
            poller = harness.poller("first")
            with capture_logs() as logs:
                for _ in range(3):
                    assert await poller.poll() in (0, 4)
                events = [entry["event"] for entry in logs]
                assert events.count("kkt.poll_failed") == 1
                assert poller.status().last_error is not None
                assert await harness.journaled() == [1, 2, 3, 4]
        finally:
            await harness.link.close()
            await journal.close()


async def test_an_fd_that_does_not_decode_is_journaled_raw_with_the_error(h: Harness) -> None:
    poller = h.poller("next")
    await poller.poll()
    bad = encode_tlv(1040, b"\x0b\x00\x00")  # an FD number of three bytes
    h.device.add(EmulatedDocument(11, 3, bad, {}))
    with capture_logs() as logs:
        assert await poller.poll() == 1
    entry = await h.journal.get(h.device.fn, 11)
    assert entry is not None
    assert entry.raw == bad
    assert entry.fields["doc_kind"] == "receipt"  # FF3A said so; only the TLV is broken
    assert entry.fields["doc_type"] == 3
    assert "1040" in entry.fields["decode_error"]
    assert "kkt.decode_failed" in [e["event"] for e in logs]


class FullJournal:
    """The real journal behind a disk that is full for the next `full` stores."""

    def __init__(self, journal: Journal, full: int) -> None:
        self.journal = journal
        self.full = full

    async def cursor(self, fn: str) -> int | None:
        return await self.journal.cursor(fn)

    async def set_cursor(self, fn: str, fd: int) -> None:
        await self.journal.set_cursor(fn, fd)

    async def known_fns(self) -> list[str]:
        return await self.journal.known_fns()

    async def reread_pending(self) -> bool:
        return await self.journal.reread_pending()

    async def store(
        self, fn: str, fd: int, doc_type: int, raw: bytes, fields: Mapping[str, Any]
    ) -> bool:
        if self.full > 0:
            self.full -= 1
            raise JournalFullError("database or disk is full")
        return await self.journal.store(fn, fd, doc_type, raw, fields)

    async def store_many(self, fds: Sequence[NewFd]) -> list[bool]:
        if self.full > 0:  # one transaction: one full disk
            self.full -= 1
            raise JournalFullError("database or disk is full")
        return await self.journal.store_many(fds)


class SlowJournal(FullJournal):
    """The real journal, whose commit of FD `hold` waits until the test lets it go."""

    def __init__(self, journal: Journal, hold: int) -> None:
        super().__init__(journal, full=0)
        self.hold = hold
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def store(
        self, fn: str, fd: int, doc_type: int, raw: bytes, fields: Mapping[str, Any]
    ) -> bool:
        if fd == self.hold:
            self.holding.set()
            await self.release.wait()
        return await self.journal.store(fn, fd, doc_type, raw, fields)

    async def store_many(self, fds: Sequence[NewFd]) -> list[bool]:
        if self.hold in [doc.fd for doc in fds]:
            self.holding.set()
            await self.release.wait()
        return await self.journal.store_many(fds)


async def test_a_stop_while_an_fd_is_being_committed_still_commits_it(tmp_path: Path) -> None:
    device = KktDevice(archive=3, strict_output=True)
    async with PtyEmulator(device, link=tmp_path / "kkt3") as emulator:
        journal = await Journal.open(tmp_path / "slow.db")
        harness = Harness(emulator, journal, FakeClock())
        try:
            slow = SlowJournal(journal, hold=3)  # the last FD: the poll then waits on its commit
            poll = asyncio.create_task(harness.poller("first", journal=slow).poll())
            await asyncio.wait_for(slow.holding.wait(), 10)
            poll.cancel()
            slow.release.set()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            assert await harness.journaled() == [1, 2, 3]  # FD 3's commit was not cut short
            assert await journal.cursor(device.fn) == 3
        finally:
            await harness.link.close()
            await journal.close()


async def test_a_full_journal_pauses_reading_and_resumes_when_there_is_room(h: Harness) -> None:
    poller = h.poller("first", journal=FullJournal(h.journal, full=2))
    with capture_logs() as logs:
        assert await poller.poll() == 0
        assert poller.status().journal_blocked == "database or disk is full"
        assert await poller.poll() == 0
        assert await poller.poll() == 10
    assert poller.status().journal_blocked is None
    assert await h.journaled() == list(range(1, 11))
    events = [e["event"] for e in logs]
    assert events.count("journal.full") == 1
    assert events.count("journal.unblocked") == 1


async def test_ff39_is_read_at_connect_and_at_least_once_a_minute(h: Harness) -> None:
    poller = h.poller("next")
    h.device.ofd_confirmed_fd = 7
    await poller.poll()
    assert h.device.executed[Command.OFD_STATUS] == 1
    first_unsent = h.device.document(8)
    assert first_unsent is not None
    assert first_unsent.issued_at is not None
    at = first_unsent.issued_at.replace(second=0)  # DATE_TIME5 stops at minutes
    assert poller.status().ofd == OfdStatus(2, False, 3, 8, at)
    assert poller.status().ofd_read_at == 1_700_000_000.0
    h.clock.now += 30
    await poller.poll()
    assert h.device.executed[Command.OFD_STATUS] == 1
    h.clock.now += 31
    await poller.poll()
    assert h.device.executed[Command.OFD_STATUS] == 2


async def test_an_unknown_error_code_is_logged_with_its_code_and_polling_carries_on(
    h: Harness,
) -> None:
    poller = h.poller("first")
    h.device.password = 31  # every command with a password now fails with 0x4f
    with capture_logs() as logs:
        assert await poller.poll() == 0
    errors = [e for e in logs if e["event"] == "kkt.error"]
    assert [(e["code"], e["name"]) for e in errors] == [("0x4f", "unknown_0x4f")]
    assert "unknown_0x4f" in (poller.status().last_error or "")
    h.device.password = 30
    assert await poller.poll() == 10
    assert poller.status().last_error is None


async def test_a_document_left_open_by_a_dead_kktd_is_drained_first(h: Harness) -> None:
    other = KktLink(str(h.emulator.path), 115200)
    await other.request(Command.OPEN_FD_TLV, fd_request(3))
    await other.request(Command.READ_TLV)
    await other.close()  # killed mid-document: the FN stays in data-output mode
    with capture_logs() as logs:
        assert await h.poller("first").poll() == 10
    assert await h.journaled() == list(range(1, 11))
    assert "kkt.output_drained" in [e["event"] for e in logs]


async def test_run_beats_every_second_even_while_the_kkt_is_gone_and_stops_on_cancel(
    h: Harness,
) -> None:
    beats: list[float] = []
    poller = h.poller("next")
    task = asyncio.create_task(poller.run(lambda: beats.append(h.clock.now)))
    while h.clock.now < 1012:
        await asyncio.sleep(0.001)
    h.emulator.vanish()
    await wait_until(lambda: h.clock.now >= 1040, interval=0.001, what="the clock at 1040")
    assert not poller.status().connected
    h.emulator.reappear()
    h.device.issue()
    await wait_until(lambda: h.journal.get(h.device.fn, 11), timeout=10, interval=0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) <= 1.0
    assert beats[-1] - beats[0] >= 40


class GroupJournal(FullJournal):
    """The real journal, recording each commit's FDs and what the poller had counted before."""

    def __init__(self, journal: Journal, harness: Harness) -> None:
        super().__init__(journal, full=0)
        self.harness = harness
        self.groups: list[list[int]] = []
        self.counted_before: list[int] = []

    async def store_many(self, fds: Sequence[NewFd]) -> list[bool]:
        self.counted_before.append(self.harness.wakes)
        self.groups.append([doc.fd for doc in fds])
        return await self.journal.store_many(fds)


async def test_fds_read_back_to_back_are_committed_in_groups_in_order(tmp_path: Path) -> None:
    async with harness(KktDevice(archive=40, strict_output=True), tmp_path) as made:
        journal = GroupJournal(made.journal, made)
        poller = made.poller("first", journal=journal)
        assert await poller.poll() == 40
        assert await made.journaled() == list(range(1, 41))
        assert [fd for group in journal.groups for fd in group] == list(range(1, 41))
        assert max(len(group) for group in journal.groups) > 1  # grouped, not one by one
        assert all(len(group) <= GROUP_MAX for group in journal.groups)
        # nothing counted as journaled before its commit: each commit starts with the count
        # of the FDs in the commits before it
        sizes = [len(group) for group in journal.groups]
        assert journal.counted_before == [sum(sizes[:i]) for i in range(len(sizes))]
        assert made.wakes == 40
        assert poller.status().cursor == 40
