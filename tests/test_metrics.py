"""What the alerts read: how long the oldest message has waited, the heartbeats of beat and the
workers, messages the reconciler had to queue again, the 503s ingest answers, Redis' memory, and the
day's Promoter budget, counted with or without a daily limit."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from app.devtools.sandbox import SandboxServer
from tests.conftest import ROOT, Processes, basic, settings_for, wait_until
from tests.factories import make_event
from tests.harness import Relay, make_relay
from tests.test_admin import samples
from worker import heartbeat, keys, tasks
from worker.runtime import build_runtime
from worker.settings import load
from worker.stats import snapshot


def test_the_oldest_queued_and_held_messages_have_their_age(relay: Relay) -> None:
    start = relay.clock.now
    relay.send(make_event("waits", user="nobody-yet"))
    relay.drain()
    assert relay.state(relay.runtime.stores.messages.recent(1)[0]["ref"]) == "held"
    relay.clock.advance(50)
    relay.send(make_event("queued-1", "identify", "someone"))
    relay.clock.advance(10)
    relay.send(make_event("queued-2", "identify", "someone-else"))
    ages = snapshot(relay.redis, relay.runtime.settings, now=start + 80)["oldest_age_seconds"]
    assert ages == {"queued": 30.0, "held": 80.0, "held_anonymous": 0.0}
    relay.drain()
    ages = snapshot(relay.redis, relay.runtime.settings, now=start + 90)["oldest_age_seconds"]
    assert ages["queued"] == 0.0, "delivered: nothing waits in the queues"


def test_a_retry_waits_on_purpose_until_it_is_due(relay: Relay) -> None:
    relay.send(make_event("later", "identify", "u1"))
    relay.sandbox.state.configure({"fail_next": [503]})
    relay.drain()
    assert relay.state(relay.runtime.stores.messages.recent(1)[0]["ref"]) == "retrying"
    due = float(relay.redis.zrange(keys.SCHEDULE, 0, 0, withscores=True)[0][1])
    settings = relay.runtime.settings
    assert snapshot(relay.redis, settings, now=due - 0.5)["oldest_age_seconds"]["queued"] == 0.0
    assert snapshot(relay.redis, settings, now=due + 120)["oldest_age_seconds"]["queued"] == 120.0, (
        "a retry due and not taken (beat down) is waiting"
    )


def test_heartbeats_of_beat_and_workers(redis_client: redis.Redis) -> None:
    now = 1_800_000_000.0
    settings = load({}, redis_url="redis://unused", environment="test")
    silent = snapshot(redis_client, settings, now=now)
    assert silent["heartbeat_age_seconds"] == {"beat": None, "worker": None}
    assert silent["workers_alive"] == 0
    redis_client.set(heartbeat.BEAT, f"{now - 2:.3f}")
    heartbeat.write_worker(redis_client, "old@host-a", now - 2 * 86400)
    heartbeat.write_worker(redis_client, "gone@host-b", now - 600)
    heartbeat.write_worker(redis_client, "w1@host-c", now - 5)
    snap = snapshot(redis_client, settings, now=now)
    assert snap["heartbeat_age_seconds"] == {"beat": 2.0, "worker": 5.0}
    assert snap["workers_alive"] == 1
    assert set(redis_client.hkeys(heartbeat.WORKERS)) == {"gone@host-b", "w1@host-c"}, (
        "a worker not heard from for a day is forgotten"
    )
    assert 0 < redis_client.ttl(heartbeat.WORKERS) <= heartbeat.FORGET_SECONDS


def test_metrics_show_silence_as_infinitely_old_and_count_lost_task_messages(
    client: FlaskClient, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    ages = samples(client, "relay_heartbeat_age_seconds")
    assert ages == {"service=beat": math.inf, "service=worker": math.inf}
    assert samples(client, "relay_redis_up") == {"": 1.0}
    assert samples(client, "relay_lost_task_messages_requeued_total") == {"": 0.0}
    harness = make_relay(redis_client, sandbox)
    harness.send(make_event("lost"))
    redis_client.delete("relay")  # a worker killed between BRPOP and recording the message
    harness.clock.advance(harness.stores.reconciler.grace + 1)
    assert harness.stores.reconciler.requeue_stale() == 1
    assert samples(client, "relay_lost_task_messages_requeued_total") == {"": 1.0}
    memory = samples(client, "relay_redis_memory_used_bytes")[""]
    assert memory > 0
    assert "" in samples(client, "relay_redis_maxmemory_bytes")


def test_ingest_503s_are_counted_even_though_redis_cannot_count_them() -> None:
    """A Redis nobody answers: ingest says 503 with Retry-After, and /metrics still answers, with
    ``relay_redis_up 0`` and the 503 counted in the process."""
    dead = create_app({"TESTING": True, **settings_for("redis://127.0.0.1:1/0")}).test_client()
    before = samples(dead, "relay_ingest_unavailable_total")
    assert before["cause=unreachable"] >= 0
    response = dead.post("/v1/track", json={"userId": "u1", "event": "NPS"}, headers=basic())
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    after = samples(dead, "relay_ingest_unavailable_total")
    assert after["cause=unreachable"] == before["cause=unreachable"] + 1
    assert samples(dead, "relay_redis_up") == {"": 0.0}


@pytest.mark.parametrize("daily_limit", [None, 1000], ids=["no-limit", "limit"])
def test_budget_used_today_counts_every_call_with_or_without_a_daily_limit(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, daily_limit: int | None
) -> None:
    """Before, "budget used today" stayed 0 unless PROMOTER_DAILY_LIMIT was set."""
    settings = load(
        {}, **settings_for(redis_url, promoter_api_url=sandbox.url, promoter_api_key="sandbox-test-key",
                           promoter_daily_limit=daily_limit, promoter_rate_limit=1000.0)
    )  # fmt: skip
    runtime = build_runtime(settings)
    harness = make_relay(redis_client, sandbox)
    harness.send(make_event("id-1", "identify", "u1"), make_event("nps-1", user="u1"))
    for ref in (make_event("id-1")["ref"], make_event("nps-1")["ref"]):
        redis_client.rpop("relay")
        handler = tasks.HANDLERS["relay.identify" if ref.endswith("id-1") else "relay.track"]
        assert tasks.deliver(ref, handler, runtime) == "delivered"
    calls = len(sandbox.state.calls())
    assert calls == 2
    assert snapshot(redis_client, settings)["budget"]["used_today"] == calls


@pytest.mark.integration
def test_a_running_worker_beats_and_its_health_check_says_so(
    processes: Processes, redis_client: redis.Redis, redis_url: str
) -> None:
    processes.worker(concurrency=1)
    wait_until(lambda: redis_client.hlen(heartbeat.WORKERS) == 1, timeout=60)
    app = create_app({"TESTING": True, **settings_for(redis_url)}).test_client()
    assert samples(app, "relay_workers_alive") == {"": 1.0}
    assert samples(app, "relay_heartbeat_age_seconds")["service=worker"] < heartbeat.WORKER_ALIVE_SECONDS
    env = {**processes.env, "REDIS_URL": redis_url}
    check = [str(Path(sys.executable).parent / "promoter-relay"), "health", "worker", "--max-age", "60"]
    result = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "worker: heartbeat" in result.stdout
    beat = subprocess.run([*check[:2], "beat"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert beat.returncode == 1
    assert "beat: no heartbeat" in beat.stderr
    assert time.time() - float(redis_client.hvals(heartbeat.WORKERS)[0]) < 60
