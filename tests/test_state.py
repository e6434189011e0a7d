"""The Lua-backed stores on their own, against a real Redis: holds, survey claims, reconciler, replay."""

from __future__ import annotations

import json
import time

import pytest
import redis

from worker import broker, keys
from worker.deadletters import DeadLetters
from worker.events import Event
from worker.holds import Contact, Holds
from worker.ledger import Admission, Ledger
from worker.reconcile import Reconciler
from worker.settings import SettingsError, load


def make_event(message_id: str, kind: str = "track", user: str = "u1") -> Event:
    return {
        "messageId": message_id,
        "type": kind,  # type: ignore[typeddict-item]
        "userId": user,
        "anonymousId": None,
        "traits": {"email": f"{user}@example.com"} if kind == "identify" else {},
        "event": "NPS" if kind == "track" else None,
        "properties": {},
        "context": {},
        "timestamp": None,
        "receivedAt": "2026-11-29T00:00:00Z",
        "campaignId": None,
    }


def accept(r: redis.Redis, event: Event) -> None:
    Ledger(r, 3600, "relay").accept([Admission(event, "received", "", broker.envelope(event, "relay"))])


def test_holding_the_same_message_twice_holds_it_once(redis_client: redis.Redis) -> None:
    holds = Holds(redis_client, 3600, "relay")
    event = make_event("h1")
    accept(redis_client, event)
    for _ in range(3):
        assert holds.hold(event, broker.envelope(event, "relay")) is None
    assert holds.held_count("u:u1") == 1 and int(redis_client.get(keys.HELD_COUNT) or 0) == 1
    assert redis_client.ttl(keys.message("h1")) > 3600, "a held status record outlives the hold"
    assert redis_client.zscore(keys.PENDING, "h1") is None, "held messages need no task"


def test_release_queues_in_arrival_order_and_restarts_the_retry_window(redis_client: redis.Redis) -> None:
    holds = Holds(redis_client, 3600, "relay")
    events = [make_event(f"r{i}") for i in range(3)]
    for event in events:
        accept(redis_client, event)
        redis_client.hset(keys.message(event["messageId"]), "since", "1000")
        holds.hold(event, broker.envelope(event, "relay"))
    redis_client.delete("relay")
    assert holds.mark_known(["u:u1"], Contact("u1@example.com")) == 3
    queued = [
        json.loads(json.loads(m)["body"])[0][0]["messageId"] for m in redis_client.lrange("relay", 0, -1)
    ]
    assert queued[::-1] == ["r0", "r1", "r2"], "consumers pop from the right: FIFO"
    for event in events:
        assert float(redis_client.hget(keys.message(event["messageId"]), "since") or 0) > time.time() - 60
    assert int(redis_client.get(keys.HELD_COUNT) or 0) == 0


def test_survey_claim_lease_running_out_means_unknown(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client, 3600, "relay")
    accept(redis_client, make_event("s1"))
    assert ledger.claim_survey("s1", 0.2) == "go"
    leased = ledger.claim_survey("s1", 0.2)
    assert isinstance(leased, float) and 0 < leased <= 0.201
    time.sleep(0.3)
    assert ledger.claim_survey("s1", 0.2) == "unknown"
    assert ledger.claim_survey("s1", 0.2) == "unknown"
    accept(redis_client, make_event("s2"))
    assert ledger.claim_survey("s2", 5) == "go"
    ledger.settle_survey("s2", "sent")
    assert ledger.claim_survey("s2", 5) == "sent"


def test_reconciler_leaves_queued_messages_alone(redis_client: redis.Redis) -> None:
    accept(redis_client, make_event("q1"))
    reconciler = Reconciler(redis_client, "relay", 3600, grace_seconds=0.0)
    assert reconciler.requeue_stale() == 0, "q1 is at the head of the queue: not lost"
    redis_client.rpop("relay")
    stale = make_event("q2")
    accept(redis_client, stale)
    redis_client.lpush("relay", broker.envelope(make_event("finished-long-ago"), "relay"))
    redis_client.rpoplpush("relay", "relay")  # a leftover copy of a finished message is now the head
    assert reconciler.requeue_stale() == 0, "an uninformative head: wait for the next round"
    redis_client.delete("relay")
    assert reconciler.requeue_stale() == 2


def test_replay_all_replays_what_is_there_once(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client, 3600, "relay")
    for i in range(3):
        dead.bury(make_event(f"d{i}"), "test", 1)
    assert dead.replay_all() == 3
    assert dead.count() == 0 and redis_client.llen("relay") == 3
    assert dead.replay_all() == 0


@pytest.mark.parametrize("name", ["PROMOTER_API_KEY", "ADMIN_TOKEN"])
def test_credentials_with_spaces_fail_at_start_up_without_echoing(name: str) -> None:
    with pytest.raises(SettingsError) as error:
        load({name: "abc def-secret"})
    assert name in str(error.value) and "def-secret" not in str(error.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HOLD_TTL_SECONDS": "soon"}, "HOLD_TTL_SECONDS must be a whole number"),
        ({"PROMOTER_RATE_LIMIT": "0"}, "PROMOTER_RATE_LIMIT must be a finite number greater than zero"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL must be a redis or rediss or unix URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of text, json"),
        ({"PROMOTER_CONTACT_LIST_IDS": "1,two"}, "PROMOTER_CONTACT_LIST_IDS must be a whole number"),
    ],
)
def test_malformed_settings_fail_with_the_variable_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(environ)


def test_rate_limit_is_one_budget_and_a_pause_stops_everyone(redis_client: redis.Redis) -> None:
    from worker.ratelimit import RateLimiter

    # Two limiters stand for two worker processes: they share the budget through Redis.
    first, second = RateLimiter(redis_client, per_second=10), RateLimiter(redis_client, per_second=10)
    granted = sum(1 for limiter in (first, second) * 10 if limiter.wait_seconds() == 0)
    assert granted == 10, "one second's worth of burst, shared, not 10 each"
    assert 0 < first.wait_seconds() <= 0.11
    time.sleep(0.25)
    assert second.wait_seconds() == 0, "the budget refills at the configured rate"
    first.pause(1.5)
    assert 1.0 < second.wait_seconds() <= 1.5, "a 429 seen by one worker pauses the other"
