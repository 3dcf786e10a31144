"""Client commands (SPEC section 6): `kktd status`, `sync`, `dlq list|retry`, `doc`, `export`,
`fleet`, `skip`. They find the daemon through the same `--config` as `kktd run` (api.listen, the API
token, lock.redis_url), print tables for people and JSON with `--json` for scripts.

Their arguments are declared in `kktd.cli.args`; this module is loaded only when one runs.
Exit codes (`kktd.cli.exits`): an answer that is not kktd's (see `client.BadAnswer`) is a
failure: one line on stderr, nothing on stdout.

Everything they print goes through `render.clean` (text) or `render.json_text` (JSON): no
control character an upstream, a KKT or a foreign server sent reaches the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from kktd.cli import render
from kktd.cli.client import ApiClient, ApiError, BadAnswer, DaemonUnreachable, Shape
from kktd.cli.csv_export import csv_header, csv_line
from kktd.cli.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE
from kktd.config import Config, ConfigError, load_config, redact_url
from kktd.contract import iso
from kktd.control.api.access import OPERATOR_HEADER

PROGRESS_EVERY = 0.2  # seconds between progress redraws on a terminal
DLQ_PAGE = 200
# a manual sync waits for a whole round: a batch of deliveries, each up to upstream.timeout
SYNC_TIMEOUT = 300.0

Command = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]

# What each command reads of a successful answer (kktd/control/api/routes.py,
# kktd/control/status.py): an answer without it is not kktd's, and must not pass for a success.
NUMBER = (int, float)
STATUS_SHAPE: Shape = {
    "version": str,
    "instance": str,
    "now": NUMBER,
    "uptime_seconds": NUMBER,
    "kkt": dict,
    "fn": dict,
    "journal": dict,
    "sync": dict,
    "config": dict,
}
SYNC_SHAPE: Shape = {
    "status": str,
    "synced": int,
    "failed": int,
    "dead": int,
    "duration_seconds": NUMBER,
}
DLQ_SHAPE: Shape = {"items": list, "next": (str, type(None))}
RETRY_SHAPE: Shape = {"status": str, "retried": int}
DOC_SHAPE: Shape = {
    "fn": str,
    "fd": int,
    "state": str,
    "attempts": int,
    "journaled_at": (str, *NUMBER),  # ISO 8601; a number from an older daemon still running
    "fields": dict,
}
RECORD_SHAPE: Shape = {"fn": str, "fd": int, "fields": dict}
SKIP_SHAPE: Shape = {
    "status": str,
    "fn": str,
    "fd": int,
    "skipped_at": NUMBER,
    "reason": str,
    "operator": str,
    "peer": str,
}


def _out(text: str) -> None:
    print(render.clean(text, block=True), flush=True)


def _err(text: str) -> None:
    print(f"kktd: {render.clean(text)}", file=sys.stderr, flush=True)


def _json(value: Any) -> None:
    print(render.json_text(value, indent=2), flush=True)


def _explain(exc: ApiError) -> str:
    if exc.status == 401:
        return "the daemon wants the API token: run as a user who can read api.token_file"
    detail = exc.body.get("detail") or exc.body.get("error") or ""
    return f"the daemon answered {exc.status}: {detail}"


def _readable(address: str, show: Callable[[], str]) -> str:
    """`show()`: the text of an answer; one it cannot read is not the kktd this client knows."""
    try:
        return show()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadAnswer(
            f"{address} answered in a shape this kktd client cannot read"
            f" ({type(exc).__name__}: {exc})"
        ) from exc


def run(name: str, args: argparse.Namespace) -> int:
    """Load the config, run the command `cmd_<name>`, and turn what went wrong into an exit code."""
    command: Command = globals()[f"cmd_{name}"]
    try:
        config = load_config(args.config, client=True)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(command(args, config))
    except DaemonUnreachable as exc:
        _err(f"{exc} (is kktd running? `systemctl status kktd`)")
        return EXIT_UNREACHABLE
    except ApiError as exc:
        _err(_explain(exc))
        return EXIT_FAILURE
    except BadAnswer as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_FAILURE  # `kktd export | head`: the reader has had enough


async def cmd_status(args: argparse.Namespace, config: Config) -> int:
    async with ApiClient(config.api) as api:
        status = await api.call("GET", "/v1/status", shape=STATUS_SHAPE)
    if args.json:
        _json(status)
    else:
        _out(_readable(api.address, lambda: render.status_report(status)))
    return EXIT_OK


async def cmd_sync(args: argparse.Namespace, config: Config) -> int:
    async with ApiClient(config.api) as api:
        code, body = await api.request(
            "POST", "/v1/kkt/buffer/sync", timeout=SYNC_TIMEOUT, shape=SYNC_SHAPE
        )
    if code == 401 or (code >= 400 and "status" not in body):
        raise ApiError(code, body)
    if args.json:
        _json(body)
    elif body["status"] == "completed":
        _out(
            f"synced {body['synced']}, failed {body['failed']}, dead {body['dead']}"
            f" in {body['duration_seconds']:.2f} s"
        )
    else:
        _out(f"not synced: {body.get('detail', body['status'])}")
    return EXIT_OK if code == 200 else EXIT_FAILURE


async def cmd_dlq_list(args: argparse.Namespace, config: Config) -> int:
    items: list[dict[str, Any]] = []
    params = {"limit": str(DLQ_PAGE)}
    async with ApiClient(config.api) as api:
        while len(items) < args.limit:
            page = await api.call("GET", "/v1/dlq", params, shape=DLQ_SHAPE)
            items += page["items"]
            if page["next"] is None:
                break
            params["after"] = page["next"]
    items = items[: args.limit]
    if args.json:
        _json(items)
    else:
        _out(_readable(api.address, lambda: render.dlq_table(items, time.time())))
    return EXIT_OK


async def cmd_dlq_retry(args: argparse.Namespace, config: Config) -> int:
    path = "/v1/dlq/retry-all" if args.all else f"/v1/dlq/{args.fn}/{args.fd}/retry"
    async with ApiClient(config.api) as api:
        body = await api.call("POST", path, shape=RETRY_SHAPE)
    if args.json:
        _json(body)
    elif args.all:
        _out(f"{body['retried']} dead FDs are pending again: kktd delivers them in its next round")
    else:
        _out(f"FD {args.fd} of FN {args.fn} is pending again: kktd delivers it in its next round")
    return EXIT_OK


async def cmd_doc(args: argparse.Namespace, config: Config) -> int:
    async with ApiClient(config.api) as api:
        doc = await api.call("GET", f"/v1/documents/{args.fn}/{args.fd}", shape=DOC_SHAPE)
    if args.json:
        _json(doc)
    else:
        _out(_readable(api.address, lambda: render.document_report(doc, time.time())))
    return EXIT_OK


async def cmd_export(args: argparse.Namespace, config: Config) -> int:
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    count = 0
    try:
        async with ApiClient(config.api) as api:
            count = await _export(api, args, progress)
    finally:
        if progress is not None:
            progress.end()
    if args.format == "csv" and count == 0:
        sys.stdout.write(csv_header())  # nothing since then: a file with its header all the same
    sys.stdout.flush()
    return EXIT_OK


async def _export(api: ApiClient, args: argparse.Namespace, progress: _Progress | None) -> int:
    """Write each exported record as it arrives; how many there were."""
    params = {"since": iso(args.since) or ""}
    out = sys.stdout
    count = 0
    # the CSV header waits for the first record: an answer that is not kktd's prints nothing
    async for _, item in api.records("/v1/export", params, RECORD_SHAPE):
        if args.format == "csv":
            out.write((csv_header() if count == 0 else "") + csv_line(item))
        else:
            # the record again, not the line as received: JSON allows a raw CR between values
            out.write(render.json_text(item) + "\n")
        count += 1
        if progress is not None:
            progress.show(count)
    if progress is not None:
        progress.done(count)
    return count


class _Progress:
    """One line on the terminal, redrawn a few times a second: count and rate."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = self._drawn = time.monotonic()
        self._shown = False

    def show(self, count: int) -> None:
        now = time.monotonic()
        if now - self._drawn >= PROGRESS_EVERY:
            self._drawn = now
            rate = count / max(now - self._started, 1e-6)
            self._stream.write(f"\rexported {render.number(count)} FDs ({rate:,.0f}/s)")
            self._stream.flush()
            self._shown = True

    def done(self, count: int) -> None:
        seconds = time.monotonic() - self._started
        self._stream.write(f"\rexported {render.number(count)} FDs in {seconds:.1f} s")
        self._stream.flush()
        self._shown = True

    def end(self) -> None:
        """End the line, finished or not: an error after it reads on a line of its own."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


async def cmd_skip(args: argparse.Namespace, config: Config) -> int:
    body = {"fn": args.fn, "fd": args.fd, "reason": args.reason}
    async with ApiClient(config.api) as api:
        record = await api.call(
            "POST",
            "/v1/kkt/skip",
            body=body,
            headers={OPERATOR_HEADER: operator()},
            shape=SKIP_SHAPE,
        )
    if args.json:
        _json(record)
    else:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["skipped_at"]))
        _out(
            f"FD {record['fd']} of FN {record['fn']} is skipped: kktd reads on from FD"
            f" {record['fd'] + 1}.\nRecorded in the journal: {at} by"
            f" {render.clip(record['operator'], 80)} ({render.clip(record['peer'], 80)}):"
            f" {render.clip(record['reason'], 200)}"
        )
    return EXIT_OK


def operator() -> str:
    """Who runs this command: the real uid's name (not $USER), and who became it with sudo."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    via = os.environ.get("SUDO_USER")
    name = f"{via} via sudo as {user}" if via and via != user else user
    return name.encode("ascii", "replace").decode("ascii")  # a header carries ASCII


async def cmd_fleet(args: argparse.Namespace, config: Config) -> int:
    # imported here: only this command needs Redis
    from redis.exceptions import RedisError  # noqa: PLC0415

    from kktd.control.fleet import read_fleet  # noqa: PLC0415
    from kktd.sync.redis_lock import redis_from_url  # noqa: PLC0415

    if not config.lock.redis_url:
        _err(f"no Redis configured in {args.config} (lock.redis_url): there is no fleet to list")
        return EXIT_FAILURE
    client = redis_from_url(config.lock.redis_url, config.lock.password)
    try:
        beats = await read_fleet(client)
    except (RedisError, OSError, TimeoutError) as exc:
        _err(f"cannot read the fleet from Redis at {redact_url(config.lock.redis_url)}: {exc}")
        return EXIT_FAILURE
    finally:
        await client.aclose()
    if args.json:
        _json(beats)
    else:
        _out(render.fleet_table(beats, time.time()))
    return EXIT_OK
