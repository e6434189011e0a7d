"""Redis must not grow without bound: after a mixed workload, every key the relay (or Celery) wrote
either expires or is one of the bounded structures documented in ``worker.keys.BOUNDED``."""

from __future__ import annotations

import fnmatch

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import Processes, basic, ref, wait_until
from tests.factories import make_event, text
from tests.harness import make_relay
from worker import keys

pytestmark = pytest.mark.integration  # each test starts processes

QUEUES = {"relay", "relay.low", "relay.control"}
# kombu's own: reserved messages of live workers, and the exchange bindings (one per queue).
KOMBU = {"unacked": "messages reserved by live workers", "unacked_index": "their index",
         "_kombu.binding*": "bindings of exchanges to queues: a few members per queue"}  # fmt: skip


def allowed_without_ttl(key: str) -> bool:
    return key in keys.BOUNDED or key in QUEUES or any(fnmatch.fnmatch(key, pattern) for pattern in KOMBU)


def test_every_key_expires_or_is_a_documented_bounded_structure(
    client: FlaskClient, redis_client: redis.Redis, processes: Processes, sandbox: object
) -> None:
    relay = make_relay(
        redis_client,
        sandbox,  # type: ignore[arg-type]
        promoter_daily_limit=1000,
        survey_cooldown_days=30,
        suppression_key="key-audit-suppression-key",
    )
    # identities, persons, aliases, merges, orders, surveys, holds, retries, dead letters
    relay.send(make_event("held", "track", "ghost"), make_event("anon", "track", None, anonymous="visitor"))
    relay.send(
        make_event("i1", "identify", "u1", anonymous="a1", traits={"email": "u1@example.com", "plan": "x"})
    )
    relay.send(
        make_event("t1", "track", "u1", event="Order Completed", properties={"order_id": "o", "total": 3})
    )
    relay.send(make_event("i2", "identify", "legacy", traits={"email": "l@example.com"}))
    relay.send(make_event("al", "alias", "u1", previousId="legacy"))
    relay.send(make_event("trait", "identify", "u9", traits={"plan": "y"}))
    relay.drain()
    relay.sandbox.state.configure({"fail_next": [503, 400]})
    relay.send(make_event("retry", "identify", "u2", traits={"email": "u2@example.com"}))
    relay.send(make_event("dead", "identify", "u3", traits={"email": "u3@example.com"}))
    relay.drain()
    relay.stores.budget.pause(5)
    relay.stores.dead.discard([ref("dead")])
    assert relay.stores.dead.bury(ref("anon"), "kept as a dead letter")
    # a forget: suppression markers, a job with a pending removal at Promoter
    forgotten = relay.stores.forgetter.forget(["u2"], ["u3@example.com"])
    assert forgotten.suppressed
    relay.stores.forget_jobs.create(forgotten, at_promoter=True, enqueue=False)
    # ingest through HTTP (counters, recent list, refusals) and a real worker (kombu's keys)
    for kind, body in (("identify", {"userId": "w1", "traits": {"email": "w1@example.com"}}),
                       ("track", {"userId": "w1", "event": "NPS"})):  # fmt: skip
        assert client.post(f"/v1/{kind}", json=body, headers=basic()).status_code == 200
    assert client.post("/v1/track", json={}, headers=basic("wrong")).status_code == 401
    processes.worker()
    processes.beat()
    wait_until(lambda: not redis_client.llen("relay") and not redis_client.llen("relay.low"), timeout=30)
    wait_until(lambda: redis_client.exists(keys.HEARTBEAT + "beat"), timeout=30)

    unbounded = []
    seen = set()
    for key in redis_client.scan_iter(count=1000):
        seen.add(key)
        if redis_client.ttl(key) == -1 and not allowed_without_ttl(key):
            unbounded.append(f"{key} ({text(redis_client.type(key))})")
    assert unbounded == [], f"keys that never expire and are not documented as bounded: {unbounded}"
    kinds = {key.split(":")[1] for key in seen if key.startswith("relay:")}
    assert {"msg", "id", "person", "dead", "stats", "pending", "surveyed", "budget"} <= kinds, kinds
