"""What the daemon's API and the `kktd` command agree on, defined once for both.

The FN and FD numbers as either side reads them (a path or query parameter, a JSON field, a
command-line argument), the words for the upstream breaker's states, and the times of a
journal entry: ISO 8601 with the local offset, as `/v1/documents` and `/v1/export` send them,
and as `--since` and `?since=` take them. Pure: no I/O and only the standard library, so the
client and the server can both use it cheaply.
"""

from __future__ import annotations

from datetime import datetime

FN_DIGITS = 16
FD_MAX = 0xFFFF_FFFF

# the upstream breaker's state in words: (the short STATUS= line, `kktd status` and `kktd fleet`)
BREAKER_WORDS: dict[str, tuple[str, str]] = {
    "closed": ("ok", "ok"),
    "open": ("circuit open", "circuit OPEN"),
    "half_open": ("probing", "probing (half-open)"),
}


def bounded(text: str, lo: int, hi: int) -> int | None:
    """`text` as a number from lo to hi, or None. The length is checked before int(): thousands
    of digits make int() slow, and past 4300 it raises."""
    if text.isascii() and text.isdigit() and len(text) <= len(str(hi)) and lo <= int(text) <= hi:
        return int(text)
    return None


def parse_fd(text: str) -> int | None:
    """An FD number (1 to 2^32-1), or None."""
    return bounded(text, 1, FD_MAX)


def parse_fn(text: str, *, full: bool = False) -> str | None:
    """An FN number: up to 16 digits, or exactly 16 when `full` (one being acted on); or None."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > FN_DIGITS or (full and len(text) != FN_DIGITS):
        return None
    return text


def iso(timestamp: float | None) -> str | None:
    """A wall-clock timestamp as local ISO 8601 with its offset."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def parse_since(text: str) -> float:
    """`--since` / `?since=`: an ISO date or date-time; without an offset it is local time.

    Raises ValueError with the operator-facing reason.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"since: expected a date like 2024-05-01 or 2024-05-01T09:30, got {text!r}"
        ) from None
    return moment.timestamp()  # a naive datetime is taken as local time
