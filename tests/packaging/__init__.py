"""Packaging tests: packaging/ and scripts/check-unit run for real, on trees staged with --root.

Staging builds a venv (about 15 s on this machine), so one staged tree serves every test of the
session: :func:`stage_once` runs ``packaging/install-systemd --root`` twice in a row, as an operator
rerunning the installer would (with an edited config in between), and keeps what each run left
behind for the idempotence tests. Both runs install from one frozen copy of the checkout, so work
in progress elsewhere in the tree cannot make the two differ. Tests that change a tree work on a
copy of it.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
PACKAGING = REPO / "packaging"
PREFIX = "/opt/kktd"
UNIT = "usr/lib/systemd/system/kktd.service"
CONFIG = "etc/kktd/kktd.toml"
OPERATOR_EDIT = "\n# edited by the operator: an installer rerun must keep this line\n"

# Live paths a --root run must never create.
LIVE_PATHS = (
    Path("/opt/kktd"),
    Path("/usr/lib/systemd/system/kktd.service"),
    Path("/usr/lib/udev/rules.d/99-kkt.rules"),
    Path("/usr/bin/kktd"),
)


@dataclass(frozen=True)
class Staging:
    """A staged tree and what the two installer runs that made it left behind."""

    root: Path
    first: dict[str, str]
    second: dict[str, str]
    first_output: str
    second_output: str
    live_before: dict[Path, bool]
    live_after: dict[Path, bool]


_staged: dict[str, Staging] = {}


def run(argv: Sequence[str | Path], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured as text, no check."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with a digest of its content (symlinks by target).

    Bytecode is listed but not compared: it embeds the mtime of its source, which a reinstall
    renews.
    """
    seen: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            seen[rel] = f"-> {path.readlink()}"
        elif path.is_dir():
            seen[rel] = "dir"
        elif path.suffix == ".pyc":
            seen[rel] = "bytecode"
        else:
            seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def freeze_checkout(to: Path) -> Path:
    """Copy the checkout's files as git sees them (tracked and new, not ignored) to ``to``."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for name in files.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            target = to / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return to


def install(checkout: Path, root: Path) -> str:
    """``packaging/install-systemd --root root`` of a checkout; returns its output, fails the test
    on error."""
    done = run([checkout / "packaging/install-systemd", "--root", root])
    if done.returncode != 0:
        pytest.fail(f"install-systemd failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def stage_once(factory: pytest.TempPathFactory) -> Staging:
    """The session's staged tree, made on first use by two installer runs."""
    if "tree" not in _staged:
        live_before = {p: p.exists() for p in LIVE_PATHS}
        checkout = freeze_checkout(factory.mktemp("checkout"))
        root = factory.mktemp("staged")
        first_output = install(checkout, root)
        first = snapshot(root)
        with (root / CONFIG).open("a") as config:
            config.write(OPERATOR_EDIT)
        second_output = install(checkout, root)
        _staged["tree"] = Staging(
            root=root,
            first=first,
            second=snapshot(root),
            first_output=first_output,
            second_output=second_output,
            live_before=live_before,
            live_after={p: p.exists() for p in LIVE_PATHS},
        )
    return _staged["tree"]


def unit_lines(unit: Path, key: str) -> list[str]:
    """The values of every ``key=`` line of a unit file, in order."""
    prefix = key + "="
    return [
        line[len(prefix) :] for line in unit.read_text().splitlines() if line.startswith(prefix)
    ]


def staged_argv(root: Path, command: str, config: Path) -> list[str]:
    """A unit's Exec command line as it runs from the staged tree.

    /opt/kktd/bin/kktd is a script whose ``#!`` names /opt/kktd/bin/python, which on this machine
    exists only inside the staged tree: the staged interpreter runs it instead (the venv is found
    from the interpreter's own path, as on the target). /etc/kktd/kktd.toml becomes ``config``.
    """
    argv = shlex.split(command)
    if argv[0] == f"{PREFIX}/bin/kktd":
        argv[:1] = [str(root / "opt/kktd/bin/python3"), str(root / "opt/kktd/bin/kktd")]
    return [str(config) if a == "/etc/kktd/kktd.toml" else a for a in argv]
