"""The worker for real: Celery worker and beat processes, a real Redis, the sandbox over HTTP."""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app.devtools.sandbox import SandboxControl
from tests.conftest import CAMPAIGN_ID, Processes, basic, ref, wait_until
from tests.factories import stores_for
from worker import keys

pytestmark = pytest.mark.integration


def post(client: FlaskClient, kind: str, **message: Any) -> str:
    message.setdefault("messageId", str(uuid.uuid4()))
    response = client.post(f"/v1/{kind}", json=message, headers=basic())
    assert response.status_code == 200, response.get_json()
    return ref(str(message["messageId"]))


def state(r: redis.Redis, message_ref: str) -> str | None:
    value = r.hget(keys.message(message_ref), "state")
    return str(value) if value is not None else None


def history(r: redis.Redis, message_ref: str) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in r.lrange(keys.history(message_ref), 0, -1)]


def surveys_for(control: SandboxControl, email: str) -> list[dict[str, Any]]:
    return [c for c in control.surveys() if c["json"]["contact"]["email"] == email]


def test_track_before_identify_is_held_then_surveyed_once(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    track_ref = post(client, "track", userId="u1", event="NPS", properties={"plan": "pro"})
    wait_until(lambda: state(redis_client, track_ref) == "held")
    assert sandbox_control.surveys() == []

    identify_ref = post(client, "identify", userId="u1", traits={"email": "ada@example.com", "name": "Ada L"})
    wait_until(lambda: state(redis_client, track_ref) == "delivered")
    assert state(redis_client, identify_ref) == "delivered"
    surveys = surveys_for(sandbox_control, "ada@example.com")
    assert len(surveys) == 1
    assert surveys[0]["json"]["campaign_id"] == CAMPAIGN_ID
    assert surveys[0]["json"]["contact"]["first_name"] == "Ada"
    states = [h["state"] for h in history(redis_client, track_ref)]
    assert states[0] == "held"
    assert states[1] == "received"
    assert states[-1] == "delivered"
    assert int(redis_client.get(keys.HELD_COUNT) or 0) == 0


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
    identify_ref = post(client, "identify", userId="u3", traits={"email": "cy@example.com"})
    wait_until(lambda: state(redis_client, identify_ref) == "delivered", timeout=60)
    record = redis_client.hgetall(keys.message(identify_ref))
    assert int(record["attempts"]) >= 3
    assert "retrying" in [h["state"] for h in history(redis_client, identify_ref)]
    assert [c["email"] for c in sandbox_control.contacts()] == ["cy@example.com"]


def test_429_pauses_every_worker_until_retry_after(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    processes.worker()
    processes.beat()
    sandbox_control.configure(throttle_next=1, retry_after=2)
    first = post(client, "identify", userId="u4", traits={"email": "di@example.com"})
    wait_until(lambda: sandbox_control.calls("/contacts/"))
    second = post(client, "identify", userId="u5", traits={"email": "ed@example.com"})
    wait_until(lambda: state(redis_client, first) == state(redis_client, second) == "delivered", timeout=30)
    calls = sandbox_control.calls("/contacts/")
    assert calls[0]["status"] == 429
    assert all(c["at"] - calls[0]["at"] >= 1.9 for c in calls[1:]), "nobody called during the pause"


def test_duplicate_message_id_gives_one_survey_even_when_redelivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker()
    post(client, "identify", userId="u5", traits={"email": "eve@example.com"})
    message = {"userId": "u5", "event": "NPS", "messageId": "dup-1"}
    for _ in range(3):
        assert client.post("/v1/track", json=message, headers=basic()).status_code == 200
    wait_until(lambda: state(redis_client, ref("dup-1")) == "delivered")
    # Broker redeliveries of the same task (what a crash or visibility timeout produces).
    from worker import taskmessages

    for n in range(2):
        redis_client.lpush("relay", taskmessages.render(ref("dup-1"), "track", "relay", f"again-{n}"))
    wait_until(lambda: redis_client.llen("relay") == 0)
    wait_until(lambda: "nothing to do: final delivered" in processes.logs())
    assert len(surveys_for(sandbox_control, "eve@example.com")) == 1


def test_sigkilled_worker_loses_nothing(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.env["VISIBILITY_TIMEOUT"] = "10"
    sandbox_control.configure(latency_ms=400)
    victim = processes.worker(pool="prefork", concurrency=2)
    users = [f"k{i}" for i in range(12)]
    refs = [post(client, "identify", userId=u, traits={"email": f"{u}@example.com"}) for u in users]
    wait_until(lambda: any(c["status"] is None for c in sandbox_control.calls()), timeout=30)
    processes.kill(victim)
    processes.worker(pool="threads", concurrency=4)
    processes.beat()
    wait_until(lambda: all(state(redis_client, r) == "delivered" for r in refs), timeout=90)
    assert {c["email"] for c in sandbox_control.contacts()} == {f"{u}@example.com" for u in users}


def test_concurrent_identify_and_track_never_strand_a_track(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.worker(concurrency=8)
    processes.worker(concurrency=8)
    rng = random.Random(7)
    users = [f"c{i}" for i in range(150)]
    messages: list[tuple[str, dict[str, Any]]] = []
    for user in users:
        pair: list[tuple[str, dict[str, Any]]] = [
            ("identify", {"userId": user, "traits": {"email": f"{user}@example.com"}}),
            ("track", {"userId": user, "event": "NPS"}),
        ]
        rng.shuffle(pair)
        messages += pair
    track_refs: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        local = client.application.test_client()
        for kind, message in chunk:
            message_ref = post(local, kind, **message)
            if kind == "track":
                with lock:
                    track_refs.append(message_ref)

    threads = [threading.Thread(target=send, args=(messages[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: all(state(redis_client, r) == "delivered" for r in track_refs), timeout=90)
    per_email: dict[str, int] = {}
    for call in sandbox_control.surveys():
        email = call["json"]["contact"]["email"]
        per_email[email] = per_email.get(email, 0) + 1
    assert per_email == {f"{u}@example.com": 1 for u in users}
    assert int(redis_client.get(keys.HELD_COUNT) or 0) == 0
    assert redis_client.zcard(keys.HOLDS_USERS) == 0


def test_task_message_lost_by_the_broker_is_requeued_and_delivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    identify_ref = post(client, "identify", userId="u9", traits={"email": "lost@example.com"})
    # What a worker or Redis killed between BRPOP and kombu's unacked bookkeeping leaves behind.
    assert redis_client.delete("relay") == 1
    reconciler = stores_for(redis_client).reconciler
    reconciler.grace = 0.0
    assert reconciler.requeue_stale() == 1
    assert reconciler.requeue_stale() == 0, "the re-queued message is at the queue's head, so not stale"
    processes.worker()
    wait_until(lambda: state(redis_client, identify_ref) == "delivered")
    assert redis_client.zscore(keys.PENDING, identify_ref) is None
    assert redis_client.exists(keys.event(identify_ref)) == 0
    assert "re-queued: its task message was lost" in [
        h["detail"] for h in history(redis_client, identify_ref)
    ]
    assert [c["email"] for c in sandbox_control.contacts()] == ["lost@example.com"]


def test_logs_carry_message_and_task_ids_and_can_be_json(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.logs import JsonFormatter

    processes.env["LOG_FORMAT"] = "json"
    processes.worker()
    with caplog.at_level("INFO", logger="relay.ingest"):
        identify_ref = post(client, "identify", userId="j1", traits={"email": "j1@example.com"})
    wait_until(lambda: state(redis_client, identify_ref) == "delivered")
    ingest = [r for r in caplog.records if r.name == "relay.ingest"]
    assert len(ingest) == 1
    ingest_line = json.loads(JsonFormatter().format(ingest[0]))
    assert ingest_line["message_id"] == identify_ref
    assert ingest_line["msg"] == "identify accepted and queued"
    task_id = ingest_line["task_id"]

    def worker_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in processes.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("message_id") == identify_ref]

    lines = wait_until(
        lambda: [x for x in worker_lines() if x["msg"].startswith("delivered")] and worker_lines()
    )
    assert {line["task_id"] for line in lines} == {task_id}


def test_housekeeping_logs_only_when_it_did_work(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes
) -> None:
    def script_calls() -> int:
        stats = redis_client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    processes.worker()
    processes.beat()
    wait_until(lambda: "ready." in processes.logs() and "beat: Starting" in processes.logs(), timeout=30)
    # Several idle housekeeping rounds (dispatch runs every second, one script call each) must run,
    # and leave no line.
    before = script_calls()
    wait_until(lambda: script_calls() - before >= 4, timeout=30)
    quiet = processes.logs()
    assert "Task relay.dispatch_due[" not in quiet, "Celery's received/succeeded lines"
    assert "Sending due task" not in quiet
    assert "retries due" not in quiet
    assert "beat: Starting" in quiet, "the start-up lines are still there"
    assert "ready." in quiet, "the start-up lines are still there"
    stores = stores_for(redis_client)
    message_ref = post(client, "identify", userId="h1", traits={"email": "h1@example.com"})
    redis_client.delete("relay")
    stores.schedule.later(message_ref, 0, "test")
    wait_until(lambda: "retries due, queued: 1" in processes.logs(), timeout=15)


def test_survey_whose_outcome_is_unknown_is_dead_lettered_not_sent_twice(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.env["PROMOTER_TIMEOUT_SECONDS"] = "1"
    processes.worker()
    processes.beat()
    post(client, "identify", userId="t1", traits={"email": "t1@example.com"})
    wait_until(lambda: sandbox_control.contacts())
    sandbox_control.configure(delay_next=[2.5])
    track_ref = post(client, "track", userId="t1", event="NPS")
    wait_until(lambda: state(redis_client, track_ref) == "dead", timeout=30)
    record = json.loads(redis_client.hget(keys.DEAD, track_ref) or "{}")
    assert record["reason"].startswith("survey outcome unknown")
    assert record["evidence"]["cause"] == "timeout"
    assert record["evidence"]["call_started"]
    wait_until(lambda: sandbox_control.calls("/v2/survey/")[0]["status"] is not None, timeout=10)
    assert len(sandbox_control.calls("/v2/survey/")) == 1, "the uncertain survey was never sent again"


def test_with_resend_a_gateway_504_is_sent_once_more_and_delivered(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    processes.env["UNKNOWN_SURVEY_OUTCOME"] = "resend"
    processes.worker()
    processes.beat()
    post(client, "identify", userId="g1", traits={"email": "g1@example.com"})
    wait_until(lambda: sandbox_control.contacts())
    sandbox_control.configure(fail_next=[504])
    track_ref = post(client, "track", userId="g1", event="NPS")
    wait_until(lambda: state(redis_client, track_ref) == "delivered", timeout=30)
    assert [c["status"] for c in sandbox_control.calls("/v2/survey/")] == [504, 200]
    detail = redis_client.hget(keys.message(track_ref), "detail") or ""
    assert "had not reached Promoter" in detail


def test_surveys_wait_for_no_backlog_of_trait_updates(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl
) -> None:
    """Priority order with a real worker: 60 updates on the low queue, then 20 surveys; every survey
    goes before the updates (kombu's round-robin would interleave them)."""
    worker = processes.worker(concurrency=4)
    for i in range(60):
        post(client, "identify", userId=f"b{i}", traits={"email": f"b{i}@example.com"})
    for i in range(20):
        post(client, "identify", userId=f"n{i}", traits={"email": f"n{i}@example.com"})
    wait_until(lambda: len(sandbox_control.contacts()) == 80, timeout=60)
    processes.kill(worker)
    updates = [post(client, "identify", userId=f"b{i}", traits={"plan": "pro"}) for i in range(60)]
    assert redis_client.llen("relay.low") == 60
    surveys = [post(client, "track", userId=f"n{i}", event="NPS") for i in range(20)]
    sandbox_control.reset()
    processes.worker(concurrency=1)
    wait_until(lambda: all(state(redis_client, r) == "delivered" for r in surveys + updates), timeout=60)
    paths = [c["path"] for c in sandbox_control.calls()]
    assert paths[:20] == ["/v2/survey/"] * 20, paths[:25]
