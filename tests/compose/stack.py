"""docker-compose.yml, started for real: `make compose-test`.

The compose file as operators run it (plus tests/compose/override.yml: a sandbox Promoter, a short
visibility timeout) on a real Docker engine, with three workers. Checks go through the published
ports on 127.0.0.1, ``docker compose exec`` and ``docker kill``; containers talk to each other on
the compose network only. The tests run in order against one stack: services healthy, the
monitoring profile and secrets override valid, README's example delivered, the CLI in a container,
workers SIGKILLed and SIGTERMed under load, Redis restarted under load, a full Redis answering 503.

``make test`` does not collect this module (its name is not ``test_*.py``): it needs a Docker
engine and local base images, which tests/compose/engine.sh provides (``RELAY_BASE_IMAGE`` and
``REDIS_IMAGE``; without them compose pulls python:3.11-slim and redis:7.2-alpine). Figures are
printed and written to test-artifacts/compose-test/results.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import requests
import segment.analytics as analytics
import yaml

from app.devtools.processes import free_port
from app.devtools.sandbox import SandboxControl
from tests.conftest import ARTIFACTS, ROOT, wait_until

pytestmark = pytest.mark.integration

PROJECT = "promoter-relay-compose-test"
SERVICES = ("redis", "api", "worker", "beat", "flower", "sandbox")
WORKERS = 3
REDIS_MAXMEMORY = "256mb"
VISIBILITY_TIMEOUT = 20  # tests/compose/override.yml
OUT = ARTIFACTS / "compose-test"
RESULTS: dict[str, Any] = {}


def _compose_command() -> list[str]:
    """Compose v2 (the docker CLI plugin) when there is one, else v1 (Debian's docker-compose)."""
    if shutil.which("docker") and _quiet(["docker", "compose", "version"]) == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (engine.sh install)")


def _quiet(argv: list[str]) -> int:
    return subprocess.run(argv, capture_output=True, check=False).returncode


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def report(name: str, value: Any, text: str) -> None:
    RESULTS[name] = value
    print(f"\n  {text}", flush=True)


@dataclass
class Stack:
    base: list[str]
    env: dict[str, str]
    api: str
    write_key: str
    admin_token: str
    sandbox: SandboxControl

    def compose(self, *args: str, timeout: float = 300) -> str:
        return _run([*self.base, *args], self.env, timeout)

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command, timeout=60)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def admin(self, path: str) -> Any:
        response = requests.get(
            f"{self.api}/admin/api/{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def send(self, batch: list[dict[str, Any]]) -> requests.Response:
        auth = (self.write_key, "")
        return requests.post(f"{self.api}/v1/batch", json={"batch": batch}, auth=auth, timeout=10)

    def state(self, message_id: str) -> str:
        return str(self.admin(f"messages/{message_id}")["message"]["state"])

    def undelivered(self, message_ids: list[str]) -> list[str]:
        return [m for m in message_ids if self.state(m) != "delivered"]

    def deliveries(self, message_id: str) -> list[float]:
        """When the message reached ``delivered``: more than once when a task ran again (a no-op)."""
        history = self.admin(f"messages/{message_id}")["message"]["history"]
        return [datetime.fromisoformat(e["at"]).timestamp() for e in history if e["state"] == "delivered"]

    def wait_delivered(self, message_ids: list[str], timeout: float) -> None:
        """Every message delivered within ``timeout``; else the states of those that were not."""
        deadline = time.monotonic() + timeout
        while left := self.undelivered(message_ids):
            if time.monotonic() > deadline:
                states = Counter(self.state(m) for m in left)
                samples = [self.admin(f"messages/{m}")["message"] for m in left[:3]]
                raise AssertionError(f"{len(left)} not delivered within {timeout} s: {states}; {samples}")
            time.sleep(1)

    def surveys(self) -> Counter[str]:
        return Counter(call["json"]["contact"]["email"] for call in self.sandbox.surveys())


def health(container: str) -> str:
    template = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    return _run(["docker", "inspect", "-f", template, container]).strip()


def all_healthy(stack: Stack) -> bool:
    for service in SERVICES:
        ids = stack.containers(service)
        if len(ids) != (WORKERS if service == "worker" else 1):
            return False
        if any(health(container) != "healthy" for container in ids):
            return False
    return True


def _env_file(path: os.PathLike[str], values: dict[str, str]) -> None:
    with open(path, "w") as file:
        file.writelines(f"{name}={value}\n" for name, value in values.items())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    OUT.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("compose")
    write_key, admin_token, api_key = (secrets.token_hex(16) for _ in range(3))
    # What an operator's .env holds: read by compose for ${...} (--env-file) and by the services.
    env_file = work / "relay.env"
    _env_file(
        env_file,
        {
            "PROMOTER_API_KEY": api_key,
            "PROMOTER_CAMPAIGN_ID": "1",
            "SEGMENT_WRITE_KEYS": write_key,
            "ADMIN_TOKEN": admin_token,
            "LOG_FORMAT": "json",
        },
    )
    api_port, sandbox_port, flower_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RELAY_ENV_FILE": str(env_file),
        "RELAY_TAG": "compose-test",
        "API_PUBLISH": f"127.0.0.1:{api_port}",
        "FLOWER_PORT": str(flower_port),
        "SANDBOX_PORT": str(sandbox_port),
        "SANDBOX_API_KEY": api_key,
        "REDIS_MAXMEMORY": REDIS_MAXMEMORY,
    }
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "tests/compose/override.yml")]
    base = [*_compose_command(), "--env-file", str(env_file), "--project-directory", str(ROOT)]
    base += ["-p", PROJECT, *files]
    stack = Stack(
        base,
        env,
        f"http://127.0.0.1:{api_port}",
        write_key,
        admin_token,
        SandboxControl(f"http://127.0.0.1:{sandbox_port}"),
    )
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")  # a previous run's leftovers
    started = time.monotonic()
    (OUT / "build.log").write_text(stack.compose("build", timeout=1200))
    built = time.monotonic()
    report("build_seconds", round(built - started, 1), f"images built in {built - started:.0f} s")
    try:
        stack.compose("up", "--detach", "--scale", f"worker={WORKERS}", timeout=600)
        wait_until(lambda: all_healthy(stack), timeout=240, interval=1)
        up = time.monotonic() - built
        report("healthy_after_seconds", round(up, 1), f"{len(SERVICES)} services healthy {up:.0f} s after up")
        yield stack
    finally:
        (OUT / "services.log").write_text(stack.compose("logs", "--no-color", "--timestamps", timeout=120))
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
        (OUT / "results.json").write_text(json.dumps(RESULTS, indent=2, sort_keys=True) + "\n")


def test_every_service_is_healthy_with_the_compose_settings(stack: Stack) -> None:
    for service in SERVICES:
        containers = stack.containers(service)
        assert len(containers) == (WORKERS if service == "worker" else 1), service
        assert [health(c) for c in containers] == ["healthy"] * len(containers), service
    values = stack.exec("redis", "redis-cli", "config", "get", "*").split("\n")
    config = dict(zip(values[0::2], values[1::2], strict=False))
    assert config["maxmemory"] == str(256 * 1024 * 1024)
    assert config["maxmemory-policy"] == "noeviction"
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
    # GUNICORN_WORKERS' compose default (2), not one per core of the host: a master and two workers.
    count = (
        "import pathlib; "
        "print(sum(p.read_bytes().startswith(b'/opt/venv/bin/python') and b'gunicorn' in p.read_bytes() "
        "for p in pathlib.Path('/proc').glob('[0-9]*/cmdline')))"
    )
    assert stack.exec("api", "python", "-c", count).strip() == "3"


def test_the_monitoring_profile_and_the_secrets_override_are_valid_compose(stack: Stack) -> None:
    """Prometheus' and Grafana's images cannot be pulled here (no registry reachable), so the profile
    is not started: compose itself checks it, with the secrets override on top, as an operator runs it.
    """
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "deploy" / "compose.secrets.yml")]
    command = [*stack.base[: stack.base.index("-p")], *files, "--profile", "monitoring", "config"]
    config = yaml.safe_load(_run(command, stack.env))
    services = config["services"]
    assert {"prometheus", "grafana", "api", "worker", "beat", "flower", "redis"} <= set(services)
    for name in ("api", "worker", "beat", "flower"):
        assert services[name]["environment"]["ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
    assert config["secrets"]["metrics_token"]["file"] == str(ROOT / "secrets" / "metrics_token")
    volumes = {str(v) for v in services["grafana"]["volumes"]}
    assert any(str(ROOT / "deploy" / "grafana" / "provisioning") in v for v in volumes), volumes


def test_readme_example_identify_and_track_are_delivered(stack: Stack) -> None:
    """README's segment-analytics-python example, with the host pointed at the published api port."""
    client = analytics.Client(stack.write_key, host=stack.api, sync_mode=True, max_retries=0)
    client.identify("u1", {"email": "ada@example.com", "name": "Ada Lovelace"})
    client.track("u1", "NPS")
    wait_until(lambda: stack.surveys()["ada@example.com"] == 1, timeout=60, interval=0.5)
    contacts = {c["email"]: c for c in stack.sandbox.contacts()}
    assert (contacts["ada@example.com"]["first_name"], contacts["ada@example.com"]["last_name"]) == (
        "Ada",
        "Lovelace",
    )


def test_the_cli_answers_inside_a_container(stack: Stack) -> None:
    status = json.loads(stack.exec("api", "promoter-relay", "status", "--json"))
    assert status["totals"]["delivered"] >= 2
    assert status["queue"]["dead_letters"] == 0
    assert stack.exec("worker", "promoter-relay", "--version").startswith("promoter-relay")


def identify_and_track(user: str) -> list[dict[str, Any]]:
    """A user's identify (messageId ``<user>-i``, email ``<user>@example.com``) and survey track."""
    return [
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": f"{user}@example.com"},
            "messageId": f"{user}-i",
        },
        {"type": "track", "userId": user, "event": "NPS", "messageId": f"{user}-t"},
    ]


def _load(stack: Stack, tag: str, users: int) -> tuple[list[str], set[str]]:
    """identify + track per user, half of the tracks before their identify, in batches of 100."""
    messages: list[dict[str, Any]] = []
    for i in range(users):
        pair = identify_and_track(f"{tag}-{i}")
        messages += pair[::-1] if i % 2 else pair
    for start in range(0, len(messages), 100):
        response = stack.send(messages[start : start + 100])
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(messages[start : start + 100])
    return [m["messageId"] for m in messages], {f"{tag}-{i}@example.com" for i in range(users)}


_TASK_LINE = re.compile(r"Task [\w.]+\[[^:\]]+:([^#\]]+)(?:#\d+)?\] (\w+)")


def in_flight(container: str, at: float) -> set[str]:
    """The messageIds a worker had taken and not finished at ``at``, from its own log: Celery logs
    each task once as received, then once as succeeded, raised, retried or rejected."""
    logs = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, timeout=60, check=True
    )
    taken: Counter[str] = Counter()
    for line in (logs.stdout + logs.stderr).splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        match = _TASK_LINE.match(record.get("msg", ""))
        if match and datetime.fromisoformat(record["ts"]).timestamp() < at:
            taken[match[1]] += 1 if match[2] == "received" else -1
    return {message_id for message_id, count in taken.items() if count > 0}


def exit_time(container: str, after: float) -> float | None:
    """When the container last exited, if that was after ``after`` (it may have been restarted since)."""
    finished = _run(["docker", "inspect", "-f", "{{.State.FinishedAt}}", container]).strip()
    when = datetime.fromisoformat(finished[:26].rstrip("Z") + "+00:00").timestamp()
    return when if when > after else None


def test_scaled_workers_lose_nothing_when_one_is_killed_and_one_stopped(stack: Stack) -> None:
    """Three workers take a batch load; mid-calls, one gets SIGKILL and another SIGTERM.

    The killed worker's messages stay unacknowledged in Redis until the visibility timeout (counted
    from when it took them), then come back to the others; the stopped one finishes every task it
    had started before it exits (its log says so). Every message ends delivered and every person is
    surveyed exactly once (the sandbox, like Promoter, refuses a second survey within its
    eligibility window; the override resends surveys whose outcome the kill left unknown).
    """
    killed, stopped = stack.containers("worker")[:2]
    stack.sandbox.configure(latency_ms=3000, survey_cooldown_seconds=3600)
    ids, emails = _load(stack, "load", 200)
    wait_until(
        lambda: sum(c["status"] is None for c in stack.sandbox.calls()) >= 30, timeout=60, interval=0.1
    )
    kill_time = time.time()
    _run(["docker", "kill", "--signal", "KILL", killed])
    term_time = time.time()
    _run(["docker", "kill", "--signal", "TERM", stopped])
    killed_ids, stopped_ids = in_flight(killed, kill_time), in_flight(stopped, term_time)
    assert killed_ids, "the killed worker was running nothing"
    assert stopped_ids, "the stopped worker was running nothing"
    exited = wait_until(lambda: exit_time(stopped, after=term_time), timeout=60, interval=0.5)
    assert in_flight(stopped, exited) == set(), "the stopped worker left tasks unfinished"
    stack.wait_delivered(ids, timeout=VISIBILITY_TIMEOUT + 180)
    everything = time.time() - kill_time
    surveys = stack.surveys()
    assert {email: surveys[email] for email in emails} == dict.fromkeys(emails, 1)
    assert stack.admin("stats")["queue"]["dead_letters"] == 0
    back = sorted(stack.deliveries(m)[0] - kill_time for m in killed_ids)
    again = sum(len(stack.deliveries(m)) > 1 for m in ids)
    stats = stack.admin("stats")
    report(
        "kill",
        {
            "messages": len(ids),
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "promoter_latency_seconds": 3,
            "killed_worker_messages": len(killed_ids),
            "killed_worker_messages_delivered_after_kill_seconds": [round(back[0], 1), round(back[-1], 1)],
            "stopped_worker_messages": len(stopped_ids),
            "stopped_worker_exited_after_sigterm_seconds": round(exited - term_time, 1),
            "all_delivered_after_kill_seconds": round(everything, 1),
            "delivered_again_as_no_op": again,
            "survey_outcomes_unknown": stats["survey_unknown"],
            "survey_resends": stats["survey_resend"],
        },
        f"{len(ids)} messages, 3 workers, Promoter answering in 3 s. SIGKILL with {len(killed_ids)} "
        f"messages running: delivered {back[0]:.1f}-{back[-1]:.1f} s after the kill "
        f"(VISIBILITY_TIMEOUT={VISIBILITY_TIMEOUT}). SIGTERM with {len(stopped_ids)} running: all "
        f"finished when it exited, {exited - term_time:.1f} s later. All delivered {everything:.1f} s "
        f"after the kill; {len(emails)} people surveyed once each; {again} messages ran again after "
        "delivery (no-ops)",
    )
    stack.compose("up", "--detach", "--no-recreate", "--scale", f"worker={WORKERS}")
    wait_until(lambda: all_healthy(stack), timeout=180, interval=1)


@dataclass
class Sender:
    """Segment's behaviour, simplified: identify + track per user, a 503 sent again until it is a 200."""

    stack: Stack
    tag: str
    acknowledged: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < 2000:
            user = f"{self.tag}-{i}"
            batch = identify_and_track(user)
            for _ in range(200):
                try:
                    status = self.stack.send(batch).status_code
                except requests.RequestException:  # no answer at all: counted, and sent again
                    status = 0
                self.statuses[status] += 1
                if status == 200:
                    self.acknowledged += [f"{user}-i", f"{user}-t"]
                    break
                time.sleep(0.2)
            i += 1
            time.sleep(0.02)


def test_redis_restart_loses_nothing_acknowledged(stack: Stack) -> None:
    stack.sandbox.configure(latency_ms=20)
    sender = Sender(stack, "restart")
    thread = threading.Thread(target=sender.run, name="sender", daemon=True)
    thread.start()
    wait_until(lambda: len(sender.acknowledged) >= 40, timeout=60, interval=0.1)
    before = len(sender.acknowledged)
    stack.compose("restart", "redis", timeout=120)
    wait_until(lambda: len(sender.acknowledged) >= before + 40, timeout=120, interval=0.1)
    sender.stop.set()
    thread.join(timeout=60)
    assert set(sender.statuses) <= {200, 503}, sender.statuses
    ids = list(sender.acknowledged)
    stack.wait_delivered(ids, timeout=VISIBILITY_TIMEOUT + 180)
    emails = {f"{m[:-2]}@example.com" for m in ids}
    surveys = stack.surveys()
    assert {email: surveys[email] for email in emails} == dict.fromkeys(emails, 1)
    report(
        "redis_restart",
        {"acknowledged": len(ids), "answers": dict(sender.statuses)},
        f"redis restarted under load: {len(ids)} messages acknowledged, all delivered; answers "
        f"{dict(sorted(sender.statuses.items()))}",
    )


def _used_memory(stack: Stack) -> int:
    info = stack.exec("redis", "redis-cli", "info", "memory")
    return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("used_memory:")))


def test_a_full_redis_answers_503_and_keeps_what_it_acknowledged(stack: Stack) -> None:
    """REDIS_MAXMEMORY reaches redis-server's command line: Redis restarted with a small one refuses
    writes (noeviction), ingest answers 503 with Retry-After, and everything answered 200 is delivered
    once the limit is raised again. Promoter is down meanwhile, so the identifies wait in Redis."""
    stack.sandbox.configure(down=True, latency_ms=0)
    small = _used_memory(stack) + 2 * 1024 * 1024
    stack.env["REDIS_MAXMEMORY"] = str(small)
    stack.compose("up", "--detach", "--no-deps", "redis", timeout=120)
    wait_until(lambda: health(stack.containers("redis")[0]) == "healthy", timeout=120, interval=1)
    assert stack.exec("redis", "redis-cli", "config", "get", "maxmemory").split()[1] == str(small)
    acknowledged: list[str] = []
    answers: Counter[int] = Counter()
    refusal: requests.Response | None = None
    note = "x" * 2000
    for n in range(200):
        batch = [identify_and_track(f"full-{n}-{k}")[0] for k in range(50)]
        for message in batch:
            message["traits"]["note"] = note
        response = stack.send(batch)
        answers[response.status_code] += 1
        if response.status_code == 200:
            acknowledged += [m["messageId"] for m in batch]
        elif response.status_code == 503:
            refusal = response
            break
    assert refusal is not None, answers
    assert set(answers) == {200, 503}, answers
    assert int(refusal.headers["Retry-After"]) > 0
    stack.env["REDIS_MAXMEMORY"] = REDIS_MAXMEMORY
    stack.compose("up", "--detach", "--no-deps", "redis", timeout=120)
    stack.sandbox.configure(down=False)
    stack.wait_delivered(acknowledged, timeout=VISIBILITY_TIMEOUT + 240)
    report(
        "full_redis",
        {"maxmemory": small, "acknowledged": len(acknowledged), "answers": dict(answers)},
        f"Redis at maxmemory {small} B: {len(acknowledged)} identifies acknowledged, then 503 "
        f"(Retry-After {refusal.headers['Retry-After']}); all {len(acknowledged)} delivered after",
    )
