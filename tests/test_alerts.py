"""The alert rules: ``promtool`` checks and unit-tests them (Debian's ``prometheus`` package ships it;
``.ci/run`` installs it), every alert has a promtool case that fires it and a runbook entry in
``docs/operations.md``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")


def alerts() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "CI must install Debian's prometheus package (promtool)"
    return subprocess.run(
        [PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.integration
@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"), reason="needs promtool (apt-get install prometheus)"
)
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name)
    print(tested.stdout)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_test_case() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        check["alertname"] for case in cases for check in case["alert_rule_test"] if check.get("exp_alerts")
    }
    quiet = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if not check.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_every_alert_has_a_runbook_section() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in alerts():
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, f"{rule['alert']}: no '### {rule['alert']}' in {RUNBOOK.name}"
        assert rule["labels"]["severity"] in ("warning", "critical")
