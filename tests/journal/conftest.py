"""Fixtures for the journal tests: a real SQLite file in tmp_path and a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kktd.journal import Journal

T0 = 1_700_000_000.0


class Clock:
    """A wall clock that stands still until the test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kktd.db"


@pytest.fixture
async def journal(db_path: Path, clock: Clock) -> AsyncIterator[Journal]:
    j = await Journal.open(db_path, clock=clock)
    try:
        yield j
    finally:
        await j.close()
