"""The bounded chaos run (`scripts/chaos --quick`): every scenario, zero violations.

One test per scenario, so a failure names the scenario that found it. `KKTD_CHAOS_CYCLES` sets the
kill cycles (20 by default); the full run is `scripts/chaos`.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import SCENARIOS, Plan, run, table


@pytest.mark.chaos
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_quick_chaos_scenario_finds_no_violation(scenario: str) -> None:
    plan = Plan.of(quick=True)
    reports = await run(plan, [scenario], echo=False)
    assert [report.scenario for report in reports] == [scenario]
    (report,) = reports
    if scenario == "kill":
        assert report.cycles == plan.cycles  # every kill cycle ran
    if report.cycles:
        assert report.fds > 0, table(reports)
    assert not report.violations, table(reports)
