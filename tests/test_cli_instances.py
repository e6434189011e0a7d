"""The CLI finds a running ``promoter-relay dev`` from any folder and says which Redis it reads; with
several running it names them instead of guessing; ``check`` reads ``./.env`` like docker compose."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from app.cli import main
from app.devtools.dev import running_instances
from app.devtools.sandbox import SandboxControl, SandboxServer
from tests.conftest import SANDBOX_KEY
from tests.factories import stores_for
from tests.test_admin import dead_track


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """The CLI run from an unrelated folder, with a registry of running instances of its own."""
    for name in list(os.environ):
        if name.startswith(("PROMOTER_", "REDIS_", "RELAY_", "SEGMENT_", "ADMIN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_ENV", "test")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args))

    return run


def announce(tmp_path: Path, redis_url: str, name: str, pid: int) -> Path:
    """What a running ``promoter-relay dev`` leaves in the registry."""
    registry = tmp_path / "run" / f"promoter-relay-{os.getuid()}"
    registry.mkdir(parents=True, exist_ok=True)
    state = {"redis_url": redis_url, "api": "http://127.0.0.1:1", "pid": pid, "data_dir": f"/work/{name}"}
    path = registry / f"{pid}.json"
    path.write_text(json.dumps(state))
    return path


def test_status_from_another_folder_reads_the_running_dev_instance(
    cli: Callable[..., Result], tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    dead_track(stores_for(redis_client), "d1")
    announce(tmp_path, redis_url, "project", os.getpid())
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    assert "the running `promoter-relay dev` with data in /work/project" in result.stderr
    assert json.loads(result.stdout)["queue"]["dead_letters"] == 1


def test_an_instance_that_stopped_is_forgotten(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    gone = announce(tmp_path, redis_url, "gone", 2**22 + 12345)  # above any pid this machine hands out
    assert running_instances() == []
    assert not gone.exists()


def test_with_several_instances_running_the_cli_names_them_instead_of_guessing(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    announce(tmp_path, redis_url, "one", os.getpid())
    announce(tmp_path, redis_url, "two", os.getppid())
    result = cli("status")
    assert result.exit_code == 1
    assert "2 `promoter-relay dev` instances are running (" in result.output
    assert "/work/one" in result.output
    assert "/work/two" in result.output
    assert "set REDIS_URL" in result.output


def test_check_reads_the_env_file_and_the_environment_wins(
    cli: Callable[..., Result],
    redis_client: redis.Redis,
    redis_url: str,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SandboxControl(sandbox.url).configure(campaigns=[5])
    Path(".env").write_text(
        f"# as README says: cp .env.example .env\nPROMOTER_API_URL={sandbox.url}\n"
        f"PROMOTER_API_KEY={SANDBOX_KEY}\nPROMOTER_CAMPAIGN_ID=4\nREDIS_URL={redis_url}\nSURVEY_EVENTS=\n"
    )
    monkeypatch.setenv("PROMOTER_CAMPAIGN_ID", "5")
    result = cli("check")
    assert result.exit_code == 0, result.output
    assert "Settings: ./.env, overridden by the environment" in result.stderr
    assert "ok    Promoter accepts the API key" in result.output
    assert "ok    campaign 5 exists" in result.output
    assert SANDBOX_KEY not in result.output
