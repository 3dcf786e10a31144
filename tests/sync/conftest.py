"""Fixtures the sync tests share: the mock upstream on loopback (the journal is the suite's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kktd.testbed.mock_upstream import MockUpstream
from tests.support.upstream import running_mock


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with running_mock() as upstream:
        yield upstream
