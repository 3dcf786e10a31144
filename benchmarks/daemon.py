"""kktd for the benchmarks: the tests' `KktdProcess` (a child under a NOTIFY_SOCKET of our own, as
systemd runs it) with a till's minimal config, and the waits the benchmarks share."""

from __future__ import annotations

from pathlib import Path

from kktd.testbed.mock_upstream import MockUpstream
from tests.support.config import render_config
from tests.support.kktd_process import READY_WITHIN, KktdProcess
from tests.support.wait import wait_until


def write_config(directory: Path, *, port: Path, upstream: str, poll: str = "1s") -> Path:
    """Only what a till must set; everything else at kktd's defaults (warnings only: a debug
    log would be part of what is measured)."""
    text = render_config(
        directory,
        kkt={"port": port, "poll_interval": poll, "start_fd": "first"},
        upstream={"url": upstream, "timeout": None},
        sync=None,
        log={"level": "warning"},
    )
    path = directory / "kktd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def ready_seconds(kktd: KktdProcess) -> float:
    """Block until READY=1; the seconds from spawn to it. kktd's socket is read from then on, as
    systemd does: its STATUS= lines must not pile up unread."""
    index = kktd.wait_ready(READY_WITHIN)
    kktd.read_in_background()
    return kktd.messages[index][0] - kktd.started


async def until_accepted(
    mock: MockUpstream, fds: int, kktd: KktdProcess, within: float, interval: float
) -> None:
    """Until the upstream accepted `fds` FDs; fails when kktd exits or `within` s pass."""

    def accepted() -> bool:
        assert kktd.alive, f"kktd exited: {kktd.tail()}"
        return len(mock.state.accepted) >= fds

    await wait_until(
        accepted,
        timeout=within,
        interval=interval,
        what=f"{fds} FDs accepted",
        detail=lambda: f"{len(mock.state.accepted)} accepted: {kktd.tail()}",
    )
