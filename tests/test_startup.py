"""Starting the services: no import-time side effects, and a bad or unsafe setting stops a process with
one line naming the variable, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.settings import Settings, load, load_for_service, production_problems

pytestmark = pytest.mark.integration  # each test starts processes

BIN = Path(sys.executable).parent


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "SEGMENT_", "RELAY_", "ADMIN_"))
    }
    return subprocess.run(
        args, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_the_packages_parses_no_environment_and_builds_no_celery_app() -> None:
    probe = "import app, worker, worker.tasks, worker.stores, app.ingest; print('celery' in dir(worker))"
    result = run([sys.executable, "-c", probe], HOLD_TTL_SECONDS="soon")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([str(BIN / "celery"), "-A", "worker", "worker"], id="celery-worker"),
        pytest.param([str(BIN / "celery"), "-A", "worker", "beat"], id="celery-beat"),
        pytest.param(
            [str(BIN / "gunicorn"), "--config", "python:app.gunicorn_conf", "app:create_app()"], id="gunicorn"
        ),
        pytest.param([str(BIN / "promoter-relay"), "status"], id="cli"),
    ],
)
def test_a_malformed_setting_is_one_line_naming_the_variable(command: list[str]) -> None:
    result = run(command, HOLD_TTL_SECONDS="soon", RELAY_ENV="development", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode != 0
    assert "HOLD_TTL_SECONDS must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([str(BIN / "celery"), "-A", "worker", "worker"], id="celery-worker"),
        pytest.param(
            [str(BIN / "gunicorn"), "--config", "python:app.gunicorn_conf", "app:create_app()"], id="gunicorn"
        ),
    ],
)
def test_production_refuses_placeholder_tokens_and_a_missing_api_key(command: list[str]) -> None:
    result = run(
        command,
        ADMIN_TOKEN="change-me-too",
        SEGMENT_WRITE_KEYS="change-me",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "promoter-relay:" in line]
    assert len(lines) == 1, result.stderr
    assert "PROMOTER_API_KEY is empty" in lines[0]
    assert "ADMIN_TOKEN is a placeholder" in lines[0]
    assert "change-me" not in lines[0], "never echo a secret, even a placeholder"
    assert "Traceback" not in result.stderr


def test_help_and_version_work_whatever_the_environment_holds() -> None:
    for args in (["--help"], ["--version"], ["dead-letters", "--help"]):
        result = run([str(BIN / "promoter-relay"), *args], HOLD_TTL_SECONDS="soon")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_production_problems_are_named_one_by_one() -> None:
    assert production_problems(load({}, environment="development")) == []
    problems = production_problems(
        Settings(
            admin_token="short", metrics_token="changeme", segment_write_keys=("k",), promoter_api_key=""
        )
    )
    assert problems == [
        "PROMOTER_API_KEY is empty",
        "METRICS_TOKEN is a placeholder value; set a real one",
        "ADMIN_TOKEN is shorter than 16 characters",
    ]
    good = load(
        {"PROMOTER_API_KEY": "k" * 32, "ADMIN_TOKEN": "a" * 32, "SEGMENT_WRITE_KEYS": "w" * 32},
        redis_url="redis://x",
    )
    assert production_problems(good) == []
    with pytest.raises(ValueError, match="PROMOTER_API_KEY is empty"):
        load_for_service({"SEGMENT_WRITE_KEYS": "w" * 32})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HOLD_TTL_SECONDS": "soon"}, "HOLD_TTL_SECONDS must be a whole number"),
        ({"PROMOTER_RATE_LIMIT": "0"}, "PROMOTER_RATE_LIMIT must be a finite number greater than zero"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must be a redis or rediss or unix URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json"),
        ({"PROMOTER_CONTACT_LIST_IDS": "1,two"}, "PROMOTER_CONTACT_LIST_IDS must be a whole number"),
        ({"UNKNOWN_SURVEY_OUTCOME": "guess"}, "UNKNOWN_SURVEY_OUTCOME must be one of dead-letter, resend"),
        ({"PROMOTER_DAILY_RESERVE": "1.5"}, "PROMOTER_DAILY_RESERVE must be at least 0 and below 1"),
        ({"TRAITS_DENY": "Bad-Name"}, "TRAITS_DENY: 'bad-name' is not a lower snake_case name"),
        ({"SEGMENT_SIGNATURE_ONLY_BATCHES_UNSAFE": "maybe"}, "must be true or false"),
        (
            {"RETRY_MAX_DELAY_SECONDS": "20000"},
            "RETRY_MAX_DELAY_SECONDS must not exceed RETRY_WINDOW_SECONDS",
        ),
    ],
)
def test_malformed_settings_fail_with_the_variable_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(environ)


@pytest.mark.parametrize("name", ["PROMOTER_API_KEY", "ADMIN_TOKEN", "METRICS_TOKEN"])
def test_credentials_with_spaces_fail_at_start_up_without_echoing(name: str) -> None:
    with pytest.raises(ValueError, match=name) as error:
        load({name: "abc def-secret"})
    assert "def-secret" not in str(error.value)


def test_a_worker_with_an_unusable_proxy_stops_at_start_without_echoing_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    result = run(
        [str(BIN / "celery"), "-A", "worker", "worker"],
        HTTPS_PROXY="socks9://relay:s3cret@127.0.0.1:9",
        RELAY_ENV="development",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert result.returncode == 2, result.stderr[-500:]
    assert "the proxy for PROMOTER_API_URL is not usable" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
