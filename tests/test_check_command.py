"""``promoter-relay check`` against this run's Redis and the sandbox over HTTP."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import redis
from click.testing import CliRunner, Result

from app.cli import main
from app.devtools.sandbox import SandboxControl, SandboxServer
from tests.conftest import SANDBOX_KEY

# More than one page of the sandbox's campaign list (10 a page), so check has to follow "next".
CAMPAIGNS = list(range(100, 125))


@pytest.fixture
def check(
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: SandboxServer,
    sandbox_control: SandboxControl,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    for name in os.environ:
        if name.startswith(("PROMOTER_", "RELAY_", "SURVEY_", "SUPPRESSION_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("PROMOTER_API_URL", sandbox.url)
    monkeypatch.setenv("RELAY_ENV", "test")
    sandbox_control.configure(campaigns=CAMPAIGNS)

    def run(campaign: int, api_key: str = SANDBOX_KEY) -> Result:
        monkeypatch.setenv("PROMOTER_CAMPAIGN_ID", str(campaign))
        monkeypatch.setenv("PROMOTER_API_KEY", api_key)
        return CliRunner().invoke(main, ["check"])

    return run


def test_check_passes_when_the_campaign_is_among_the_accounts(check: Callable[..., Result]) -> None:
    result = check(123)
    assert result.exit_code == 0, result.output
    assert "ok    Redis answers" in result.output
    assert f"Promoter accepts the API key ({len(CAMPAIGNS)} campaign(s) seen" in result.output
    assert "campaign 123 exists" in result.output
    assert "warn  suppression is off (SUPPRESSION_KEY unset" in result.output


def test_check_says_that_suppression_is_on(
    check: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPRESSION_KEY", "check-suppression-key-0123")
    result = check(123)
    assert result.exit_code == 0, result.output
    assert "ok    a forgotten person's later events are dropped for 30 day(s)" in result.output


def test_check_fails_for_a_campaign_the_account_does_not_have(check: Callable[..., Result]) -> None:
    result = check(7)
    assert result.exit_code == 1, result.output
    assert "FAIL  campaign 7 is not among the account's campaigns" in result.output
    assert "ok    Promoter accepts the API key" in result.output


def test_check_with_a_wrong_api_key_is_one_line_naming_401_without_the_key(
    check: Callable[..., Result], sandbox: SandboxServer
) -> None:
    wrong = "wrong-key-5f3a9c0e1d"
    result = check(123, api_key=wrong)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), "no traceback"
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert "401" in errors[0]
    assert "Traceback" not in result.output
    assert wrong not in result.output
    assert "exists" not in result.output
    assert [c["status"] for c in sandbox.state.calls("/campaigns/")] == [401], "one call, then stop"
