"""The journal tests stamp rows with a wall clock they move: `clock` is the suite's `wall`."""

from __future__ import annotations

import pytest

from tests.support.clock import FakeClock


@pytest.fixture
def clock(wall: FakeClock) -> FakeClock:
    return wall


@pytest.fixture
def journal_clock(wall: FakeClock) -> FakeClock:
    return wall
