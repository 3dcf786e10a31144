"""POST /v1/kkt/skip: the operator's last resort for an FD the KKT can never produce.

Only the FD the poller is stuck on can be skipped (every read of it failed), only when it is the
next FD to read and not journaled: anything else is 409 with the reason. The journal records who
asked: the user the client says it runs as (`X-Kktd-Operator`, sent by `kktd skip`), what the API
itself saw of the caller (the peer's uid and pid on a unix socket, else its address) and whether
the API token was required, which the auth middleware has already checked for every POST.
"""

from __future__ import annotations

import pwd
import socket
import struct
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from kktd.contract import FD_MAX, FN_DIGITS, parse_fn
from kktd.control.api.access import OPERATOR_HEADER
from kktd.control.api.common import RUNTIME_KEY, ParameterError, error
from kktd.journal import JournalError
from kktd.journal.skips import REASON_LIMIT, Requester, SkipRefused

if TYPE_CHECKING:
    from kktd.kkt.poller import Poller

log = structlog.get_logger(__name__)

OPERATOR_LIMIT = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


async def skip(request: web.Request, poller: Poller) -> web.Response:
    fn, fd, reason = await _parameters(request)
    requester = requester_of(request)
    try:
        record = await poller.skip(fn, fd, reason, requester)
    except SkipRefused as exc:
        log.warning("api.skip_refused", fn=fn, fd=fd, why=exc.name, operator=requester.operator)
        return error(503 if exc.name == "busy" else 409, exc.name, str(exc))
    except JournalError as exc:  # the journal could not take the record: nothing was skipped
        return error(503, "journal_unavailable", f"the skip was not recorded: {exc}")
    return web.json_response({"status": "skipped", **record.to_dict()})


async def _parameters(request: web.Request) -> tuple[str, int, str]:
    try:
        body: Any = await request.json()
    except ValueError:
        raise ParameterError('expected a JSON body {"fn", "fd", "reason"}') from None
    if not isinstance(body, dict):
        raise ParameterError('expected a JSON object {"fn", "fd", "reason"}')
    fn, fd, reason = body.get("fn"), body.get("fd"), body.get("reason")
    if not (isinstance(fn, str) and parse_fn(fn, full=True) is not None):
        raise ParameterError(f"fn: expected the FN number ({FN_DIGITS} digits), got {fn!r}")
    if not (isinstance(fd, int) and not isinstance(fd, bool) and 1 <= fd <= FD_MAX):
        raise ParameterError(f"fd: expected an FD number from 1 to {FD_MAX}, got {fd!r}")
    if not (isinstance(reason, str) and reason.strip() and reason.isprintable()):
        raise ParameterError("reason: required, one line of text saying why the FD is skipped")
    if len(reason) > REASON_LIMIT:
        raise ParameterError(f"reason: at most {REASON_LIMIT} characters, got {len(reason)}")
    return fn, fd, reason.strip()


def requester_of(request: web.Request) -> Requester:
    """Who is asking, as far as this end of the connection can tell."""
    claimed = request.headers.get(OPERATOR_HEADER, "").strip()
    if not (claimed and claimed.isprintable() and len(claimed) <= OPERATOR_LIMIT):
        claimed = "unknown"
    token = request.app[RUNTIME_KEY].config.api.token
    return Requester(claimed, _peer(request), "api token" if token is not None else "none")


def _peer(request: web.Request) -> str:
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except OSError as exc:
            return f"unix socket, peer unknown ({exc.strerror or exc})"
        pid, uid, _ = _PEERCRED.unpack(raw)
        return f"uid {uid} ({_user(uid)}), pid {pid}"
    return request.remote or "unknown"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"
