"""A short ``make chaos`` inside ``make test``: fewer events, the same faults, the same accounting."""

from __future__ import annotations

import pytest

from tests import chaos

pytestmark = pytest.mark.integration


def test_short_fault_run_loses_nothing_and_surveys_nobody_twice() -> None:
    report = chaos.run(
        chaos.parse_args(["--users", "300", "--phase-seconds", "2.5", "--drain-seconds", "150"])
    )
    assert report["lost"] == 0, report
    assert report["duplicate_surveys"] == 0, report
    assert report["acknowledged"] == report["unique_messages"] == 600
    assert report["users_surveyed"] + report["dead"] - report["dead_but_surveyed"] == 300
    assert set(report["states"]) <= {"delivered", "ineligible", "dead"}, report
    assert all(reason.startswith("survey outcome unknown") for reason in report["dead_reasons"]), report
    assert "redis SIGKILL + restart (AOF)" in report["faults"] and "SIGKILL worker-a" in report["faults"]
    assert chaos.passed(report)
