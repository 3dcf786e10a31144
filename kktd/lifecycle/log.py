"""Structured logging: one line per event on stderr (SPEC section 7).

Under journald (``$JOURNAL_STREAM`` names our stderr) each line starts with the ``<N>`` syslog
priority and has no timestamp (journald adds its own); on a terminal a console renderer; otherwise
JSON lines. Cyrillic is written as is, never escaped. Multi-line values (tracebacks) are quoted
so an event stays one line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from kktd.config import LogFormat, LogLevel

Renderer = Literal["journal", "json", "console"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# syslog priorities (sd-daemon(3)): the prefix journald turns into PRIORITY=
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``$JOURNAL_STREAM`` (``device:inode``) is this very stream."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def choose_renderer(fmt: LogFormat, stream: TextIO, environ: Mapping[str, str]) -> Renderer:
    if fmt != "auto":
        return fmt
    if stream_is_journal(stream, environ):
        return "journal"
    return "console" if stream.isatty() else "json"


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else repr(value) if _is_object(value) else str(value)
    if text and not any(ch in text for ch in ' ="\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _is_object(value: object) -> bool:
    return not isinstance(value, int | float | bool | type(None))


def render_journal(_: WrappedLogger, method: str, event_dict: EventDict) -> str:
    """``<6>sync.round synced=3 failed=0``: priority prefix, event, logfmt fields."""
    level = event_dict.pop("level", method)
    event = event_dict.pop("event", "")
    fields = " ".join(f"{key}={_quote(value)}" for key, value in event_dict.items())
    line = f"<{_PRIORITY.get(level, 6)}>{event}"
    return f"{line} {fields}" if fields else line


def render_json(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    return json.dumps(event_dict, ensure_ascii=False, default=repr)


def _processors(renderer: Renderer) -> list[Processor]:
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        drop_secrets,
    ]
    if renderer != "journal":
        chain.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    if renderer == "console":
        chain.append(structlog.dev.ConsoleRenderer())
        return chain
    chain.append(structlog.processors.format_exc_info)
    chain.append(render_journal if renderer == "journal" else render_json)
    return chain


def configure_logging(
    level: LogLevel = "info",
    fmt: LogFormat = "auto",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> Renderer:
    """(Re)configure structlog for the whole process; returns the renderer chosen."""
    out = sys.stderr if stream is None else stream
    renderer = choose_renderer(fmt, out, os.environ if environ is None else environ)
    structlog.configure(
        processors=_processors(renderer),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # A reload may change the level: loggers must look the configuration up again.
        cache_logger_on_first_use=False,
    )
    return renderer


_SECRET_WORDS = ("token", "password", "secret", "authorization")


def drop_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Defence in depth: a field named like a secret never reaches the output."""
    for key in event_dict:
        if any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = "<redacted>"
    return event_dict
