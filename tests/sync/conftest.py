"""Fixtures the sync tests share: a real journal file and the mock upstream on loopback.

(test_engine.py and test_outage.py still define their own, with a clock or a shared file.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kktd.journal import Journal
from kktd.mock_upstream import MockUpstream
from tests.support.upstream import running_mock


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "kktd.db")
    try:
        yield j
    finally:
        await j.close()


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with running_mock() as upstream:
        yield upstream
