"""`kktd run` under a real NOTIFY_SOCKET: READY, watchdog, reload, stop (SPEC section 7)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kktd.config import UpstreamConfig, load_config
from kktd.control.api.server import _remove_stale
from kktd.lifecycle.daemon import Daemon
from kktd.lifecycle.systemd import Notifier
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., KktdProcess]]:
    """Starts KktdProcesses and closes every one of them at the end of the test."""
    started: list[KktdProcess] = []

    def start(*args: Any, **kwargs: Any) -> KktdProcess:
        started.append(KktdProcess(*args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        proc.close()


async def get_json(sock: Path, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
        session.get(f"http://localhost{path}") as resp,
    ):
        return resp.status, await resp.json()


async def test_ready_arrives_with_no_kkt_and_health_says_degraded(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    daemon = daemon_factory(write_config(tmp_path))
    index = daemon.wait_ready()
    ready = daemon.messages[index][1]
    assert "STATUS=KKT offline" in ready
    status, body = await get_json(daemon.api_socket, "/v1/health")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["components"]["kkt"] == "offline"  # type: ignore[index]


def test_watchdog_pings_at_about_half_the_interval(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    daemon = daemon_factory(write_config(tmp_path), watchdog_usec=1_000_000)
    daemon.wait_ready()
    first = daemon.wait_for(lambda m: m == "WATCHDOG=1")
    last = first
    for _ in range(4):
        last = daemon.wait_for(lambda m: m == "WATCHDOG=1", start=last + 1)
    pings = [t for t, m in daemon.messages[first : last + 1] if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(gaps) == 4
    # half of 1 s; generous bounds, a loaded 2-core box delays timers
    assert all(0.3 < gap < 0.9 for gap in gaps), gaps


def test_a_blocked_event_loop_stops_the_pings(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    wrapper = Path(__file__).parent / "support" / "blocking_daemon.py"
    daemon = daemon_factory(
        write_config(tmp_path), watchdog_usec=400_000, argv=[sys.executable, str(wrapper), "run"]
    )
    daemon.wait_ready()
    daemon.wait_for(lambda m: m == "WATCHDOG=1")
    daemon.signal(signal.SIGUSR2)  # the wrapper blocks the loop for 3 s with time.sleep
    marker = daemon.wait_for(lambda m: m == "STATUS=test: blocking")
    blocked_at = daemon.messages[marker][0]
    resumed = daemon.wait_for(lambda m: m == "WATCHDOG=1", start=marker + 1, timeout=20)
    assert daemon.messages[resumed][0] - blocked_at > 2.5


def test_sighup_with_a_good_config_reloads_and_says_ready_again(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    config = write_config(tmp_path)
    daemon = daemon_factory(config)
    ready = daemon.wait_ready()
    config.write_text(config.read_text().replace('interval = "1s"', 'interval = "2s"'))
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_for(
        lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="), start=ready + 1
    )
    usec = int(daemon.messages[reloading][1].split("MONOTONIC_USEC=")[1])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
    after = daemon.wait_for(lambda m: m.startswith("READY=1"), start=reloading + 1)
    assert "FAILED" not in daemon.messages[after][1]
    daemon.wait_for(lambda _: '"config.reloaded"' in daemon.log(), timeout=5, start=0)


async def test_sighup_with_a_bad_config_keeps_the_old_one_and_reports_it(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    config = write_config(tmp_path)
    daemon = daemon_factory(config)
    ready = daemon.wait_ready()
    good = config.read_text()
    config.write_text(good + "\n[sync]\nbatch_sise = 3\n")
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_for(lambda m: m.startswith("RELOADING=1"), start=ready + 1)
    after = daemon.wait_for(lambda m: m.startswith("READY=1"), start=reloading + 1)
    # a second [sync] table is a TOML error: the line shows where
    assert "config reload FAILED (kktd.toml:" in daemon.messages[after][1]
    status, body = await get_json(daemon.api_socket, "/v1/status")
    assert status == 200
    reload = body["config"]["reload"]  # type: ignore[index]
    assert reload["ok"] is False
    assert "sync" in reload["error"]
    failed = [json.loads(line) for line in daemon.log().splitlines() if "reload_failed" in line]
    assert failed
    assert failed[0]["level"] == "error"
    assert daemon.alive


def test_sigterm_says_stopping_and_exits_zero(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    daemon = daemon_factory(write_config(tmp_path))
    daemon.wait_ready()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert any(m.startswith("STOPPING=1") for _, m in daemon.messages)
    assert '"daemon.stopped"' in daemon.log()


def test_a_bad_config_at_start_exits_78_naming_file_line_and_key(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    config = write_config(tmp_path, extra="\n[upstream]\ntimeot = 5\n")
    daemon = daemon_factory(config)
    assert daemon.wait_exit() == 78
    assert f"{config}:" in daemon.log()
    assert "upstream" in daemon.log()


def test_a_start_that_cannot_listen_exits_1_instead_of_hanging(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path)
        text = config.read_text()
        config.write_text(
            text.replace(f'listen = "unix:{tmp_path / "api.sock"}"', f'listen = "127.0.0.1:{port}"')
        )
        daemon = daemon_factory(config)
        assert daemon.wait_exit(timeout=30) == 1
    assert '"daemon.start_failed"' in daemon.log()
    assert not any(m.startswith("READY=1") for _, m in daemon.messages)


def test_a_second_kktd_on_the_same_journal_refuses_to_start(
    tmp_path: Path, daemon_factory: Callable[..., KktdProcess]
) -> None:
    first = daemon_factory(write_config(tmp_path))
    first.wait_ready()
    other = tmp_path / "second"
    other.mkdir()
    config = write_config(other)
    config.write_text(config.read_text().replace(str(other / "kktd.db"), str(tmp_path / "kktd.db")))
    second = daemon_factory(config)
    assert second.wait_exit(timeout=30) == 1
    assert "another kktd" in second.log()
    assert first.alive


async def test_a_live_api_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(OSError, match="another process answers"):
            _remove_stale(path)
    _remove_stale(path)  # now a stale file of a dead process: removed
    assert not path.exists()


async def test_a_reload_a_component_refuses_keeps_the_old_config_and_says_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        daemon = Daemon(
            config_path, config, instance="t", notifier=Notifier(str(notify)), environ={}
        )
        await daemon.startup()
        try:
            assert daemon.components is not None
            calls = 0
            original = daemon.components.client.reconfigure

            def refuse_once(cfg: UpstreamConfig) -> None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise ValueError("refused by the client")
                original(cfg)

            monkeypatch.setattr(daemon.components.client, "reconfigure", refuse_once)
            config_path.write_text(config_path.read_text().replace('"1s"', '"3s"'))
            result = await daemon.reload()
            assert not result.ok
            assert "refused by the client" in (result.error or "")
            assert daemon.config.sync.interval == 1.0
            assert calls == 2  # the old config was put back
            assert daemon.reloads == {"ok": 0, "failed": 1}
            sock.settimeout(5)
            received = [sock.recv(4096).decode() for _ in range(3)]
            # READY of the start, then RELOADING, then READY again whatever the outcome
            assert [m.split("\n")[0] for m in received] == ["READY=1", "RELOADING=1", "READY=1"]
            assert "config reload FAILED" in received[2]
        finally:
            await daemon.shutdown()


async def test_a_second_stop_signal_forces_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = write_config(tmp_path)
    daemon = Daemon(
        config_path, load_config(config_path), instance="t", notifier=Notifier(None), environ={}
    )
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    daemon._on_stop_signal(signal.SIGTERM)
    assert exits == []
    daemon._on_stop_signal(signal.SIGTERM)
    assert exits == [1]
