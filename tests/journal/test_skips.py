"""Skipped FDs (`kktd skip`, schema version 3): recorded with who and why, the cursor moved past
them in the same transaction, and refused for any FD that is not the next one to read."""

from __future__ import annotations

from pathlib import Path

import pytest

from kktd.journal import Journal
from kktd.journal.skips import Requester, SkipRefused, list_skips, record_skip, skipped_count
from tests.support.clock import T0

FN = "9999078900005488"
WHO = Requester("alice", "uid 1000 (alice), pid 4242", "api token")


async def skip(journal: Journal, fd: int, fn: str = FN) -> None:
    await record_skip(journal, fn, fd, reason="unreadable", requester=WHO, read_error="0x11")


async def test_a_skip_is_kept_with_who_when_why_and_moves_the_cursor(journal: Journal) -> None:
    await journal.store(FN, 1, 3, b"\x01", {})
    record = await record_skip(
        journal, FN, 2, reason="service centre: FD 2 is unreadable", requester=WHO, read_error="x"
    )
    assert record.to_dict() == {
        "fn": FN,
        "fd": 2,
        "skipped_at": T0,
        "reason": "service centre: FD 2 is unreadable",
        "operator": "alice",
        "peer": "uid 1000 (alice), pid 4242",
        "auth": "api token",
        "read_error": "x",
    }
    assert await journal.cursor(FN) == 2
    assert await journal.get(FN, 2) is None  # nothing journaled, nothing to deliver
    assert await list_skips(journal) == [record]
    assert await skipped_count(journal) == 1


async def test_a_first_fd_can_be_skipped_before_any_cursor_exists(journal: Journal) -> None:
    await skip(journal, 1)
    assert await journal.cursor(FN) == 1


@pytest.mark.parametrize(
    ("fd", "name", "detail"),
    [
        (1, "journaled", "in the journal already"),
        (3, "not_next", "only FD 2 can be skipped"),
    ],
)
async def test_only_the_next_fd_to_read_can_be_skipped(
    journal: Journal, fd: int, name: str, detail: str
) -> None:
    await journal.store(FN, 1, 3, b"\x01", {})
    with pytest.raises(SkipRefused, match=detail) as refused:
        await skip(journal, fd)
    assert refused.value.name == name
    assert await journal.cursor(FN) == 1  # nothing changed
    assert await skipped_count(journal) == 0


async def test_a_skip_is_never_recorded_twice(journal: Journal) -> None:
    await skip(journal, 1)
    await journal.set_cursor(FN, 0)  # as if the cursor had been put back by hand
    with pytest.raises(SkipRefused, match="skipped already"):
        await skip(journal, 1)
    assert await skipped_count(journal) == 1


async def test_skips_survive_a_restart(journal: Journal, tmp_path: Path) -> None:
    await skip(journal, 1)
    path = tmp_path / "kktd.db"
    reopened = await Journal.open(path)
    try:
        assert [s.fd for s in await list_skips(reopened)] == [1]
    finally:
        await reopened.close()
