"""Configuration: one frozen, typed object built by one loader (SPEC section 5).

The dataclasses below are the contract every component codes against; the loader that fills them
from TOML (with file:line errors) lives further down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

StartFd = Literal["next", "first"] | int
Jitter = Literal["full", "none"]
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
