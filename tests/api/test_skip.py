"""`kktd skip` end to end: POST /v1/kkt/skip and the CLI command against a daemon with real
components, an emulated KKT on a real pty whose FD 4 can never be read, and a real journal."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from kktd.control.api.server import ApiServer, create_app
from kktd.journal.skips import list_skips
from kktd.lifecycle.daemon import Daemon
from kktd.testbed.emulator.device import KktDevice
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import (
    FN,
    ClientFactory,
    auth,
    build_daemon,
    kkt_config,
    make_config,
    polled_kkt,
)
from tests.api.test_commands import Served, _main, client_config
from tests.api.test_metrics import parse
from tests.kkt.test_poller_reads import OTHER_FN, foreign
from tests.support.wait import wait_until

REASON = "service centre ticket 4711: FD 4 cannot be read out of the FN"


def stuck_device() -> KktDevice:
    """FDs 1-3, FD 4 answering with another FN's 1041 on every read, then FDs 5 and 6."""
    device = KktDevice(archive=3, strict_output=True)
    device.add(foreign(4, OTHER_FN))
    device.issue()
    device.issue()
    return device


async def stuck_at(daemon: Daemon, fd: int) -> None:
    assert daemon.components is not None
    poller = daemon.components.poller

    async def stuck() -> bool:  # and skippable: it failed poll after poll
        status = poller.status().stuck
        return status is not None and status.fd == fd and status.polls >= 2

    await wait_until(stuck)


async def journaled(daemon: Daemon) -> list[int]:
    assert daemon.components is not None
    journal = daemon.components.journal
    return [fd for fd in range(1, 8) if await journal.get(FN, fd) is not None]


@dataclass
class Api:
    daemon: Daemon
    client: TestClient[web.Request, web.Application]

    async def skip(self, body: Any, *, token: bool = True) -> tuple[int, dict[str, Any]]:
        headers = {**(auth() if token else {}), "X-Kktd-Operator": "alice"}
        resp = await self.client.post("/v1/kkt/skip", json=body, headers=headers)
        return resp.status, await resp.json()


@pytest.fixture
async def api(
    tmp_path: Path, upstream: MockUpstream, aiohttp_client: ClientFactory
) -> AsyncIterator[Api]:
    daemon = await build_daemon(make_config(tmp_path, upstream.url, kkt=kkt_config(tmp_path)))
    client = await aiohttp_client(create_app(daemon.runtime))
    async with polled_kkt(daemon, stuck_device()):
        yield Api(daemon, client)
    assert daemon.components is not None
    await daemon.components.close()


async def test_the_stuck_fd_is_skipped_audited_and_reading_goes_on(api: Api) -> None:
    await stuck_at(api.daemon, 4)
    assert await journaled(api.daemon) == [1, 2, 3]
    status, body = await api.skip({"fn": FN, "fd": 4, "reason": REASON})
    assert status == 200, body
    assert body["status"] == "skipped"
    assert (body["fn"], body["fd"], body["reason"]) == (FN, 4, REASON)
    assert (body["operator"], body["peer"], body["auth"]) == ("alice", "127.0.0.1", "api token")
    assert "1041" in body["read_error"]

    async def read_on() -> bool:
        return await journaled(api.daemon) == [1, 2, 3, 5, 6]

    await wait_until(read_on)
    assert api.daemon.components is not None
    [record] = await list_skips(api.daemon.components.journal)
    assert record.to_dict() == {k: v for k, v in body.items() if k != "status"}

    snapshot = await (await api.client.get("/v1/status")).json()
    assert snapshot["journal"]["skipped"] == 1
    assert [s["fd"] for s in snapshot["journal"]["skips"]] == [4]
    assert snapshot["kkt"]["stuck"] is None
    metrics = parse(await (await api.client.get("/metrics")).text())
    assert metrics[("kktd_documents_skipped_total", ())] == 1

    again, refused = await api.skip({"fn": FN, "fd": 4, "reason": REASON})
    assert (again, refused["error"]) == (409, "not_stuck")


async def test_an_fd_that_is_not_the_stuck_one_is_refused_and_nothing_changes(api: Api) -> None:
    await stuck_at(api.daemon, 4)
    for fd in (3, 5):
        status, body = await api.skip({"fn": FN, "fd": fd, "reason": REASON})
        assert (status, body["error"]) == (409, "not_stuck")
        assert "FD 4 of FN" in body["detail"]
    status, body = await api.skip({"fn": OTHER_FN, "fd": 4, "reason": REASON})
    assert (status, body["error"]) == (409, "not_stuck")
    assert api.daemon.components is not None
    assert await list_skips(api.daemon.components.journal) == []
    assert await api.daemon.components.journal.cursor(FN) == 3
    metrics = parse(await (await api.client.get("/metrics")).text())
    assert metrics[("kktd_documents_skipped_total", ())] == 0


async def test_a_skip_needs_the_api_token(api: Api) -> None:
    await stuck_at(api.daemon, 4)
    status, body = await api.skip({"fn": FN, "fd": 4, "reason": REASON}, token=False)
    assert (status, body["error"]) == (401, "unauthorized")
    assert api.daemon.components is not None
    assert await list_skips(api.daemon.components.journal) == []


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"fd": 4, "reason": REASON}, "fn:"),
        ({"fn": "999907890000548", "fd": 4, "reason": REASON}, "fn:"),
        ({"fn": FN, "fd": "4", "reason": REASON}, "fd:"),
        ({"fn": FN, "fd": 0, "reason": REASON}, "fd:"),
        ({"fn": FN, "fd": True, "reason": REASON}, "fd:"),
        ({"fn": FN, "fd": 4}, "reason:"),
        ({"fn": FN, "fd": 4, "reason": "   "}, "reason:"),
        ({"fn": FN, "fd": 4, "reason": "two\nlines"}, "reason:"),
        ({"fn": FN, "fd": 4, "reason": "x" * 501}, "at most 500"),
        ([FN, 4, REASON], "JSON object"),
    ],
)
async def test_a_bad_body_is_400_naming_the_field(api: Api, body: Any, named: str) -> None:
    status, answer = await api.skip(body)
    assert status == 400
    assert answer["error"] == "bad_parameter"
    assert named in answer["detail"]


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
async def served(
    tmp_path: Path, upstream: MockUpstream, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Served]:
    with capture_logs():
        daemon = await build_daemon(make_config(tmp_path, upstream.url, kkt=kkt_config(tmp_path)))
        server = ApiServer(daemon.runtime)
        await server.start(daemon.config.api)
        async with polled_kkt(daemon, stuck_device()):
            config = client_config(tmp_path, daemon.config.api.listen)
            yield Served(daemon, config, upstream, capsys)
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


async def test_kktd_skip_skips_the_stuck_fd_and_says_who_is_recorded(served: Served) -> None:
    await stuck_at(served.daemon, 4)
    code, out, err = await served.kktd("skip", FN, "5", "--reason", REASON)
    assert (code, out) == (1, "")
    assert "not the FD kktd is stuck on" in err
    code, out, err = await served.kktd("skip", FN, "4", "--reason", REASON, "--json")
    assert code == 0, err
    record = json.loads(out)
    me = pwd.getpwuid(os.getuid()).pw_name
    # the peer is what the daemon saw over its unix socket, not what the client said
    assert record["peer"] == f"uid {os.getuid()} ({me}), pid {os.getpid()}"
    assert record["operator"] in (me, f"{os.environ.get('SUDO_USER')} via sudo as {me}")
    code, out, err = await served.kktd("status")
    assert code == 0, err
    assert "1 skipped by hand (kktd skip)" in out


async def test_kktd_skip_prints_a_readable_line(served: Served) -> None:
    await stuck_at(served.daemon, 4)
    code, out, err = await served.kktd("status")
    assert f"`kktd skip {FN} 4 --reason TEXT`" in out
    code, out, err = await served.kktd("skip", FN, "4", "--reason", REASON)
    assert code == 0, err
    assert out.startswith(f"FD 4 of FN {FN} is skipped: kktd reads on from FD 5.\n")
    assert f"(uid {os.getuid()} (" in out  # the peer the daemon saw
    assert out.rstrip().endswith(REASON)


@pytest.mark.parametrize(
    "args",
    [
        ["skip", FN, "4"],  # no reason
        ["skip", FN, "4", "--reason", " "],
        ["skip", FN[:-1], "4", "--reason", REASON],
        ["skip", FN, "0", "--reason", REASON],
    ],
)
async def test_kktd_skip_usage_errors_exit_2(served: Served, args: list[str]) -> None:
    code, out, _ = await served.kktd(*args)
    assert (code, out) == (2, "")
    assert served.daemon.components is not None
    assert await list_skips(served.daemon.components.journal) == []


async def test_kktd_skip_without_a_daemon_exits_3(tmp_path: Path) -> None:
    config = client_config(tmp_path, f"unix:{tmp_path / 'nobody.sock'}")
    code = await asyncio.to_thread(
        _main, ["skip", FN, "4", "--reason", REASON, "--config", str(config)]
    )
    assert code == 3
