"""The arrows of imports the architecture promises (docs/ARCHITECTURE.md, issue 15).

Read from the source, every import statement counted: at the top, inside a function, and under
`if TYPE_CHECKING:`, since an arrow that exists only for the type checker still ties one part
to the other's internals.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

KKTD = Path(__file__).resolve().parent.parent / "kktd"
CONTROL_SURFACE = [
    *sorted((KKTD / "control" / "api").glob("*.py")),
    KKTD / "control" / "status.py",
    KKTD / "control" / "runtime.py",
    KKTD / "ofd" / "metrics.py",
]


def imported(path: Path) -> set[str]:
    """Every module `path` imports, wherever the statement stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_module_reader_sees_imports_under_type_checking_and_in_functions(
    tmp_path: Path,
) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kktd.lifecycle.daemon import Daemon\n"
        "def f():\n    import kktd.cli.render\n",
        encoding="utf-8",
    )
    assert {"kktd.lifecycle.daemon", "kktd.cli.render"} <= imported(source)


@pytest.mark.parametrize("path", CONTROL_SURFACE, ids=lambda p: str(p.relative_to(KKTD)))
def test_the_control_surface_does_not_import_the_daemon_or_the_client(path: Path) -> None:
    wrong = {
        name
        for name in imported(path)
        if name == "kktd.lifecycle.daemon"
        or name.startswith(("kktd.lifecycle.daemon.", "kktd.cli"))
    }
    assert wrong == set()


def test_the_routes_do_not_import_the_server() -> None:
    assert not {
        n
        for n in imported(KKTD / "control" / "api" / "routes.py")
        if n.startswith("kktd.control.api.server")
    }


def test_kktd_run_loads_no_client_tool_or_fleet_code_without_redis() -> None:
    """What `kktd run` imports before it starts: the parser, then the daemon."""
    code = (
        "import sys\n"
        "from kktd.cli.entry import build_parser\n"
        "build_parser().parse_args(['run'])\n"
        "import kktd.lifecycle.daemon\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "kktd.lifecycle.daemon" in loaded
    unwanted = {
        name
        for name in loaded
        if name.startswith(
            (
                "kktd.cli.commands",
                "kktd.cli.client",
                "kktd.cli.render",
                "kktd.cli.csv_export",
                "kktd.testbed.emulator",
                "kktd.testbed.mock_upstream",
                "kktd.testbed.demo",
                "kktd.control.fleet",
            )
        )
    }
    assert unwanted == set()


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + "print('\\n'.join(sorted(sys.modules)))\n"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(done.stdout.split())


def test_kktd_run_without_a_redis_url_does_not_load_the_redis_client(tmp_path: Path) -> None:
    """Issue 14: the Redis client (~7 MB) is loaded only for a configured lock.redis_url."""
    config = tmp_path / "kktd.toml"
    config.write_text(f'[journal]\npath = "{tmp_path / "journal.db"}"\n', encoding="utf-8")
    setup = (
        "import asyncio, sys\n"
        "from kktd.cli.entry import build_parser\n"
        "build_parser().parse_args(['run'])\n"
        "import kktd.lifecycle.daemon\n"
        "from kktd.lifecycle.components import Components\n"
        "from kktd.config import load_config\n"
        "from pathlib import Path\n"
        f"config = load_config(Path({str(config)!r}))\n"
    )
    build = (
        "async def main():\n"
        "    components = await Components.build(config, 'till-1')\n"
        "    await components.close()\n"
        "asyncio.run(main())\n"
    )
    without = _modules_after(setup + build)
    assert "kktd.lifecycle.components" in without
    redis_modules = {
        n for n in without if n == "redis" or n.startswith(("redis.", "kktd.sync.redis_lock"))
    }
    assert redis_modules == set()
    # the check can fail: with a redis_url the same build loads the client
    with_url = _modules_after(
        setup + "import dataclasses\n"
        "config = dataclasses.replace(config, lock=dataclasses.replace(config.lock,"
        " redis_url='redis://127.0.0.1:1/0'))\n" + build
    )
    assert {"redis", "kktd.sync.redis_lock"} <= with_url


@pytest.mark.parametrize("name", ["backoff.py", "breaker.py", "redis_trouble.py"])
def test_the_sync_pure_cores_import_nothing_of_kktd(name: str) -> None:
    """Issue 15.5: a pure core takes its settings as plain values (`Jitter` lives in backoff)."""
    assert {n for n in imported(KKTD / "sync" / name) if n.startswith("kktd")} == set()
