"""The Lua-backed stores against a real Redis, time driven by a settable clock (no sleeps)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from tests.conftest import ref
from tests.factories import accept, make_event, queued_refs
from tests.harness import Clock
from worker import keys
from worker.settings import load
from worker.states import Claim, Plan, State, SurveyOutcome
from worker.stores import Stores, build_stores


def stores_with(client: redis.Redis, clock: Clock | None = None, **overrides: Any) -> Stores:
    settings = load({}, redis_url="redis://unused", environment="test", **overrides)
    return build_stores(settings, client=client, clock=clock or Clock())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stores(redis_client: redis.Redis, clock: Clock) -> Stores:
    return stores_with(redis_client, clock)


def known_person(stores: Stores, person: str, email: str = "u1@example.com") -> None:
    """A person Promoter knows, as the scripts store it (worker/lua/lib/persons.lua)."""
    record = {"f": {"email": [email, 1]}, "vs": ["000000000000000"], "rev": 0, "se": email}
    stores.redis.set(keys.person(person), json.dumps(record), ex=3600)


def state(stores: Stores, message_id: str) -> str | None:
    return stores.messages.state(ref(message_id))


def hold_track(
    stores: Stores, message_id: str, user: str | None = "u1", anonymous: str | None = None
) -> None:
    event = make_event(message_id, user=user, anonymous=anonymous)
    accept(stores, event)
    stores.messages.start(event["ref"])
    plan = stores.people.track_plan(
        event["ref"], f"{event['ref']}#1", f"u:{user}" if user else "", f"a:{anonymous}" if anonymous else "",
        None, True, 7, "high",
    )  # fmt: skip
    assert plan.action is Plan.HELD


# ----------------------------------------------------------------------------------- stored events


def test_a_message_that_waits_keeps_its_event_as_long_as_its_record(stores: Stores) -> None:
    """Each retry or wait renews the record's TTL; the event must be renewed with it, or a message
    that waits long (a daily budget spent, a long retry window) outlives what it has to deliver."""
    accept(stores, make_event("w1"))
    stores.redis.expire(keys.event(ref("w1")), 5)  # most of its first TTL has passed
    assert stores.messages.start(ref("w1")).kind == "go"
    assert stores.schedule.later(ref("w1"), 60, "waiting: budget", attempts_delta=-1) == State.RETRYING
    record_ttl = stores.redis.ttl(keys.message(ref("w1")))
    assert record_ttl > 5
    assert stores.redis.ttl(keys.event(ref("w1"))) == record_ttl


def test_a_message_whose_event_is_gone_becomes_a_dead_letter_not_a_silent_loop(stores: Stores) -> None:
    accept(stores, make_event("w2"))
    stores.redis.delete(keys.event(ref("w2")))
    start = stores.messages.start(ref("w2"))
    assert (start.kind, start.state) == ("missing", State.DEAD)
    assert state(stores, "w2") == State.DEAD
    [letter] = stores.dead.list()
    assert "stored event expired" in letter["reason"]
    assert stores.redis.zscore(keys.PENDING, ref("w2")) is None, "the reconciler does not requeue it"


# ------------------------------------------------------------------------------------- final states


def test_a_late_retry_cannot_move_a_dead_letter_back(stores: Stores) -> None:
    accept(stores, make_event("m1"))
    assert stores.dead.bury(ref("m1"), "gave up") == State.DEAD
    assert stores.schedule.later(ref("m1"), 5, "transient: late") == State.DEAD, "not retrying: dead stays"
    assert state(stores, "m1") == State.DEAD
    assert stores.dead.count() == 1
    assert stores.redis.zscore(keys.SCHEDULE, ref("m1")) is None


def test_a_late_survey_success_does_not_overwrite_dead_and_blocks_replay(stores: Stores) -> None:
    accept(stores, make_event("m2"))
    stores.dead.bury(ref("m2"), "survey outcome unknown")
    stores.people.settle_survey(ref("m2"), SurveyOutcome.SENT, "survey sent", "u1@example.com", 7)
    assert state(stores, "m2") == State.DEAD, "final stays final"
    assert stores.dead.replay(ref("m2")) == "surveyed", "the survey is known sent: replay would survey twice"
    assert stores.dead.count() == 1


def test_burying_a_delivered_message_changes_nothing(stores: Stores) -> None:
    accept(stores, make_event("m3", kind="identify"))
    stores.redis.hset(keys.message(ref("m3")), "state", State.DELIVERED)
    assert stores.dead.bury(ref("m3"), "late failure") == State.DELIVERED
    assert state(stores, "m3") == State.DELIVERED
    assert stores.dead.count() == 0


def test_final_state_guards_hold_under_concurrent_late_retries(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A worker burying a message races another worker scheduling its retry: whatever the interleaving,
    a message that was buried stays dead, listed once, and never scheduled."""
    setup = stores_with(redis_client)
    refs = [ref(f"race-{i}") for i in range(200)]
    for message_ref in refs:
        accept(setup, make_event(message_ref.split(":", 1)[1]))
    redis_client.delete("relay")
    barrier = threading.Barrier(2)

    def worker(action: str) -> None:
        own = stores_with(redis.Redis.from_url(redis_url, decode_responses=True))
        barrier.wait()
        for message_ref in refs:
            if action == "bury":
                own.dead.bury(message_ref, "permanent")
            else:
                own.schedule.later(message_ref, 1, "transient")

    threads = [threading.Thread(target=worker, args=(a,)) for a in ("bury", "retry")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    states = {setup.messages.state(r) for r in refs}
    assert states == {State.DEAD}
    assert setup.dead.count() == len(refs)
    assert redis_client.zcard(keys.SCHEDULE) <= len(refs)
    later = stores_with(redis_client, Clock(now=2e9))
    later.schedule.dispatch_due()
    assert {later.messages.state(r) for r in refs} == {State.DEAD}, "a stale schedule entry revives nothing"
    assert queued_refs(redis_client) == []
    assert redis_client.zcard(keys.SCHEDULE) == 0


# -------------------------------------------------------------------------------------------- holds


def test_hold_expiry_drains_everything_due_in_bounded_batches(stores: Stores, clock: Clock) -> None:
    users = [f"never-{i}" for i in range(1200)]
    for user in users:
        hold_track(stores, f"t-{user}", user=user)
    assert int(stores.redis.get(keys.HELD_COUNT) or 0) == 1200
    clock.advance(stores.holds.user_ttl + 1)
    assert stores.holds.expire() == 1200, "all of them in one run, not 500 a minute"
    assert stores.dead.count() == 1200
    assert stores.redis.zcard(keys.HOLDS_USERS) == 0
    assert int(stores.redis.get(keys.HELD_COUNT) or 0) == 0
    record = stores.dead.get(ref("t-never-7"))
    assert record is not None
    assert record["reason"] == "never identified"


def test_anonymous_holds_expire_sooner_and_end_skipped(redis_client: redis.Redis, clock: Clock) -> None:
    stores = stores_with(redis_client, clock, anonymous_hold_ttl_seconds=3600, hold_ttl_seconds=86400)
    hold_track(stores, "anon", user=None, anonymous="visitor")
    hold_track(stores, "user", user="member")
    clock.advance(3601)
    assert stores.holds.expire() == 1
    assert state(stores, "anon") == State.SKIPPED
    assert stores.messages.status(ref("anon"))["detail"] == "never identified"  # type: ignore[index]
    assert state(stores, "user") == State.HELD
    assert stores.dead.count() == 0


def test_anonymous_holds_can_be_dead_lettered_instead(redis_client: redis.Redis, clock: Clock) -> None:
    stores = stores_with(redis_client, clock, anonymous_hold_expiry="dead-letter")
    hold_track(stores, "anon", user=None, anonymous="visitor")
    clock.advance(stores.holds.anonymous_ttl + 1)
    assert stores.holds.expire() == 1
    assert state(stores, "anon") == State.DEAD
    assert stores.dead.count() == 1


def test_holding_the_same_message_twice_holds_it_once(stores: Stores) -> None:
    hold_track(stores, "h1")
    for _ in range(3):  # the plan running again, as after a redelivery of its task
        plan = stores.people.track_plan(ref("h1"), ref("h1") + "#1", "u:u1", "", None, True, 7, "high")
        assert plan.action is Plan.HELD
    assert stores.holds.held_count("u:u1") == 1
    assert int(stores.redis.get(keys.HELD_COUNT) or 0) == 1
    assert stores.messages.start(ref("h1")).kind == "held", (
        "a redelivered task of a held message does nothing"
    )
    assert stores.redis.zscore(keys.PENDING, ref("h1")) is None, "held messages need no task"


# ------------------------------------------------------------------------------------- dead letters


def test_dead_letters_expire_after_their_ttl_and_are_capped(redis_client: redis.Redis, clock: Clock) -> None:
    stores = stores_with(redis_client, clock, dead_letter_ttl_seconds=3600, dead_letter_max=5)
    for i in range(3):
        accept(stores, make_event(f"old-{i}"))
        stores.dead.bury(ref(f"old-{i}"), "gave up")
    clock.advance(3601)
    for i in range(8):
        accept(stores, make_event(f"new-{i}"))
        stores.dead.bury(ref(f"new-{i}"), "gave up")
        clock.advance(1)
    assert stores.dead.prune() == {"expired": 3, "cap": 3}
    assert stores.dead.count() == 5
    assert [r["id"] for r in stores.dead.list(10)] == [ref(f"new-{i}") for i in range(7, 2, -1)]
    counters = redis_client.hgetall(keys.STATS)
    assert counters["dead_dropped:expired"] == "3"
    assert counters["dead_dropped:cap"] == "3"
    assert redis_client.exists(keys.event(ref("old-0"))) == 0, "the event goes with it"
    assert state(stores, "old-0") == State.DEAD


def test_discard_by_ref_all_and_older_than(stores: Stores, clock: Clock) -> None:
    for i in range(4):
        accept(stores, make_event(f"d{i}"))
        stores.dead.bury(ref(f"d{i}"), "gave up")
        clock.advance(100)
    assert stores.dead.discard([ref("d0"), ref("nope")]) == 1
    assert stores.dead.discard_all(older_than=150) == 2
    assert [r["id"] for r in stores.dead.list()] == [ref("d3")]
    assert stores.dead.discard_all() == 1
    assert stores.dead.count() == 0
    assert stores.dead.replay(ref("d3")) == "missing"


def test_replay_all_replays_what_is_there_once(stores: Stores) -> None:
    for i in range(3):
        accept(stores, make_event(f"r{i}"))
        stores.redis.delete("relay")
        stores.dead.bury(ref(f"r{i}"), "test")
    assert stores.dead.replay_all() == {"replayed": 3}
    assert stores.dead.count() == 0
    assert len(queued_refs(stores.redis)) == 3
    assert stores.dead.replay_all() == {}


# ------------------------------------------------------------------------------------------ surveys


def test_survey_claim_lease_running_out_means_unknown(redis_client: redis.Redis, clock: Clock) -> None:
    stores = stores_with(redis_client, clock)
    known_person(stores, "u:p1")
    accept(stores, make_event("s1"))
    assert stores.people.claim_survey(ref("s1"), "u:p1", 7).outcome is Claim.GO
    busy = stores.people.claim_survey(ref("s1"), "u:p1", 7)
    assert busy.outcome is Claim.BUSY
    assert 0 < busy.wait_seconds <= stores.people.lease_seconds
    clock.advance(stores.people.lease_seconds + 1)
    unknown = stores.people.claim_survey(ref("s1"), "u:p1", 7)
    assert unknown.outcome is Claim.UNKNOWN
    assert unknown.cause == "worker stopped mid-call"
    assert stores.people.claim_survey(ref("s1"), "u:p1", 7).outcome is Claim.UNKNOWN


def test_with_resend_an_unknown_outcome_is_claimed_again_as_a_resend(
    redis_client: redis.Redis, clock: Clock
) -> None:
    stores = stores_with(redis_client, clock, unknown_survey_outcome="resend")
    known_person(stores, "u:p1")
    accept(stores, make_event("s2"))
    stores.people.claim_survey(ref("s2"), "u:p1", 7)
    stores.people.settle_survey(ref("s2"), SurveyOutcome.UNKNOWN, "timeout", "u1@example.com", 7)
    again = stores.people.claim_survey(ref("s2"), "u:p1", 7)
    assert again.outcome is Claim.GO
    assert again.resend
    stores.people.settle_survey(ref("s2"), SurveyOutcome.INELIGIBLE, "not eligible", "u1@example.com", 7)
    record = stores.messages.status(ref("s2"))
    assert record is not None
    assert record["state"] == State.DELIVERED
    assert record["detail"] == "already surveyed (first call reached Promoter)"


# ------------------------------------------------------------------------------------------- budget


def test_rate_limit_is_one_budget_and_a_pause_stops_everyone(redis_client: redis.Redis, clock: Clock) -> None:
    first = stores_with(redis_client, clock, promoter_rate_limit=10).budget
    second = stores_with(redis_client, clock, promoter_rate_limit=10).budget
    granted = sum(1 for budget in (first, second) * 10 if budget.wait_seconds()[0] == 0)
    assert granted == 10, "one second's worth of burst, shared, not 10 each"
    wait, why = first.wait_seconds()
    assert 0 < wait <= 0.11
    assert why == "Promoter rate limit"
    clock.advance(0.25)
    assert second.wait_seconds()[0] == 0, "the budget refills at the configured rate"
    first.pause(1.5)
    wait, why = second.wait_seconds()
    assert 1.0 < wait <= 1.5
    assert "429" in why


def test_a_rate_slot_written_under_a_later_clock_is_no_debt(redis_client: redis.Redis, clock: Clock) -> None:
    """A Redis restored from a host whose clock ran ahead (or a clock set back) held delivery for
    the difference: the upgrade test waited 39 days for "Promoter rate limit"."""
    budget = stores_with(redis_client, clock, promoter_rate_limit=10).budget
    redis_client.set(keys.RATE, (clock() + 3_391_731) * 1000)
    assert budget.wait_seconds() == (0.0, "")
    wait, why = budget.wait_seconds()
    assert why == "" or wait < 1, "the rate itself still holds"


def test_low_priority_keeps_half_the_burst_for_surveys(redis_client: redis.Redis, clock: Clock) -> None:
    budget = stores_with(redis_client, clock, promoter_rate_limit=10).budget
    low = sum(1 for _ in range(10) if budget.wait_seconds("low")[0] == 0)
    high = sum(1 for _ in range(10) if budget.wait_seconds("high")[0] == 0)
    assert (low, high) == (5, 5)


def test_daily_budget_keeps_a_reserve_for_surveys(redis_client: redis.Redis, clock: Clock) -> None:
    budget = stores_with(
        redis_client, clock, promoter_rate_limit=1000, promoter_daily_limit=10, promoter_daily_reserve=0.3
    ).budget
    low = sum(1 for _ in range(20) if budget.wait_seconds("low")[0] == 0)
    high = sum(1 for _ in range(20) if budget.wait_seconds("high")[0] == 0)
    assert (low, high) == (7, 3)
    wait, why = budget.wait_seconds("high")
    assert why == "daily Promoter budget used up"
    assert 0 < wait <= 86401
    assert budget.used_today() == 10
    clock.advance(86400)
    assert budget.wait_seconds("low")[0] == 0, "a new day, a new budget"


# ---------------------------------------------------------------------------------------- reconciler


def test_reconciler_requeues_only_what_left_every_queue(redis_client: redis.Redis, clock: Clock) -> None:
    stores = stores_with(redis_client, clock)
    reconciler = stores.reconciler
    accept(stores, make_event("q1"))
    accept(stores, make_event("q2", kind="identify"), route="low")
    clock.advance(reconciler.grace + 1)
    assert reconciler.requeue_stale() == 0, "both are still at a queue's head"
    redis_client.delete("relay", "relay.low")  # what a worker killed mid-BRPOP leaves
    assert reconciler.requeue_stale() == 2
    assert sorted(queued_refs(redis_client)) == sorted([ref("q1"), ref("q2")])
    assert reconciler.requeue_stale() == 0, "now queued again, so not stale"
    history = stores.messages.status(ref("q1"))
    assert history is not None
    assert history["history"][-1]["detail"] == "re-queued: its task message was lost"


def test_a_finished_message_s_copy_at_a_queue_s_head_does_not_stop_the_reconciler(
    redis_client: redis.Redis, clock: Clock
) -> None:
    stores = stores_with(redis_client, clock)
    reconciler = stores.reconciler
    accept(stores, make_event("lost"))
    clock.advance(1)
    accept(stores, make_event("done", kind="identify"), route="low")
    accept(stores, make_event("waiting", kind="identify"), route="low")
    # "done" finished while a second copy of its task message stayed at the low queue's head (the
    # high queue's traffic keeps it from being consumed); "lost" was taken off the high queue by a
    # worker killed mid-BRPOP.
    redis_client.zrem(keys.PENDING, ref("done"))
    redis_client.hset(keys.message(ref("done")), "state", "delivered")
    redis_client.delete("relay")
    clock.advance(reconciler.grace + 1)
    assert reconciler.requeue_stale() == 1
    assert queued_refs(redis_client, "relay") == [ref("lost")]
    assert reconciler.requeue_stale() == 0, "'waiting' is still in its queue"
