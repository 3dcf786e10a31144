"""An in-process daemon with real components: a journal file, the engine, a mock upstream, and
the KKT emulator on a real pty when a test needs the KKT side too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kktd.config import (
    ApiConfig,
    BreakerConfig,
    Config,
    JournalConfig,
    KktConfig,
    Secret,
    SyncConfig,
    UpstreamConfig,
)
from kktd.control.api.server import create_app
from kktd.lifecycle.components import Components
from kktd.lifecycle.daemon import Daemon
from kktd.lifecycle.systemd import Notifier
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.emulator.pty import PtyEmulator
from kktd.testbed.mock_upstream import MockUpstream

FN = "9999078900005488"
TOKEN = "api-s3cret"

# the subscript quoted: TestClient is generic at run time only from aiohttp 3.11 (kktd needs 3.10)
ClientFactory = Callable[[web.Application], Awaitable["TestClient[web.Request, web.Application]"]]


def make_config(tmp_path: Path, upstream: str, **sections: Any) -> Config:
    """A config for a daemon without a KKT, whose journal and API socket live in `tmp_path`."""
    config = Config(
        kkt=KktConfig(port=str(tmp_path / "no-such-kkt")),
        journal=JournalConfig(path=tmp_path / "kktd.db"),
        upstream=UpstreamConfig(url=upstream, timeout=2.0),
        sync=SyncConfig(interval=1.0, batch_size=10),
        breaker=BreakerConfig(failure_threshold=2, reset_timeout=60.0),
        api=ApiConfig(listen=f"unix:{tmp_path / 'api.sock'}", token=Secret(TOKEN)),
        source=tmp_path / "kktd.toml",
    )
    return replace(config, **sections)


async def build_daemon(config: Config, instance: str = "till-1") -> Daemon:
    assert config.source is not None
    daemon = Daemon(config.source, config, instance=instance, notifier=Notifier(None), environ={})
    daemon.attach(await Components.build(config, instance))
    return daemon


async def journal_fds(daemon: Daemon, *fds: int, fn: str = FN) -> None:
    assert daemon.components is not None
    for fd in fds:
        fields = {"doc_type": 3, "doc_kind": "receipt", "total": 100 * fd, "items": []}
        await daemon.components.journal.store(fn, fd, 3, b"\x01\x02" + bytes([fd % 256]), fields)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    mock = MockUpstream()
    await mock.start()
    yield mock
    await mock.stop()


@dataclass
class Harness:
    daemon: Daemon
    client: TestClient[web.Request, web.Application]
    upstream: MockUpstream

    @property
    def components(self) -> Components:
        assert self.daemon.components is not None
        return self.daemon.components


@pytest.fixture
async def harness(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> AsyncIterator[Harness]:
    daemon = await build_daemon(make_config(tmp_path, upstream.url))
    client = await aiohttp_client(create_app(daemon.runtime))
    yield Harness(daemon, client, upstream)
    assert daemon.components is not None
    await daemon.components.close()


def kkt_config(tmp_path: Path) -> KktConfig:
    """The emulator's link in `tmp_path`, read from FD 1, polled fast."""
    return KktConfig(port=str(tmp_path / "kkt0"), start_fd="first", poll_interval=0.1)


@asynccontextmanager
async def polled_kkt(daemon: Daemon, device: KktDevice) -> AsyncIterator[PtyEmulator]:
    """`device` on a pty at the daemon's kkt.port, with the daemon's poller reading it."""
    assert daemon.components is not None
    emulator = PtyEmulator(device, link=Path(daemon.config.kkt.port))
    await emulator.start()
    poller = asyncio.create_task(daemon.components.poller.run(lambda: None))
    try:
        yield emulator
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await emulator.stop()
