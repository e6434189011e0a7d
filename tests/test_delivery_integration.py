"""The worker for real: Celery worker and beat processes, a real Redis, the sandbox over HTTP."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app.sandbox import SandboxControl
from tests.conftest import CAMPAIGN_ID, Processes, basic, wait_until
from worker import broker, keys
from worker.events import Event
from worker.holds import Holds

pytestmark = pytest.mark.integration


def post(client: FlaskClient, kind: str, **message: Any) -> str:
    message.setdefault("messageId", str(uuid.uuid4()))
    response = client.post(f"/v1/{kind}", json=message, headers=basic())
    assert response.status_code == 200, response.get_json()
    return str(message["messageId"])


def state(r: redis.Redis, message_id: str) -> str | None:
    value = r.hget(keys.message(message_id), "state")
    return str(value) if value is not None else None


def surveys_for(control: SandboxControl, email: str) -> list[dict[str, Any]]:
    return [c for c in control.surveys() if c["json"]["contact"]["email"] == email]


def test_track_before_identify_is_held_then_surveyed_once(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    track_id = post(client, "track", userId="u1", event="NPS", properties={"plan": "pro"})
    wait_until(lambda: state(redis_client, track_id) == "held")
    assert sandbox_control.surveys() == []

    identify_id = post(client, "identify", userId="u1", traits={"email": "ada@example.com", "name": "Ada L"})
    wait_until(lambda: state(redis_client, track_id) == "delivered")
    assert state(redis_client, identify_id) == "delivered"
    surveys = surveys_for(sandbox_control, "ada@example.com")
    assert len(surveys) == 1
    assert surveys[0]["json"]["campaign_id"] == CAMPAIGN_ID
    assert surveys[0]["json"]["contact"]["first_name"] == "Ada"
    history = [h["state"] for h in json.loads(json.dumps(_history(redis_client, track_id)))]
    assert history[:3] == ["received", "held", "received"] and history[-1] == "delivered"
    assert int(redis_client.get(keys.HELD_COUNT) or 0) == 0


def _history(r: redis.Redis, message_id: str) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in r.lrange(keys.history(message_id), 0, -1)]


def test_identify_failing_permanently_leaves_track_held_then_dead_at_expiry(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    sandbox_control.configure(fail_next=[403])
    identify_id = post(client, "identify", userId="u2", traits={"email": "bob@example.com"})
    wait_until(lambda: state(redis_client, identify_id) == "dead")
    track_id = post(client, "track", userId="u2", event="NPS")
    wait_until(lambda: state(redis_client, track_id) == "held")
    dead = json.loads(redis_client.hget(keys.DEAD, identify_id) or "{}")
    assert "403" in dead["reason"] and dead["attempts"] == 1

    time.sleep(1.1)
    holds = Holds(redis_client, 3600, "relay")
    assert holds.expire(ttl_seconds=1) == 1
    assert state(redis_client, track_id) == "dead"
    record = json.loads(redis_client.hget(keys.DEAD, track_id) or "{}")
    assert record["reason"] == "never identified"
    assert sandbox_control.surveys() == []


@pytest.mark.parametrize(
    ("failures", "extra_env"),
    [
        ({"fail_next": [500, 503, 502]}, {}),
        ({"delay_next": [3.0, 3.0]}, {"PROMOTER_TIMEOUT_SECONDS": "1"}),
    ],
    ids=["5xx", "timeouts"],
)
def test_transient_failures_are_retried_to_success(
    client: FlaskClient,
    redis_client: redis.Redis,
    processes: Processes,
    sandbox_control: SandboxControl,
    failures: dict[str, Any],
    extra_env: dict[str, str],
) -> None:
    processes.env.update(extra_env)
    processes.worker()
    processes.beat()
    sandbox_control.configure(**failures)
    identify_id = post(client, "identify", userId="u3", traits={"email": "cy@example.com"})
    wait_until(lambda: state(redis_client, identify_id) == "delivered", timeout=40)
    record = redis_client.hgetall(keys.message(identify_id))
    assert int(record["attempts"]) >= 3
    assert "retrying" in [h["state"] for h in _history(redis_client, identify_id)]
    assert [c["email"] for c in sandbox_control.contacts()] == ["cy@example.com"]


def test_429_pauses_every_worker_until_retry_after(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    processes.beat()
    sandbox_control.configure(throttle_next=1, retry_after=2)
    identify_id = post(client, "identify", userId="u4", traits={"email": "di@example.com"})
    wait_until(lambda: state(redis_client, identify_id) == "delivered", timeout=30)
    calls = sandbox_control.calls("/contacts/")
    assert [c["status"] for c in calls] == [429, 200]
    assert calls[1]["at"] - calls[0]["at"] >= 2.0


def test_duplicate_message_id_gives_one_survey_even_when_redelivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    post(client, "identify", userId="u5", traits={"email": "eve@example.com"})
    wait_until(lambda: redis_client.hget(keys.known("u:u5"), "email"))
    message = {"userId": "u5", "event": "NPS", "messageId": "dup-1"}
    for _ in range(3):
        assert client.post("/v1/track", json=message, headers=basic()).status_code == 200
    wait_until(lambda: state(redis_client, "dup-1") == "delivered")
    # A broker redelivery of the same task (what a crash or visibility timeout produces).
    redelivered: Event = {
        "messageId": "dup-1",
        "type": "track",
        "userId": "u5",
        "anonymousId": None,
        "traits": {},
        "event": "NPS",
        "properties": {},
        "context": {},
        "timestamp": None,
        "receivedAt": "2026-01-01T00:00:00Z",
        "campaignId": None,
    }
    for _ in range(2):
        redis_client.lpush("relay", broker.envelope(redelivered, "relay"))
    wait_until(lambda: redis_client.llen("relay") == 0)
    time.sleep(1.0)
    assert len(surveys_for(sandbox_control, "eve@example.com")) == 1


def test_sigkilled_worker_loses_nothing(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.env["VISIBILITY_TIMEOUT"] = "10"
    sandbox_control.configure(latency_ms=400)
    victim = processes.worker(pool="prefork", concurrency=2)
    users = [f"k{i}" for i in range(12)]
    ids = [post(client, "identify", userId=u, traits={"email": f"{u}@example.com"}) for u in users]
    wait_until(lambda: any(c["status"] is None for c in sandbox_control.calls()), timeout=30)
    processes.kill(victim)
    processes.worker(pool="threads", concurrency=4)
    wait_until(lambda: all(state(redis_client, i) == "delivered" for i in ids), timeout=90)
    emails = {c["email"] for c in sandbox_control.contacts()}
    assert emails == {f"{u}@example.com" for u in users}


def test_concurrent_identify_and_track_never_strand_a_track(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker(concurrency=8)
    processes.worker(concurrency=8)
    rng = random.Random(7)
    users = [f"c{i}" for i in range(150)]
    messages: list[tuple[str, dict[str, Any]]] = []
    for user in users:
        pair = [
            ("identify", {"userId": user, "traits": {"email": f"{user}@example.com"}}),
            ("track", {"userId": user, "event": "NPS"}),
        ]
        rng.shuffle(pair)
        messages += pair
    track_ids: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        local = client.application.test_client()
        for kind, message in chunk:
            message_id = post(local, kind, **message)
            if kind == "track":
                with lock:
                    track_ids.append(message_id)

    threads = [threading.Thread(target=send, args=(messages[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: all(state(redis_client, i) == "delivered" for i in track_ids), timeout=90)
    per_email: dict[str, int] = {}
    for call in sandbox_control.surveys():
        email = call["json"]["contact"]["email"]
        per_email[email] = per_email.get(email, 0) + 1
    assert per_email == {f"{u}@example.com": 1 for u in users}
    assert int(redis_client.get(keys.HELD_COUNT) or 0) == 0
    assert redis_client.zcard(keys.HOLDS) == 0


def test_task_message_lost_by_the_broker_is_requeued_and_delivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    from worker.reconcile import Reconciler

    identify_id = post(client, "identify", userId="u9", traits={"email": "lost@example.com"})
    # What a worker or Redis killed between BRPOP and kombu's unacked bookkeeping leaves behind.
    assert redis_client.delete("relay") == 1
    reconciler = Reconciler(redis_client, "relay", 3600, grace_seconds=0.0)
    assert reconciler.requeue_stale() == 1
    assert reconciler.requeue_stale() == 0, "the re-queued message is at the queue's head, so not stale"
    processes.worker()
    wait_until(lambda: state(redis_client, identify_id) == "delivered")
    assert redis_client.zscore(keys.PENDING, identify_id) is None
    assert redis_client.exists(keys.payload(identify_id)) == 0
    assert "re-queued: its task message was lost" in [
        h["detail"] for h in _history(redis_client, identify_id)
    ]
    assert [c["email"] for c in sandbox_control.contacts()] == ["lost@example.com"]


def test_logs_carry_message_and_task_ids_and_can_be_json(
    client: FlaskClient,
    redis_client: redis.Redis,
    processes: Processes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.logs import JsonFormatter

    processes.env["LOG_FORMAT"] = "json"
    processes.worker()
    with caplog.at_level("INFO", logger="relay.ingest"):
        identify_id = post(client, "identify", userId="j1", traits={"email": "j1@example.com"})
    wait_until(lambda: state(redis_client, identify_id) == "delivered")
    ingest = [r for r in caplog.records if r.name == "relay.ingest"]
    assert len(ingest) == 1
    ingest_line = json.loads(JsonFormatter().format(ingest[0]))
    assert ingest_line["message_id"] == identify_id and ingest_line["msg"] == "identify accepted and queued"
    task_id = ingest_line["task_id"]

    def worker_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in processes.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("message_id") == identify_id]

    lines = wait_until(
        lambda: [x for x in worker_lines() if x["msg"].startswith("delivered")] and worker_lines()
    )
    assert {line["task_id"] for line in lines} == {task_id}
    assert [line["msg"].split(":")[0] for line in lines] == ["attempt 1", "delivered"]


def test_survey_whose_outcome_is_unknown_is_dead_lettered_not_sent_twice(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.env["PROMOTER_TIMEOUT_SECONDS"] = "1"
    processes.worker()
    processes.beat()
    post(client, "identify", userId="t1", traits={"email": "t1@example.com"})
    wait_until(lambda: redis_client.hget(keys.known("u:t1"), "email"))
    sandbox_control.configure(delay_next=[2.5])
    track_id = post(client, "track", userId="t1", event="NPS")
    wait_until(lambda: state(redis_client, track_id) == "dead", timeout=30)
    record = json.loads(redis_client.hget(keys.DEAD, track_id) or "{}")
    assert record["reason"].startswith("survey outcome unknown")
    time.sleep(3)
    assert len(sandbox_control.calls("/v2/survey/")) == 1, "the uncertain survey was never sent again"


def test_trait_update_sent_before_the_first_identify_is_delivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    first = post(client, "identify", userId="tu1", traits={"email": "tu1@example.com"})
    update = post(client, "identify", userId="tu1", traits={"plan": "pro"})
    processes.worker()
    wait_until(lambda: state(redis_client, first) == state(redis_client, update) == "delivered")
    (contact,) = sandbox_control.contacts()
    assert contact["email"] == "tu1@example.com" and contact["attributes"]["plan"] == "pro"
