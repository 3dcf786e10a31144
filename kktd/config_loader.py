"""The machinery behind `kktd.config`: TOML reading, typed checks, file:line errors, secret files.

Generic on purpose: which key takes which check is written beside the dataclasses in
`kktd/config.py`; this module knows nothing of kktd's sections.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Convert = Callable[[Any], Any]
Schema = Mapping[str, Mapping[str, Convert]]


class ConfigError(Exception):
    """A config problem located for the operator: `file:line: key: message`."""

    def __init__(self, file: Path, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}" if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key}: {message}")


class InvalidValueError(ValueError):
    """Raised by a check; the message says what was expected."""


def show(value: object) -> str:
    """A value as the operator wrote it in TOML, shortened for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


# ---- checks: each takes the TOML value and returns the typed one or raises InvalidValueError ----


def integer(lo: int, hi: int) -> Convert:
    """An integer in [lo, hi]; booleans are not integers here, whatever Python thinks."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidValueError(f"expected an integer from {lo} to {hi}, got {show(value)}")
        return value

    return check


def one_of(*options: str | int) -> Convert:
    """Exactly one of the options, of the same TOML type."""
    expected = ", ".join(show(option) for option in options)

    def check(value: Any) -> Any:
        if not any(type(value) is type(option) and value == option for option in options):
            raise InvalidValueError(f"expected one of {expected}, got {show(value)}")
        return value

    return check


def string(rule: Callable[[str], None] | None = None) -> Convert:
    """A string, optionally passed through a rule that raises InvalidValueError."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidValueError(f"expected a string, got {show(value)}")
        if rule is not None:
            rule(value)
        return value

    return check


_DURATION = re.compile(r"(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_DURATION_HELP = 'a duration such as "500ms", "10s", "2m", "1h" or a number of seconds'


def parse_duration(value: object) -> float:
    """Seconds from "500ms", "10s", "2m", "1h", "1.5s" or a plain number of seconds."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif match is not None:
            number, unit = match.groups()
            # Dividing keeps "100ms" exactly equal to 0.1, as "0.1s" would be.
            seconds = float(number) / 1000 if unit == "ms" else float(number) * _UNIT_SECONDS[unit]
        else:
            raise InvalidValueError(f"expected {_DURATION_HELP}, got {show(value)}")
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidValueError(f"expected a finite duration, got {show(value)}")
    return seconds


def format_seconds(seconds: float) -> str:
    """The duration string that `parse_duration` reads back to exactly `seconds`."""
    seconds = float(seconds)  # an int has no is_integer() before Python 3.12
    if seconds.is_integer() and abs(seconds) < 1e15:
        return f"{int(seconds)}s"
    return f"{seconds!r}s"


def duration(lo: float, hi: float = math.inf, *, above: bool = False) -> Convert:
    """A duration in [lo, hi] seconds, or in (lo, hi] when `above`."""
    low = f"above {format_seconds(lo)}" if above else f"at least {format_seconds(lo)}"
    if math.isinf(hi):
        expected = f"a duration {low}"
    elif above:
        expected = f"a duration {low} and at most {format_seconds(hi)}"
    else:
        expected = f"a duration from {format_seconds(lo)} to {format_seconds(hi)}"

    def check(value: Any) -> float:
        seconds = parse_duration(value)
        too_low = seconds <= lo if above else seconds < lo
        if too_low or seconds > hi:
            raise InvalidValueError(f"expected {expected}, got {show(value)}")
        return seconds

    return check


# ---- rendering values back as TOML ----


def redact_url(url: str) -> str:
    """`url` as it may be shown or logged: query values and fragment hidden, no user info.

    Parameter names stay, so an operator still sees which ones are set.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    # "unix:///path" keeps its empty authority: urlunsplit would drop it
    slashes = "//" if url[len(scheme) :].startswith("//") else ""
    shown = f"{scheme}{slashes}{parts.netloc.rpartition('@')[2]}{parts.path}"
    if query := [item.partition("=") for item in parts.query.split("&") if item]:
        shown += "?" + "&".join(f"{name}=***" if sep else "***" for name, sep, _ in query)
    return shown + ("#***" if parts.fragment else "")


def toml_value(value: object) -> str:
    """One config value as TOML: floats are durations, paths strings, None the empty string."""
    if value is None:
        return '""'
    if isinstance(value, float):
        value = format_seconds(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"no TOML form for {type(value).__name__}")


# ---- finding a key's line: tomllib reports none, so scan the text (best effort) ----

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_PART = re.compile(rf"{_BARE}|{_BASIC}|{_LITERAL}")
_DOTTED = rf"[ \t]*(?:{_PART.pattern})[ \t]*(?:\.[ \t]*(?:{_PART.pattern})[ \t]*)*"
_HEADER = re.compile(rf"[ \t]*\[\[?({_DOTTED})\]")
_ASSIGN = re.compile(rf"({_DOTTED})=")


def _unquote(part: str) -> str:
    if part.startswith('"'):
        try:
            return str(json.loads(part))
        except ValueError:  # a TOML-only escape such as \U0001F600: close enough
            return part[1:-1]
    if part.startswith("'"):
        return part[1:-1]
    return part


def _key_parts(dotted: str) -> tuple[str, ...]:
    return tuple(_unquote(part) for part in _PART.findall(dotted))


def _opens_multiline(rest: str) -> str | None:
    for quote in ('"""', "'''"):
        if rest.lstrip().startswith(quote) and rest.count(quote) % 2 == 1:
            return quote
    return None


def find_key_line(text: str, key: tuple[str, ...]) -> int | None:
    """The 1-based line where `key` is set or its table opens, else its nearest table's line."""
    table: tuple[str, ...] = ()
    fallback: int | None = None
    closing: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if closing is not None:
            if closing in line:
                closing = None
            continue
        if header := _HEADER.match(line):
            table = _key_parts(header.group(1))
            if table[: len(key)] == key:
                return number
            if key[: len(table)] == table:
                fallback = number
        elif assign := _ASSIGN.match(line):
            full = table + _key_parts(assign.group(1))
            rest = line[assign.end() :]
            # A descendant, or an ancestor set inline (TOML 1.0 keeps inline tables on one line).
            if full[: len(key)] == key or key[: len(full)] == full:
                return number
            closing = _opens_multiline(rest)
    return fallback


# ---- the source being read ----


@dataclass(frozen=True, slots=True)
class Source:
    """One config text, where it came from, and the environment it is read in."""

    file: Path
    text: str
    environ: Mapping[str, str]

    def error(self, key: tuple[str, ...], message: str) -> ConfigError:
        dotted = ".".join(key)
        return ConfigError(self.file, find_key_line(self.text, key), dotted, message)

    def relative(self, raw: str) -> Path:
        """A configured path; relative ones are taken from the config file's directory."""
        return (self.file.parent / raw).absolute()

    def credential(self, raw: str) -> Path:
        """A secret file's path: systemd's LoadCredential= directory first, if it has the file."""
        credentials = self.environ.get("CREDENTIALS_DIRECTORY", "")
        if credentials and not Path(raw).is_absolute():
            candidate = Path(credentials, raw).absolute()
            if candidate.is_file():
                return candidate
        return self.relative(raw)

    def state_file(self, name: str) -> Path:
        """`name` in systemd's StateDirectory= (its first entry), else in the working directory."""
        state = self.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state or ".", name).absolute()

    def read_secret(self, key: tuple[str, ...], path: Path) -> str:
        """A secret file's contents without surrounding whitespace; never empty."""
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.error(key, f"cannot read {path}: {reason}") from None
        if not secret:
            raise self.error(key, f"{path} is empty")
        return secret


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind}, did you mean {close[0]!r}?"
    return f"unknown {kind}, expected one of: {', '.join(known)}"


_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")


def _parse_toml(src: Source) -> dict[str, Any]:
    try:
        return tomllib.loads(src.text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line: int | None = None
        if position is not None:
            message = message[: position.start()]
            if position.group(1) is not None:
                line = int(position.group(1))
                message += f" (column {position.group(2)})"
            else:
                line = src.text.count("\n") + 1
        raise ConfigError(src.file, line, "-", f"invalid TOML: {message}") from None


def read_sections(src: Source, schema: Schema) -> dict[str, dict[str, Any]]:
    """The checked values of every key present, by section; the first problem is raised."""
    document = _parse_toml(src)
    values: dict[str, dict[str, Any]] = {name: {} for name in schema}
    for name, table in document.items():
        if name not in schema:
            raise src.error((name,), _unknown("section", name, schema))
        if not isinstance(table, dict):
            raise src.error((name,), f"expected a table [{name}], got {show(table)}")
        checks = schema[name]
        for key, value in table.items():
            if key not in checks:
                raise src.error((name, key), _unknown("key", key, checks))
            try:
                values[name][key] = checks[key](value)
            except InvalidValueError as exc:
                raise src.error((name, key), str(exc)) from None
    return values


def decode(file: Path, data: bytes) -> str:
    """A config file's text; a byte that is not UTF-8 is an error on its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(file, line, "-", "not UTF-8 text") from None
