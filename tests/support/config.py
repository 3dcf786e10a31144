"""kktd configs for tests, the chaos harness and the benchmarks: one template, overridden per use.

`render_config(directory, section={key: value, ...}, ...)` merges each section into the template
(a value of None drops the key, a section of None drops the section) and renders TOML; the
journal, the API socket and, unless given, the KKT port live in `directory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.support.redis_server import free_port

Value = str | int | float | bool | Path
Section = Mapping[str, Value | None]


def template(directory: Path) -> dict[str, dict[str, Value]]:
    """A till's config for tests: no KKT on the port, an upstream nobody listens on, fast polls."""
    return {
        "kkt": {"port": directory / "no-such-kkt", "poll_interval": "200ms"},
        "journal": {"path": directory / "kktd.db"},
        "upstream": {"url": f"http://127.0.0.1:{free_port()}/v1/receipts", "timeout": "2s"},
        "sync": {"interval": "1s"},
        "api": {"listen": f"unix:{directory / 'api.sock'}"},
        "log": {"level": "debug", "format": "json"},
    }


def render_config(directory: Path, **sections: Section | None) -> str:
    """The template with `sections` merged in, as TOML text."""
    merged = template(directory)
    for name, section in sections.items():
        if section is None:
            merged.pop(name, None)
            continue
        keys = merged.setdefault(name, {})
        for key, value in section.items():
            if value is None:
                keys.pop(key, None)
            else:
                keys[key] = value
    return "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in keys.items())
        for name, keys in merged.items()
    )


def write_config(
    directory: Path,
    *,
    kkt_port: str | Path | None = None,
    upstream: str | None = None,
    extra: str = "",
    **sections: Section | None,
) -> Path:
    """`directory/kktd.toml` from `render_config`; `extra` is raw TOML appended (even a broken
    one, for the tests of config errors)."""
    if kkt_port is not None:
        sections["kkt"] = {"port": kkt_port, **(sections.get("kkt") or {})}
    if upstream is not None:
        sections["upstream"] = {"url": upstream, **(sections.get("upstream") or {})}
    path = directory / "kktd.toml"
    path.write_text(render_config(directory, **sections) + extra, encoding="utf-8")
    return path


def _toml(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    assert '"' not in text, text  # paths and URLs only: no escapes needed
    assert "\\" not in text, text
    return f'"{text}"'
