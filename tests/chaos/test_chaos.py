"""The bounded chaos run (`scripts/chaos --quick`): every scenario, zero violations.

`KKTD_CHAOS_CYCLES` sets the kill cycles (20 by default); the full run is `scripts/chaos`.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import SCENARIOS, Plan, run, table


@pytest.mark.chaos
@pytest.mark.timeout(300)
async def test_quick_chaos_run_finds_no_violation() -> None:
    reports = await run(Plan.of(quick=True), SCENARIOS, echo=False)
    assert [report.scenario for report in reports] == list(SCENARIOS)
    assert reports[0].cycles == Plan.of(quick=True).cycles  # every kill cycle ran
    assert all(report.fds > 0 for report in reports if report.cycles), table(reports)
    assert not any(report.violations for report in reports), table(reports)
