"""A short ``make chaos`` inside ``make test``: fewer events, the same faults, the same accounting,
once per unknown-outcome policy."""

from __future__ import annotations

import pytest

from tests import chaos

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("policy", ["dead-letter", "resend"])
def test_short_fault_run_loses_nothing_and_surveys_nobody_twice(policy: str) -> None:
    args = chaos.parse_args(["--users", "250", "--phase-seconds", "2.5", "--drain-seconds", "150"])
    report = chaos.run(args, policy)
    assert report["lost"] == 0, report
    assert report["duplicate_surveys"] == 0, report
    assert report["acknowledged"] == report["unique_messages"] == 500
    assert "redis SIGKILL + restart (AOF)" in report["faults"], report
    assert "SIGKILL worker-a" in report["faults"], report
    assert set(report["states"]) <= {"delivered", "ineligible", "dead"}, report
    if policy == "resend":
        assert report["dead"] == 0, report
        assert report["never_surveyed"] == 0, report
    else:
        assert report["users_surveyed"] + report["dead"] - report["dead_but_surveyed"] == 250, report
        assert all(reason.startswith("survey outcome unknown") for reason in report["dead_reasons"]), report
    assert chaos.passed(report), report
