"""The rules each config key is checked by (SPEC section 5), and the types of the values.

`SCHEMA` says which TOML key takes which check; the generic reading machinery lives in
`kktd.config_loader`, the dataclasses the checked values become in `kktd.config` (which
re-exports the value types below, so `from kktd.config import OnUnavailable` keeps working).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, get_args
from urllib.parse import SplitResult, urlsplit

from kktd.config_loader import (
    InvalidValueError,
    Schema,
    duration,
    integer,
    one_of,
    show,
    string,
)
from kktd.kkt.address import AddressError, parse_address
from kktd.sync.backoff import Jitter
from kktd.sync.redis_trouble import OnUnavailable

StartFd = Literal["next", "first"] | int
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "journal", "json", "console"]
OfdMode = Literal["off", "relay"]


# ---- rules for the values that are more than a type and a range ----


def _start_fd(value: Any) -> StartFd:
    if value == "next":
        return "next"
    if value == "first":
        return "first"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 0xFFFF_FFFF:
        return value
    raise InvalidValueError(
        f'expected "next", "first" or an FD number from 1 to 4294967295, got {show(value)}'
    )


def _kkt_port(value: str) -> None:
    try:
        parse_address(value)
    except AddressError as exc:
        raise InvalidValueError(str(exc)) from None


def _url_parts(value: str, secret_key: str) -> SplitResult:
    """A URL's parts; never echoed back, as an operator may have put credentials in it."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # parsed lazily: a bad port raises only here
    except ValueError:
        return urlsplit("")
    if "@" in parts.netloc:
        # user:password@ and token@ alike: a URL is shown in status and logged, a file is not
        raise InvalidValueError(
            f"user info (user:password@ or token@) in the URL would end up in logs and status;"
            f" put the secret in a file and name it in {secret_key}"
        )
    return parts


def _http_url(value: str) -> None:
    parts = _url_parts(value, "upstream.token_file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValueError("expected an http:// or https:// URL with a host")


def _redis_url(value: str) -> None:
    if not value:
        return
    parts = _url_parts(value, "lock.password_file")
    network = parts.scheme in ("redis", "rediss") and bool(parts.hostname)
    if not network and not (parts.scheme == "unix" and parts.path):
        raise InvalidValueError('expected "" (no Redis) or a redis://, rediss:// or unix:// URL')


def _lock_key(value: str) -> None:
    # Every till of a fleet shares one Redis: a key without the FN would make all of them
    # contend for a single lock. The engine fills it with `key.format(fn=...)`.
    try:
        varies = value.format(fn="1") != value.format(fn="2")
    except (KeyError, IndexError, ValueError):
        raise InvalidValueError(
            'expected "{fn}" as the only placeholder ("{{" and "}}" for braces)'
        ) from None
    if not varies:
        raise InvalidValueError('expected a key containing "{fn}" (one lock per FN)')


def _listen(value: str) -> None:
    if value.startswith("unix:"):
        if not value.removeprefix("unix:").startswith("/"):
            raise InvalidValueError('expected "unix:" followed by an absolute socket path')
        return
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host_ok = bool(host) and (bracketed or ":" not in host)
    port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if not (host_ok and port_ok):
        raise InvalidValueError(
            f'expected "host:port" ("[::1]:port" for IPv6) or "unix:/path", got {show(value)}'
        )
    if not _loopback(host.strip("[]")):
        # SPEC section 6: the API holds receipts and can retry dead FDs; it is for this till only
        raise InvalidValueError(
            f"the API listens on loopback only (127.0.0.1, [::1], localhost) or a unix socket,"
            f" got {show(value)}"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_BAUDRATES = (2400, 4800, 9600, 19200, 38400, 57600, 115200)

SCHEMA: Schema = {
    "kkt": {
        "port": string(_kkt_port),
        "baudrate": one_of(*_BAUDRATES),
        "password": integer(0, 99_999_999),
        "poll_interval": duration(0.05, 3600),
        "start_fd": _start_fd,
    },
    # 100 years: beyond that `now - timedelta(days=...)` overflows, and nobody means it.
    "journal": {"path": string(), "retention_days": integer(1, 36_500)},
    "upstream": {
        "url": string(_http_url),
        "token_file": string(),
        "ca_file": string(),
        "timeout": duration(0, 600, above=True),
        "max_in_flight": integer(1, 64),
    },
    "sync": {
        "interval": duration(0, 3600, above=True),
        "batch_size": integer(1, 1000),
        "max_attempts": integer(1, 1000),
    },
    "backoff": {
        "base": duration(0, 3600, above=True),
        "max": duration(0, 3600, above=True),
        "jitter": one_of(*get_args(Jitter)),
    },
    "breaker": {
        "failure_threshold": integer(1, 1000),
        "reset_timeout": duration(0, 3600, above=True),
    },
    "lock": {
        "redis_url": string(_redis_url),
        "password_file": string(),
        "key": string(_lock_key),
        "ttl": duration(1, 600),
        "on_unavailable": one_of(*get_args(OnUnavailable)),
    },
    "api": {"listen": string(_listen), "token_file": string()},
    "log": {"level": one_of(*get_args(LogLevel)), "format": one_of(*get_args(LogFormat))},
    "ofd": {
        "mode": one_of(*get_args(OfdMode)),
        "host": string(),
        "port": integer(1, 65535),
        "timeout": duration(0, 600, above=True),
    },
}
