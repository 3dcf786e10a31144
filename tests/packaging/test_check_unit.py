"""scripts/check-unit: passes on the real unit with its exposure printed, fails when a hardening
line is removed or the unit draws a verify warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.packaging import SCRIPTS, UNIT, Staging, run, stage_once

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXPOSURE = re.compile(r"exposure (\d+\.\d+) \(limit 1\.5\)")


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Staging:
    return stage_once(tmp_path_factory)


def _without(unit: Path, key: str, to: Path) -> Path:
    """A copy of ``unit`` named kktd.service with every ``key=`` line removed."""
    lines = unit.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(key + "=")]
    assert len(kept) < len(lines), f"the unit has no {key}= line"
    copy = to / "kktd.service"
    copy.write_text("".join(kept))
    return copy


def test_passes_on_the_staged_unit_and_prints_its_exposure(staging: Staging) -> None:
    done = run([SCRIPTS / "check-unit", "--root", staging.root])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "systemd-analyze verify: clean" in done.stdout
    found = EXPOSURE.search(done.stdout)
    assert found is not None, done.stdout
    assert float(found.group(1)) <= 1.5


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("CapabilityBoundingSet", "above 1.5"),
        ("RestrictAddressFamilies", "above 1.5"),
        ("RestrictNamespaces", "above 1.5"),
        ("SystemCallFilter", "above 1.5"),
        ("User", "above 1.5"),
        ("NoNewPrivileges", "newly exposed: NoNewPrivileges="),
        ("ProtectSystem", "newly exposed: ProtectSystem="),
        ("PrivateUsers", "newly exposed: PrivateUsers="),
        ("ProtectKernelTunables", "newly exposed: ProtectKernelTunables="),
        ("MemoryDenyWriteExecute", "newly exposed: MemoryDenyWriteExecute="),
    ],
)
def test_fails_when_a_hardening_line_is_removed(
    staging: Staging, tmp_path: Path, key: str, reason: str
) -> None:
    weakened = _without(staging.root / UNIT, key, tmp_path)
    done = run([SCRIPTS / "check-unit", "--root", staging.root, weakened])
    assert done.returncode != 0
    assert reason in done.stderr


def test_fails_when_verify_warns(staging: Staging, tmp_path: Path) -> None:
    unit = tmp_path / "kktd.service"
    unit.write_text((staging.root / UNIT).read_text().replace("WatchdogSec=", "WatchdogSecs="))
    done = run([SCRIPTS / "check-unit", "--root", staging.root, unit])
    assert done.returncode != 0
    assert "Unknown key 'WatchdogSecs' in section [Service]" in done.stderr
    assert "systemd-analyze verify is not clean" in done.stderr
