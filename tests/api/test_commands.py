"""The client commands against a served daemon: tables, --json, exit codes (SPEC section 6).

Most tests run `kktd.cli.main` in a worker thread (it runs its own event loop) against the API
of an in-process daemon with real components; a few run `kktd` as a subprocess against `kktd run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Literal

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from kktd.cli import main
from kktd.cli.csv_export import csv_header, csv_line
from kktd.control.api.server import ApiServer
from kktd.control.fleet import Heartbeat
from kktd.control.status import heartbeat
from kktd.lifecycle.components import Components
from kktd.lifecycle.daemon import Daemon
from kktd.sync.redis_lock import redis_from_url
from kktd.testbed.mock_upstream import MockUpstream
from tests.api.helpers import FN, TOKEN, build_daemon, journal_fds, make_config
from tests.support.config import write_config
from tests.support.kktd_process import KktdProcess
from tests.support.redis_server import RedisServer, free_port

CLIENT_CONFIG = """\
[upstream]
url = "http://127.0.0.1:9/v1/receipts"

[api]
listen = "{listen}"
token_file = "{token_file}"
{extra}"""


@dataclass
class Served:
    daemon: Daemon
    config: Path
    upstream: MockUpstream
    capsys: pytest.CaptureFixture[str]

    async def kktd(self, *args: str) -> tuple[int, str, str]:
        """Run `kktd ARGS --config <client config>`: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(_main, [*args, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


def client_config(directory: Path, listen: str, token: str = TOKEN, extra: str = "") -> Path:
    token_file = directory / "api.token"
    token_file.write_text(token + "\n", encoding="utf-8")
    path = directory / "client.toml"
    text = CLIENT_CONFIG.format(listen=listen, token_file=token_file, extra=extra)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def served(
    tmp_path: Path, upstream: MockUpstream, capsys: pytest.CaptureFixture[str]
) -> AsyncIterator[Served]:
    with capture_logs():  # the in-process daemon's log lines would mix with the command's output
        daemon = await build_daemon(make_config(tmp_path, upstream.url))
        server = ApiServer(daemon.runtime)
        await server.start(daemon.config.api)
        yield Served(daemon, client_config(tmp_path, daemon.config.api.listen), upstream, capsys)
        await server.stop()
        assert daemon.components is not None
        await daemon.components.close()


async def test_status_reads_as_a_report_with_the_next_action(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2)
    code, out, _ = await served.kktd("status")
    assert code == 0
    assert "on till-1, up " in out
    assert "NEEDS ATTENTION (1)" in out
    assert "KKT         OFFLINE on " in out
    assert "0 synced, 2 pending (oldest just now), 0 dead" in out
    assert "What to do:\n  - the KKT does not answer on " in out
    assert "{" not in out  # no raw dicts


async def test_status_names_a_refused_token_and_where_to_fix_it(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2, 3)
    served.upstream.set_faults(unauthorized=True)
    assert served.daemon.components is not None
    await served.daemon.components.engine.sync_now()
    code, out, _ = await served.kktd("status")
    assert code == 0
    assert "upstream refuses our token (401): check upstream.token_file" in out
    assert "circuit OPEN, next probe in 1 min" in out


async def test_status_json_is_the_api_snapshot(served: Served) -> None:
    code, out, _ = await served.kktd("status", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["instance"] == "till-1"
    assert body["journal"]["pending"] == 0


async def test_sync_reports_the_round_and_fails_while_the_circuit_is_open(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2, 3)
    code, out, _ = await served.kktd("sync")
    assert (code, out.split(" in ")[0]) == (0, "synced 3, failed 0, dead 0")
    await journal_fds(served.daemon, 4, 5)
    await served.upstream.go_down()
    await served.kktd("sync")
    code, out, _ = await served.kktd("sync")
    assert code == 1
    assert out.startswith("not synced: the upstream circuit is open: the next probe in ")
    code, out, _ = await served.kktd("sync", "--json")
    assert (code, json.loads(out)["status"]) == (1, "circuit_open")


async def test_dlq_list_shows_a_table_of_dead_fds_and_json(served: Served) -> None:
    code, out, _ = await served.kktd("dlq", "list")
    assert (code, out) == (0, "no dead FDs\n")
    await journal_fds(served.daemon, 1, 2, 3)
    assert served.daemon.components is not None
    for fd in (1, 3):
        await served.daemon.components.journal.mark_dead(FN, fd, f"FD {fd}: no INN")
    code, out, _ = await served.kktd("dlq", "list")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["FN", "FD", "KIND", "ATTEMPTS", "JOURNALED", "REASON"]
    assert lines[1].split()[:2] == [FN, "1"]
    assert lines[2].endswith("FD 3: no INN")
    code, out, _ = await served.kktd("dlq", "list", "--json", "--limit", "1")
    assert [item["fd"] for item in json.loads(out)] == [1]


async def test_dlq_retry_one_all_and_the_errors(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2, 3)
    assert served.daemon.components is not None
    for fd in (1, 2, 3):
        await served.daemon.components.journal.mark_dead(FN, fd, "bad")
    code, out, _ = await served.kktd("dlq", "retry", FN, "2")
    assert (code, out) == (
        0,
        f"FD 2 of FN {FN} is pending again: kktd delivers it in its next round\n",
    )
    code, _, err = await served.kktd("dlq", "retry", FN, "99")
    assert code == 1
    assert "404" in err
    assert "not in the journal" in err
    code, out, _ = await served.kktd("dlq", "retry", "--all")
    assert (code, out.split(":")[0]) == (0, "2 dead FDs are pending again")


@pytest.mark.parametrize(
    "args",
    [["dlq", "retry"], ["dlq", "retry", FN, "1", "--all"], ["dlq", "retry", FN], ["doc", FN, "x"]],
)
async def test_usage_errors_exit_2(served: Served, args: list[str]) -> None:
    code, _, err = await served.kktd(*args)
    assert code == 2
    assert "usage:" in err


@pytest.mark.parametrize(
    "args",
    [["doc", FN, "9" * 5000], ["doc", "9" * 5000, "1"], ["dlq", "list", "--limit", "9" * 5000]],
)
async def test_numbers_of_thousands_of_digits_are_usage_errors_in_one_short_line(
    served: Served, args: list[str]
) -> None:
    code, _, err = await served.kktd(*args)
    assert code == 2
    assert len(err.splitlines()[-1]) < 200, err


async def test_doc_shows_one_fd_decoded(served: Served) -> None:
    await journal_fds(served.daemon, 5)
    code, out, _ = await served.kktd("doc", FN, "5")
    assert code == 0
    assert out.startswith(f"FD 5 of FN {FN}: receipt, pending\n")
    assert "total     5.00" in out
    code, out, _ = await served.kktd("doc", FN, "5", "--json")
    assert json.loads(out)["tlv"] == "AQIF"
    code, _, err = await served.kktd("doc", FN, "6")
    assert code == 1
    assert "404" in err


async def test_export_streams_json_lines_and_csv(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2, 3)
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    code, out, err = await served.kktd("export", "--since", yesterday)
    assert (code, err) == (0, "")  # no progress line: stderr is not a terminal
    assert [json.loads(line)["fd"] for line in out.splitlines()] == [1, 2, 3]
    code, out, _ = await served.kktd("export", "--since", yesterday, "--format", "csv")
    rows = out.splitlines()
    assert rows[0].startswith("fn,fd,doc_type,doc_kind,issued_at,operation,total,")
    assert rows[1].startswith(f"{FN},1,3,receipt,,,100,")
    assert len(rows) == 4


async def test_export_with_a_bad_date_is_a_usage_error(served: Served) -> None:
    code, _, err = await served.kktd("export", "--since", "someday")
    assert code == 2
    assert "expected a date like 2024-05-01" in err


async def test_a_wrong_api_token_is_a_failure_that_says_so(served: Served, tmp_path: Path) -> None:
    served.config = client_config(tmp_path, served.daemon.config.api.listen, token="wrong")
    code, _, err = await served.kktd("sync")
    assert code == 1
    assert "API token" in err


async def test_an_absent_daemon_exits_3_naming_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = f"unix:{tmp_path / 'nobody.sock'}"
    config = client_config(tmp_path, listen)
    code = await asyncio.to_thread(_main, ["status", "--config", str(config)])
    assert code == 3
    assert f"kktd is not answering at {listen}" in capsys.readouterr().err


async def test_a_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[api]\nlisten = 8765\n", encoding="utf-8")
    code = await asyncio.to_thread(_main, ["status", "--config", str(config)])
    assert code == 78
    assert f"{config}:2" in capsys.readouterr().err


async def test_fleet_lists_the_heartbeats_in_redis(
    served: Served, tmp_path: Path, redis_server: RedisServer
) -> None:
    extra = f'\n[lock]\nredis_url = "{redis_server.url}"\n'
    served.config = client_config(tmp_path, served.daemon.config.api.listen, extra=extra)
    client = redis_from_url(redis_server.url, None)
    components = served.daemon.components
    assert components is not None
    try:
        await journal_fds(served.daemon, 1, 2)
        await Heartbeat(client, "till-1", lambda: heartbeat(components)).beat_once()
        await Heartbeat(client, "till-2", lambda: _other(components)).beat_once()
    finally:
        await client.aclose()
    code, out, _ = await served.kktd("fleet")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "INSTANCE",
        "FN",
        "PENDING",
        "DEAD",
        "UPSTREAM",
        "KKT",
        "FN",
        "BACKLOG",
        "SEEN",
    ]
    assert lines[1].split()[:6] == ["till-1", "-", "2", "0", "ok", "OFFLINE"]
    assert lines[2].split()[:6] == ["till-2", FN, "0", "0", "circuit", "OPEN"]
    code, out, _ = await served.kktd("fleet", "--json")
    assert [beat["instance"] for beat in json.loads(out)] == ["till-1", "till-2"]


async def _other(components: Components) -> dict[str, object]:
    beat = await heartbeat(components)
    return {**beat, "instance": "till-2", "fn": FN, "pending": 0, "breaker": "open"}


async def test_fleet_with_redis_down_names_the_redis(
    served: Served, tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.kill()
    extra = f'\n[lock]\nredis_url = "{redis_server.url}"\n'
    served.config = client_config(tmp_path, served.daemon.config.api.listen, extra=extra)
    code, _, err = await served.kktd("fleet")
    assert code == 1
    assert f"cannot read the fleet from Redis at {redis_server.url}" in err


async def test_fleet_without_redis_says_so(served: Served) -> None:
    code, _, err = await served.kktd("fleet")
    assert code == 1
    assert "no Redis configured" in err


def test_status_and_fleet_against_kktd_run(tmp_path: Path, redis_server: RedisServer) -> None:
    """The real thing: `kktd run` as a process, `kktd status` and `kktd fleet` as processes."""
    config = write_config(tmp_path, extra=f'\n[lock]\nredis_url = "{redis_server.url}"\n')
    daemon = KktdProcess(config, env={"KKTD_INSTANCE_ID": "till-9"})
    try:
        daemon.wait_ready()
        status = _run("status", config)
        assert status.returncode == 0, status.stderr
        assert "kktd 0.1.0 on till-9" in status.stdout
        fleet = _run("fleet", config)
        assert fleet.returncode == 0, fleet.stderr
        assert fleet.stdout.splitlines()[1].startswith("till-9 ")
    finally:
        daemon.close()
    gone = _run("status", config)
    assert gone.returncode == 3
    assert f"unix:{tmp_path / 'api.sock'}" in gone.stderr


def _run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kktd", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_export_on_a_terminal_shows_progress_on_stderr(served: Served) -> None:
    await journal_fds(served.daemon, 1, 2, 3)
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kktd",
            "export",
            "--since",
            "2000-01-01",
            "--config",
            str(served.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=slave,
        )
        out, _ = await proc.communicate()
        os.close(slave)
        slave = -1
        progress = _read_all(master)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert len(out.splitlines()) == 3
    assert "exported 3 FDs in " in progress


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


# ---- answers that are not kktd's API: a clear error, exit 1, never a false success ----

HTML = (
    "<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
    "<body><h1>Welcome to nginx!</h1><p>If you see this page, the web server works.</p>"
    "</body>\n</html>\n"
)
NDJSON = "application/x-ndjson"
SINCE = ("--since", "2000-01-01")
CLIENT_COMMANDS = {
    "status": ("status",),
    "status --json": ("status", "--json"),
    "sync": ("sync",),
    "dlq list": ("dlq", "list"),
    "dlq retry FN FD": ("dlq", "retry", FN, "1"),
    "dlq retry --all": ("dlq", "retry", "--all"),
    "doc": ("doc", FN, "1"),
    "export jsonl": ("export", *SINCE),
    "export csv": ("export", *SINCE, "--format", "csv"),
}
Foreign = Literal[
    "html", "html_404", "truncated_json", "json_list", "other_json", "cut", "not_http"
]
# what the one line on stderr says, for a plain call and for the export stream
SAYS: dict[Foreign, tuple[str, str]] = {
    "html": ("not kktd's API (HTTP 200, text/html): <!DOCTYPE html> <html> <head><title>",) * 2,
    "html_404": ("not kktd's API (HTTP 404, text/html): <!DOCTYPE html>",) * 2,
    "truncated_json": (
        'not kktd\'s API (HTTP 200, application/json): {"version": "0.1.0", "inst',
        "sent a line that is not kktd's export after 1 record (not a JSON object): {",
    ),
    "json_list": (
        "not kktd's API (HTTP 200, application/json; not a JSON object): [1, 2, 3]",
        "not kktd's export after 0 records (not a JSON object): [1, 2, 3]",
    ),
    "other_json": (
        "not kktd's API (HTTP 200, application/json; no ",
        'not kktd\'s export after 0 records (no \'fn\'): {"status": "ok"}',
    ),
    "cut": ("broke off: Response payload is not completed", "broke off after 2 records"),
    "not_http": ("not kktd's API (not HTTP): Bad status line",) * 2,
}


def _record(fd: int) -> bytes:
    return json.dumps({"fn": FN, "fd": fd, "doc_type": 3, "fields": {"total": fd}}).encode() + b"\n"


def _foreign_answer(kind: Foreign, export: bool) -> web.Response:
    """What a server that is not kktd sends back, as aiohttp builds it."""
    content_type = NDJSON if export else "application/json"
    if kind in ("html", "html_404"):
        return web.Response(
            text=HTML, status=404 if kind == "html_404" else 200, content_type="text/html"
        )
    if kind == "truncated_json":
        cut = _record(2)[:20] + b"\n" if export else b'{"version": "0.1.0", "instance": "till-1"'
        return web.Response(body=(_record(1) if export else b"") + cut, content_type=content_type)
    body = b"[1, 2, 3]\n" if kind == "json_list" else b'{"status": "ok"}\n'
    return web.Response(body=body, content_type=content_type)


def _raw_answer(kind: Foreign, export: bool) -> bytes:
    """What a server sends that aiohttp would not: not HTTP, or a body cut short."""
    if kind == "not_http":
        return b"SSH-2.0-OpenSSH_9.6\r\n"
    if not export:  # promises 400 bytes and sends a few
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        return head + b'{"version": "0.1.0", "instance": "till-1", "kkt": {'
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    data = _record(1) + _record(2) + _record(3)[:25]  # and then the connection drops
    return head + b"%x\r\n" % len(data) + data + b"\r\n"


async def _raw_connection(
    kind: Foreign, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(_raw_answer(kind, head.startswith(b"GET /v1/export")))
    await writer.drain()
    writer.close()


@asynccontextmanager
async def foreign_api(directory: Path, kind: Foreign) -> AsyncIterator[str]:
    """A server on a unix socket where kktd's API should be; yields its `api.listen`."""
    path = directory / "foreign.sock"
    if kind in ("cut", "not_http"):
        server = await asyncio.start_unix_server(partial(_raw_connection, kind), path=path)
        try:
            yield f"unix:{path}"
        finally:
            server.close()
            await server.wait_closed()
        return

    async def answer(request: web.Request) -> web.Response:
        return _foreign_answer(kind, request.path == "/v1/export")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield f"unix:{path}"
    finally:
        await runner.cleanup()


def _exported_before_the_fault(kind: Foreign, command: str) -> str:
    """The complete records a command prints before the fault: never half of one."""
    fds = (
        {"cut": [1, 2], "truncated_json": [1]}.get(kind, []) if command.startswith("export") else []
    )
    records = [_record(fd) for fd in fds]
    if command == "export csv":
        return "".join([csv_header()] * bool(fds) + [csv_line(json.loads(r)) for r in records])
    return b"".join(records).decode()


@pytest.mark.parametrize("kind", list(SAYS))
@pytest.mark.parametrize("command", list(CLIENT_COMMANDS))
async def test_an_answer_that_is_not_kktds_fails_with_one_line_and_no_false_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: Foreign, command: str
) -> None:
    async with foreign_api(tmp_path, kind) as listen:
        config = client_config(tmp_path, listen)
        capsys.readouterr()
        code = await asyncio.to_thread(_main, [*CLIENT_COMMANDS[command], "--config", str(config)])
        out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert err.startswith("kktd: ")
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "Traceback" not in err
    assert listen in err
    assert SAYS[kind][command.startswith("export")] in err
    assert out == _exported_before_the_fault(kind, command)


async def test_an_answer_of_another_shape_inside_is_a_failure_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every field `kktd status` checks is there, but one it reads deeper is not."""
    status = {
        "version": "9.0",
        "instance": "till-1",
        "now": 1.0,
        "uptime_seconds": 1.0,
        **{part: {} for part in ("kkt", "fn", "journal", "sync", "config")},
    }

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/v1/status", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "other.sock")).start()
    try:
        config = client_config(tmp_path, f"unix:{tmp_path / 'other.sock'}")
        capsys.readouterr()
        code = await asyncio.to_thread(_main, ["status", "--config", str(config)])
        out, err = capsys.readouterr()
    finally:
        await runner.cleanup()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "answered in a shape this kktd client cannot read (KeyError: " in err


# ---- the API token goes only where it is needed ----


async def test_the_token_goes_only_on_posts_and_receipt_reads_never_on_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While kktd is down, another local user binds its port and records what comes in."""
    seen: list[tuple[str, str, str | None]] = []

    async def squatter(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("Authorization")))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", squatter)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = client_config(tmp_path, f"127.0.0.1:{port}")
        for command in (
            ["status"],
            ["status", "--json"],
            ["dlq", "retry", "--all"],
            ["doc", FN, "1"],
        ):
            await asyncio.to_thread(_main, [*command, "--config", str(config)])
    finally:
        await runner.cleanup()
    capsys.readouterr()
    bearer = f"Bearer {TOKEN}"
    assert seen == [
        ("GET", "/v1/status", None),
        ("GET", "/v1/status", None),
        ("POST", "/v1/dlq/retry-all", bearer),  # the recorder does see a token when one is sent
        ("GET", f"/v1/documents/{FN}/1", bearer),
    ]


# ---- what came from outside kktd never reaches the terminal raw ----

PWNED = "\x1b]0;pwned\x07\x1b[31mred"  # sets the window title, then paints everything red
# C0 but "\n", DEL, C1 (U+009B is CSI on terminals that take 8-bit controls), bidi overrides
RAW = {chr(c) for c in [*range(0x0A), *range(0x0B, 0x20), *range(0x7F, 0xA0)]} | {"\u202e"}


def raw_controls(text: str) -> set[str]:
    return {char for char in text if char in RAW}


async def test_dlq_list_prints_no_escape_the_upstream_sent(served: Served) -> None:
    await journal_fds(served.daemon, 1)
    assert served.daemon.components is not None
    await served.daemon.components.journal.mark_dead(FN, 1, PWNED)
    code, out, _ = await served.kktd("dlq", "list")
    assert code == 0
    assert raw_controls(out) == set()
    assert out.splitlines()[1].endswith("]0;pwned[31mred")
    code, out, _ = await served.kktd("dlq", "list", "--json")
    assert raw_controls(out) == set()
    assert json.loads(out)[0]["reason"] == PWNED  # the data exactly, escaped
    entry = await served.daemon.components.journal.get(FN, 1)
    assert entry is not None
    assert entry.last_error == PWNED  # the journal keeps what was said


async def test_an_upstream_rejection_reaches_the_dlq_list_without_its_escapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole way: a real upstream's 422, a sync round, the API, `kktd dlq list`."""

    async def reject(request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        return web.json_response({"error": PWNED + "\u009b2J", "key": key}, status=422)

    app = web.Application()
    app.router.add_post("/v1/receipts", reject)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with capture_logs():
            daemon = await build_daemon(
                make_config(tmp_path, f"http://127.0.0.1:{port}/v1/receipts")
            )
            server = ApiServer(daemon.runtime)
            await server.start(daemon.config.api)
            try:
                await journal_fds(daemon, 1)
                assert daemon.components is not None
                await daemon.components.engine.sync_now()
                assert (await daemon.components.journal.counts()).dead == 1
                config = client_config(tmp_path, daemon.config.api.listen)
                capsys.readouterr()
                code = await asyncio.to_thread(_main, ["dlq", "list", "--config", str(config)])
                out, _ = capsys.readouterr()
            finally:
                await server.stop()
                assert daemon.components is not None
                await daemon.components.close()
    finally:
        await runner.cleanup()
    assert code == 0
    assert "pwned" in out
    assert raw_controls(out) == set()


async def test_doc_and_export_print_no_control_character_from_the_kkt(served: Served) -> None:
    assert served.daemon.components is not None
    item = {"name": "Молоко\x1b[2J\u009b31m\u202eкг", "price": 100, "quantity": "1", "total": 100}
    fields = {"doc_type": 3, "doc_kind": "receipt\x07", "total": 100, "items": [item]}
    await served.daemon.components.journal.store(FN, 1, 3, b"\x01", fields)
    await served.daemon.components.journal.mark_dead(FN, 1, "line one\r\nline two " + PWNED)
    for args in (
        ("doc", FN, "1"),
        ("doc", FN, "1", "--json"),
        ("export", *SINCE),
        ("export", *SINCE, "--format", "csv"),
        ("status",),
    ):
        code, out, err = await served.kktd(*args)
        assert code == 0, (args, err)
        assert raw_controls(out + err) == set(), args
        if args[-1] == "--json" or args[-1] == SINCE[-1]:  # doc --json, export as JSON lines
            assert json.loads(out)["fields"]["items"][0] == item  # the data exactly, escaped
    code, out, _ = await served.kktd("doc", FN, "1")
    assert "Молоко[2J31mкг" in out
    assert "last error: line one line two ]0;pwned[31mred" in out
