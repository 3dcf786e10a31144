"""Configuration: one frozen, typed object built by one loader (SPEC section 5).

The dataclasses are the contract every component codes against; below them, building one from
TOML text, merging a reload and rendering the effective config. Which TOML key takes which
check (`SCHEMA`, the value types) is `kktd.config_schema`; the generic reading machinery lives
in `kktd.config_loader`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kktd.config_loader import (
    ConfigError,
    Source,
    decode,
    read_sections,
    redact_url,
    toml_value,
)
from kktd.config_schema import (
    SCHEMA,
    LogFormat,
    LogLevel,
    OfdMode,
    StartFd,
)
from kktd.kkt.address import TcpAddress, parse_address
from kktd.sync.backoff import Jitter
from kktd.sync.redis_trouble import OnUnavailable

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
    values = read_sections(src, SCHEMA)
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
    for name, checks in SCHEMA.items():
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
