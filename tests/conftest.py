"""Fixtures shared by the whole suite: real processes on free ports, never the shared services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private `redis-server` on a free loopback port, killed at the end of the test."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """In-process daemons reconfigure structlog (level, renderer); no test may inherit that."""
    yield
    structlog.reset_defaults()
