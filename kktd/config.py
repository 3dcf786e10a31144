"""Configuration: one frozen, typed object built by one loader (SPEC section 5).

The dataclasses are the contract every component codes against. `_SCHEMA` below them says which
TOML key takes which check; the generic reading machinery lives in `kktd.config_loader`.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import SplitResult, urlsplit

from kktd.config_loader import (
    ConfigError,
    InvalidValueError,
    Schema,
    Source,
    decode,
    duration,
    integer,
    one_of,
    read_sections,
    redact_url,
    show,
    string,
    toml_value,
)
from kktd.kkt.address import AddressError, TcpAddress, parse_address
from kktd.sync.backoff import Jitter

__all__ = [
    "DEFAULT_PATH",
    "RESTART_KEYS",
    "ApiConfig",
    "BackoffConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "Jitter",
    "JournalConfig",
    "KktConfig",
    "LockConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "OfdConfig",
    "OfdMode",
    "OnUnavailable",
    "Secret",
    "StartFd",
    "SyncConfig",
    "UpstreamConfig",
    "load_config",
    "merge_for_reload",
    "parse_config",
    "redact_url",
    "render_config",
]

DEFAULT_PATH = Path("/etc/kktd/kktd.toml")

StartFd = Literal["next", "first"] | int
OnUnavailable = Literal["proceed", "skip"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "journal", "json", "console"]
OfdMode = Literal["off", "relay"]


class Secret:
    """A secret read from a file: never shown by repr, str or print-config."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class KktConfig:
    port: str = "/dev/kkt0"
    baudrate: int = 115200
    password: int = 30
    poll_interval: float = 1.0
    start_fd: StartFd = "next"


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path = Path("kktd.db")
    retention_days: int = 180


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "https://collector.example/v1/receipts"
    token_file: Path | None = None
    token: Secret | None = None
    ca_file: Path | None = None
    timeout: float = 15.0
    max_in_flight: int = 4


@dataclass(frozen=True, slots=True)
class SyncConfig:
    interval: float = 10.0
    batch_size: int = 50
    max_attempts: int = 20


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    base: float = 1.0
    max: float = 60.0
    jitter: Jitter = "full"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    reset_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class LockConfig:
    redis_url: str = ""
    password_file: Path | None = None
    password: Secret | None = None
    key: str = "kktd:sync:{fn}"
    ttl: float = 30.0
    on_unavailable: OnUnavailable = "proceed"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: str = "127.0.0.1:8765"
    token_file: Path | None = None
    token: Secret | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class OfdConfig:
    mode: OfdMode = "off"
    host: str = ""
    port: int = 7777
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    kkt: KktConfig = field(default_factory=KktConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ofd: OfdConfig = field(default_factory=OfdConfig)
    source: Path | None = None
    # `file:line: key: message` for what is accepted but probably not meant (check-config, start)
    warnings: tuple[str, ...] = field(default=(), compare=False)


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

_SCHEMA: Schema = {
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

# (section, file key) -> the field that receives the file's contents as a Secret.
_SECRET_FILES = {
    ("upstream", "token_file"): "token",
    ("api", "token_file"): "token",
    ("lock", "password_file"): "password",
}

# Keys a reload cannot apply to a running daemon: the serial port and its login, the journal
# file, the API socket, and the Redis connection (with its password) are opened once at start.
RESTART_KEYS = (
    "kkt.port",
    "kkt.baudrate",
    "kkt.password",
    "journal.path",
    "api.listen",
    "lock.redis_url",
    "lock.password_file",
)
# a secret file's path and what was read from it change together
_READ_FROM = {"lock.password_file": "password"}
# URLs are shown with `redact_url`: their query may carry a key (?api_key=...)
_URL_KEYS = frozenset({("upstream", "url"), ("lock", "redis_url")})


def _check_together(src: Source, values: dict[str, dict[str, Any]]) -> None:
    """Rules that span keys; the error names the key the operator most likely got wrong."""
    backoff, defaults = values["backoff"], BackoffConfig()
    if backoff.get("max", defaults.max) < backoff.get("base", defaults.base):
        key = "max" if "max" in backoff else "base"
        raise src.error(("backoff", key), "backoff.max must be at least backoff.base")
    ofd = values["ofd"]
    if ofd.get("mode") == "relay" and not ofd.get("host"):
        key = "host" if "host" in ofd else "mode"
        raise src.error(("ofd", key), 'mode "relay" needs ofd.host')


def _warnings(src: Source, values: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """Accepted but likely not what the operator meant: said by check-config and at start."""
    kkt = values["kkt"]
    if "baudrate" in kkt and isinstance(parse_address(kkt.get("port", "/")), TcpAddress):
        message = "ignored: a KKT reached over TCP has no baud rate (remove the line)"
        return (str(src.error(("kkt", "baudrate"), message)),)
    return ()


def _resolve_files(src: Source, values: dict[str, dict[str, Any]], *, client: bool) -> None:
    """Turn configured path strings into absolute paths and read the secret files.

    ``client``: for the client commands, which run as an operator outside the unit (no
    ``$CREDENTIALS_DIRECTORY``): a secret they cannot read is left unset instead of failing,
    so ``kktd status`` works; a POST then meets the daemon's 401, which says what is missing.
    """
    journal = values["journal"]
    raw_db = journal.get("path", "")
    journal["path"] = src.relative(raw_db) if raw_db else src.state_file("kktd.db")
    upstream = values["upstream"]
    if raw_ca := upstream.pop("ca_file", ""):
        upstream["ca_file"] = src.relative(raw_ca)
        if not upstream["ca_file"].is_file():
            raise src.error(("upstream", "ca_file"), f"{upstream['ca_file']} is not a file")
        try:
            # The same check the upstream client makes, so check-config catches it first.
            ssl.create_default_context(cafile=str(upstream["ca_file"]))
        except (ssl.SSLError, OSError) as exc:
            raise src.error(
                ("upstream", "ca_file"), f"{upstream['ca_file']} is not a PEM CA bundle: {exc}"
            ) from None
    for (section, file_key), secret_key in _SECRET_FILES.items():
        if raw := values[section].pop(file_key, ""):
            path = src.credential(raw)
            values[section][file_key] = path
            try:
                values[section][secret_key] = Secret(src.read_secret((section, file_key), path))
            except ConfigError:
                if not client:
                    raise


def parse_config(
    text: str,
    source: Path,
    *,
    environ: Mapping[str, str] | None = None,
    client: bool = False,
) -> Config:
    """Build the Config from TOML text; raises ConfigError at the first problem found."""
    src = Source(source, text, os.environ if environ is None else environ)
    values = read_sections(src, _SCHEMA)
    _check_together(src, values)
    warnings = _warnings(src, values)
    _resolve_files(src, values, client=client)
    return Config(
        kkt=KktConfig(**values["kkt"]),
        journal=JournalConfig(**values["journal"]),
        upstream=UpstreamConfig(**values["upstream"]),
        sync=SyncConfig(**values["sync"]),
        backoff=BackoffConfig(**values["backoff"]),
        breaker=BreakerConfig(**values["breaker"]),
        lock=LockConfig(**values["lock"]),
        api=ApiConfig(**values["api"]),
        log=LogConfig(**values["log"]),
        ofd=OfdConfig(**values["ofd"]),
        source=source,
        warnings=warnings,
    )


def load_config(
    path: Path, *, environ: Mapping[str, str] | None = None, client: bool = False
) -> Config:
    """Read and build the Config from a TOML file (see `parse_config`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, "-", f"cannot read: {exc.strerror or exc}") from None
    return parse_config(decode(path, data), path, environ=environ, client=client)


def merge_for_reload(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config a reload applies: `new`, except restart keys keep their running values.

    Also returns the restart keys whose change is held back, for the daemon to warn about.
    """
    merged = new
    held: list[str] = []
    for dotted in RESTART_KEYS:
        name, key = dotted.split(".")
        keys = [key] + ([_READ_FROM[dotted]] if dotted in _READ_FROM else [])
        running = {k: getattr(getattr(old, name), k) for k in keys}
        if any(getattr(getattr(new, name), k) != v for k, v in running.items()):
            held.append(dotted)
            merged = replace(merged, **{name: replace(getattr(merged, name), **running)})
    return merged, held


def render_config(cfg: Config) -> str:
    """The effective config as TOML, secrets redacted; `parse_config` reads it back equal
    (but for the values of a URL's query, which are redacted too)."""
    origin = "" if cfg.source is None else f", read from {toml_value(cfg.source)}"
    lines = [f"# kktd effective configuration{origin}"]
    for name, checks in _SCHEMA.items():
        section = getattr(cfg, name)
        lines += ["", f"[{name}]"]
        for key in checks:
            value = getattr(section, key)
            if (name, key) in _URL_KEYS:
                value = redact_url(value)
            line = f"{key} = {toml_value(value)}"
            secret_key = _SECRET_FILES.get((name, key))
            if secret_key is not None and getattr(section, secret_key) is not None:
                line += f"  # {secret_key}: <redacted>"
            lines.append(line)
    return "\n".join(lines) + "\n"
