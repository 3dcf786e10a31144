"""packaging/install-systemd --root: everything staged, relocated to /opt/kktd, idempotent, and the
staged unit's own commands run from the tree."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.packaging import (
    CONFIG,
    OPERATOR_EDIT,
    PACKAGING,
    PREFIX,
    REPO,
    UNIT,
    Staging,
    run,
    snapshot,
    stage_once,
    staged_argv,
    unit_lines,
)
from tests.support.kktd_process import KktdProcess, has_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STAGED_FILES = (
    UNIT,
    "usr/share/kktd/systemd/notify-reload.conf",
    "usr/lib/sysusers.d/kktd.conf",
    "usr/lib/tmpfiles.d/kktd.conf",
    "usr/lib/udev/rules.d/99-kkt.rules",
    "usr/share/man/man8/kktd.8.gz",
    "usr/share/kktd/kktd.toml.example",
    CONFIG,
    "opt/kktd/pyvenv.cfg",
    "opt/kktd/bin/kktd",
)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Staging:
    return stage_once(tmp_path_factory)


def test_root_run_stages_the_venv_unit_user_udev_man_page_and_config(staging: Staging) -> None:
    missing = [f for f in STAGED_FILES if not (staging.root / f).is_file()]
    assert missing == []
    assert (staging.root / "usr/bin/kktd").readlink() == Path(f"{PREFIX}/bin/kktd")
    assert (staging.root / UNIT).read_bytes() == (REPO / "systemd/kktd.service").read_bytes()


def test_staged_venv_names_opt_kktd_and_never_the_staging_directory(staging: Staging) -> None:
    venv = staging.root / "opt/kktd"
    assert (venv / "bin/kktd").read_text().splitlines()[0] == f"#!{PREFIX}/bin/python"
    assert f"VIRTUAL_ENV={PREFIX}" in (venv / "bin/activate").read_text()
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    leaks = run(["grep", "-rlaF", str(venv), str(venv)])
    assert leaks.stdout == ""


def test_rerun_gives_the_same_tree_and_keeps_the_operators_config(staging: Staging) -> None:
    first = {k: v for k, v in staging.first.items() if k != CONFIG}
    second = {k: v for k, v in staging.second.items() if k != CONFIG}
    assert second == first
    assert (staging.root / CONFIG).read_text().endswith(OPERATOR_EDIT)
    assert "kept the existing /etc/kktd/kktd.toml" in staging.second_output


def test_root_run_only_says_what_it_would_run_on_the_live_system(staging: Staging) -> None:
    for output in (staging.first_output, staging.second_output):
        assert "running:" not in output
        for command in (
            "systemd-sysusers /usr/lib/sysusers.d/kktd.conf",
            "systemd-tmpfiles --create /usr/lib/tmpfiles.d/kktd.conf",
            "udevadm control --reload",
            "systemctl daemon-reload",
        ):
            assert f"would run: {command}" in output
    assert staging.live_after == staging.live_before


def test_staged_exec_reload_check_config_accepts_the_installed_example(staging: Staging) -> None:
    unit = staging.root / UNIT
    check, signal_line = unit_lines(unit, "ExecReload")
    assert signal_line == "/bin/kill -HUP $MAINPID"
    done = run(staged_argv(staging.root, check, staging.root / CONFIG))
    assert (done.returncode, done.stderr) == (0, "")


def test_uninstall_removes_what_install_put_and_keeps_the_config_until_purge(
    staging: Staging, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(staging.root, root, symlinks=True)
    done = run([PACKAGING / "uninstall-systemd", "--root", root])
    assert done.returncode == 0, done.stderr
    assert "would run: systemctl disable --now kktd.service" in done.stdout
    files = [k for k, v in snapshot(root).items() if v != "dir"]
    assert files == [CONFIG]
    purged = run([PACKAGING / "uninstall-systemd", "--root", root, "--purge"])
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/kktd").exists()


LIVE_RUN = """
set -e
for d in etc usr opt var; do
  mkdir -p "$1/up/$d" "$1/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$1/up/$d,workdir=$1/work/$d" "/$d"
done
echo overlays-mounted
"$2/install-systemd"
getent passwd kktd
stat -c '%U:%G %a' /var/lib/kktd
kktd check-config
"$2/uninstall-systemd" --purge
test ! -e /opt/kktd && test ! -e /etc/kktd && test ! -e /usr/bin/kktd
"""


def test_live_install_and_uninstall_inside_a_private_mount_namespace(tmp_path: Path) -> None:
    """The path without --root, run for real: /etc, /usr, /opt and /var are overlays in a mount
    namespace of this test only, so the machine itself is never changed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private mount namespace")
    probe = run(["unshare", "-m", "--propagation", "private", "true"])
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    done = run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "bash",
            "-c",
            LIVE_RUN,
            "-",
            tmp_path,
            PACKAGING,
        ]
    )
    if "overlays-mounted" not in done.stdout:
        pytest.skip(f"overlay mounts are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running: systemd-sysusers /usr/lib/sysusers.d/kktd.conf" in done.stdout
    assert re.search(r"^kktd:x:\d+:\d+:.*:/var/lib/kktd:/usr/sbin/nologin$", done.stdout, re.M)
    assert "kktd:kktd 750" in done.stdout
    assert "/etc/kktd/kktd.toml: ok" in done.stdout + done.stderr
    assert "removed /opt/kktd" in done.stdout


def _daemon_code_present() -> bool:
    """Whether this checkout has the daemon yet (it is written alongside the packaging)."""
    probe = run(
        [REPO / ".venv/bin/python", "-c", "import kktd.lifecycle.components, kktd.lifecycle.daemon"]
    )
    return probe.returncode == 0


def test_staged_exec_start_and_reload_run_the_daemon_from_the_tree(
    staging: Staging, tmp_path: Path
) -> None:
    if not _daemon_code_present():
        pytest.skip(
            "the daemon (kktd.lifecycle.daemon, kktd.lifecycle.components) is not in this checkout"
            " yet"
        )
    config = tmp_path / "kktd.toml"
    config.write_text(
        f'[kkt]\nport = "{tmp_path}/no-kkt"\n'
        f'[api]\nlisten = "unix:{tmp_path}/api.sock"\n'
        '[upstream]\nurl = "http://127.0.0.1:9/v1/receipts"\n'
    )
    (tmp_path / "state").mkdir()
    unit = staging.root / UNIT
    (start,) = unit_lines(unit, "ExecStart")
    check, hup = unit_lines(unit, "ExecReload")
    argv = staged_argv(staging.root, start, config)
    assert argv[-2:] == ["--config", str(config)]
    daemon = KktdProcess(
        config,
        argv=argv[:-2],
        base_env={"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(tmp_path / "state")},
    )
    try:
        ready = daemon.wait_ready(timeout=60)
        assert run(staged_argv(staging.root, check, config)).returncode == 0
        kill = run(hup.replace("$MAINPID", str(daemon.pid)).split())
        assert kill.returncode == 0
        again = daemon.wait_for(has_line("READY=1"), timeout=60, start=ready + 1)
        reload = [message for _, message in daemon.messages[ready + 1 : again + 1]]
        assert any("RELOADING=1" in m.split("\n") for m in reload), reload
        daemon.signal(signal.SIGTERM)
        daemon.wait_for(has_line("STOPPING=1"), timeout=60, start=again + 1)
        code = daemon.wait_exit(timeout=60)
    finally:
        daemon.close()
    assert code == 0, daemon.log()
    assert any(line.startswith("MONOTONIC_USEC=") for m in reload for line in m.split("\n"))
