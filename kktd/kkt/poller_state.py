"""What the poller tells the rest of kktd about itself: its status, and the FD it is stuck on."""

from __future__ import annotations

from dataclasses import dataclass

from kktd.kkt.commands import OfdStatus


class DocumentReadError(Exception):
    """An FD could not be read whole after every restart; the next poll tries again."""

    def __init__(self, fn: str, fd: int, detail: str) -> None:
        super().__init__(detail)
        self.fn = fn
        self.fd = fd


@dataclass(frozen=True, slots=True)
class StuckFd:
    """The FD the poller cannot get past: every read of it failed, poll after poll."""

    fn: str
    fd: int
    error: str
    since: float  # wall clock of the first failed poll
    polls: int  # failed polls in a row


@dataclass(frozen=True, slots=True)
class PollerStatus:
    connected: bool
    since: float | None
    device_model: int | None
    device_name: str | None
    fn: str | None
    last_fd: int | None
    cursor: int | None
    warning_flags: int | None
    ofd: OfdStatus | None
    ofd_read_at: float | None
    last_error: str | None
    journal_blocked: str | None
    journaled: int  # FDs stored by this process since it started
    stuck: StuckFd | None
