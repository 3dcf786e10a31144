"""Fixtures shared by the whole suite: real processes on free ports, never the shared services.

The session fails when a process it started is still running at its end (`tests.support.
leftovers`): a fixture or test that does not stop what it starts breaks the next runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import structlog

from kktd.journal import Journal
from tests.support import leftovers
from tests.support.clock import T0, FakeClock
from tests.support.redis_server import RedisServer

_MARK = pytest.StashKey[str]()
_BEFORE = pytest.StashKey[set[tuple[int, int]]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    mark = leftovers.mark_session()
    session.config.stash[_MARK] = mark
    session.config.stash[_BEFORE] = {p.key for p in leftovers.processes(mark)}


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if _MARK not in config.stash:
        return
    tmp_dirs = [config._tmp_path_factory.getbasetemp()]  # type: ignore[attr-defined]
    found = leftovers.wait_for_leftovers(config.stash[_MARK], config.stash[_BEFORE], tmp_dirs)
    if not found:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in leftovers.report(found):
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)  # no terminal reporter (-p no:terminal): still say it
    leftovers.kill(found)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private `redis-server` on a free loopback port, killed at the end of the test."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()  # a start that timed out, too


@pytest.fixture
def clock() -> FakeClock:
    """A monotonic clock that moves only when the test moves it."""
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    """A wall clock standing at T0 until the test moves it."""
    return FakeClock(T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kktd.db"


@pytest.fixture
def journal_clock() -> Callable[[], float]:
    """What the `journal` fixture stamps rows with: real time, unless a folder or module
    overrides this fixture with a fake clock (tests/journal, tests/sync/test_engine.py)."""
    return time.time


@pytest.fixture
async def journal(db_path: Path, journal_clock: Callable[[], float]) -> AsyncIterator[Journal]:
    """The suite's journal: a real SQLite file in tmp_path, closed at the end of the test."""
    async with await Journal.open(db_path, wall=journal_clock) as opened:
        yield opened


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """In-process daemons reconfigure structlog (level, renderer); no test may inherit that."""
    yield
    structlog.reset_defaults()
