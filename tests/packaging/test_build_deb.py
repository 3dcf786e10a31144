"""packaging/build-deb: a .deb whose control data and contents are what a cashier PC needs, and
which dpkg installs into a scratch root (maintainer scripts included) without losing an edited
config."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.packaging import PACKAGING, Staging, run, stage_once

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb"),
]

CONTENTS = (
    "./usr/lib/systemd/system/kktd.service",
    "./usr/share/kktd/systemd/notify-reload.conf",
    "./usr/lib/sysusers.d/kktd.conf",
    "./usr/lib/tmpfiles.d/kktd.conf",
    "./usr/lib/udev/rules.d/99-kkt.rules",
    "./usr/share/man/man8/kktd.8.gz",
    "./etc/kktd/kktd.toml",
    "./usr/share/kktd/kktd.toml.example",
    "./opt/kktd/bin/kktd",
    "./opt/kktd/pyvenv.cfg",
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    staging: Staging = stage_once(tmp_path_factory)
    out = tmp_path_factory.mktemp("dist")
    done = run([PACKAGING / "build-deb", "--root", staging.root, "--out", out])
    assert done.returncode == 0, done.stdout + done.stderr
    (package,) = out.glob("kktd_*.deb")
    return package


def _dpkg(root: Path, *args: str | Path) -> str:
    """dpkg acting on the scratch root, maintainer scripts run outside a chroot with $DPKG_ROOT
    (the scratch root has no shell of its own); python3 is not in it, hence --force-depends."""
    done = run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _scratch_root(path: Path) -> Path:
    for sub in ("info", "updates", "triggers"):
        (path / "var/lib/dpkg" / sub).mkdir(parents=True)
    (path / "var/lib/dpkg/status").touch()
    return path


def test_info_shows_python3_only_dependency_conffile_and_maintainer_scripts(deb: Path) -> None:
    info = run(["dpkg-deb", "--info", deb]).stdout
    depends = re.search(r"^ Depends: (.*)$", info, re.MULTILINE)
    assert depends is not None
    assert depends.group(1) == "python3 (>= 3.11), python3 (<< 3.12)"
    assert run(["dpkg-deb", "-I", deb, "conffiles"]).stdout.split() == ["/etc/kktd/kktd.toml"]
    postinst = run(["dpkg-deb", "-I", deb, "postinst"]).stdout
    assert "systemd-sysusers" in postinst
    assert "daemon-reload" in postinst
    assert "udevadm control --reload" in postinst
    for script in ("prerm", "postrm"):
        assert "#!/bin/sh" in run(["dpkg-deb", "-I", deb, script]).stdout


def test_contents_list_the_unit_user_setup_udev_rule_man_page_config_and_venv(deb: Path) -> None:
    listing = run(["dpkg-deb", "--contents", deb]).stdout
    paths = {line.split()[5] for line in listing.splitlines()}
    assert sorted(set(CONTENTS) - paths) == []
    assert "./usr/bin/kktd -> /opt/kktd/bin/kktd" in listing
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}


def test_installs_into_a_scratch_root_and_keeps_an_edited_config(deb: Path, tmp_path: Path) -> None:
    root = _scratch_root(tmp_path / "root")
    _dpkg(root, "--install", deb)
    assert "kktd:" in (root / "etc/passwd").read_text()
    assert (root / "var/lib/kktd").is_dir()
    assert (root / "opt/kktd/bin/kktd").is_file()
    config = root / "etc/kktd/kktd.toml"
    edited = config.read_text() + "\n# the operator's edit\n"
    config.write_text(edited)

    _dpkg(root, "--install", deb)
    assert config.read_text() == edited

    _dpkg(root, "--remove", "kktd")
    assert not (root / "opt/kktd").exists()
    assert config.read_text() == edited

    purged = _dpkg(root, "--purge", "kktd")
    assert not config.exists()
    assert (root / "var/lib/kktd").is_dir()
    assert "kept the journal in /var/lib/kktd" in purged
