"""One person, one contact: each defect found by review, as a test named after it.

The relay's own task bodies run here (``tests.harness``) against a real Redis and the sandbox over
HTTP; interleavings that need two workers at once are written out step by step with the plain
functions a task calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from tests.conftest import ref
from tests.factories import make_event
from tests.harness import Relay, make_relay
from worker import delivery, keys, taskmessages
from worker.events import version
from worker.mapping import contact_fields
from worker.messages import Start
from worker.states import Priority, StartKind, State, SyncFailure


def identify(message_id: str, user: str = "u1", at: str = "2026-11-29T10:00:00.000Z", **traits: Any) -> Any:
    return make_event(message_id, "identify", user, timestamp=at, traits=traits)


def track(
    message_id: str, user: str | None = "u1", at: str = "2026-11-29T12:00:00.000Z", **fields: Any
) -> Any:
    return make_event(message_id, "track", user, timestamp=at, **fields)


def order(message_id: str, order_id: str, total: float, currency: str = "USD", **fields: Any) -> Any:
    properties = {"order_id": order_id, "total": total, "currency": currency}
    return track(message_id, event="Order Completed", properties=properties, **fields)


def test_older_identify_retried_after_a_newer_one_never_brings_back_the_old_email(relay: Relay) -> None:
    relay.sandbox.state.configure({"fail_next": [503]})
    relay.send(identify("old", email="old@example.com", at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    assert relay.state(ref("old")) == State.RETRYING
    relay.send(identify("new", email="new@example.com", at="2026-11-29T10:05:00.000Z"))
    relay.drain()
    assert relay.state(ref("new")) == State.DELIVERED
    relay.later()  # the retry of the older identify succeeds now
    assert relay.state(ref("old")) in (State.DELIVERED, State.SKIPPED)
    relay.send(track("nps"))
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]
    assert relay.upserts()[-1]["email"] == "new@example.com"


def test_identify_arriving_after_a_newer_one_changes_nothing_it_set(relay: Relay) -> None:
    relay.send(identify("new", email="new@example.com", plan="team", at="2026-11-29T10:05:00.000Z"))
    relay.drain()
    relay.send(identify("old", email="old@example.com", plan="free", seats=4, at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    relay.send(track("nps"))
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]
    attributes = relay.contact("new@example.com")["attributes"]
    assert attributes["plan"] == "team", "the newer identify set it"
    assert attributes["seats"] == "4", "only the older identify set it: it still counts"
    assert all(u["email"] == "new@example.com" for u in relay.upserts())


def test_slow_trait_update_does_not_write_back_the_email_it_read(relay: Relay) -> None:
    """A trait-only identify reads email A and starts its update; an identify with B arrives and
    completes meanwhile; the trait update must not leave A as the person's email."""
    relay.send(identify("a", email="a@example.com", at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    slow = identify("traits", plan="pro", at="2026-11-29T10:01:00.000Z")
    relay.send(slow)
    relay.redis.delete("relay", "relay.low")
    stores = relay.stores
    start = stores.messages.start(slow["ref"])
    run = delivery.Run(slow["ref"], f"{slow['ref']}#{start.run}", Priority.LOW)
    fields = contact_fields(slow["traits"])
    plan = stores.people.contact_plan(run.ref, run.token, "u:u1", "", fields, version(slow), run.priority)
    assert plan.sync is not None
    assert plan.sync.fields["f:email"] == "a@example.com"
    relay.send(identify("b", email="b@example.com", at="2026-11-29T10:02:00.000Z"))
    relay.drain()
    assert relay.state(ref("b")) == State.WAITING, "rides along with the update in flight"
    assert start.kind is StartKind.GO
    delivery.sync_contact(plan.sync, run, relay.runtime)
    assert relay.state(ref("b")) == State.DELIVERED
    assert relay.state(ref("traits")) == State.DELIVERED
    relay.send(track("nps"))
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["b@example.com"]
    assert relay.contact("b@example.com")["attributes"]["plan"] == "pro"


def test_a_track_run_again_after_its_survey_was_settled_still_becomes_final(relay: Relay) -> None:
    """A survey track whose order update rides along with another message's call, run a second time
    (broker redelivery, or the reconciler) after its survey was sent: it must not owe the survey again,
    or the update's landing can never make it final."""
    relay.send(identify("i0", email="u1@example.com", plan="free", at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    slow = identify("i1", email="u1@example.com", plan="pro", at="2026-11-29T10:01:00.000Z")
    relay.send(slow)
    relay.redis.delete("relay", "relay.low")
    stores = relay.stores
    start = stores.messages.start(slow["ref"])
    assert start.kind is StartKind.GO
    run = delivery.Run(slow["ref"], f"{slow['ref']}#{start.run}", Priority.LOW)
    fields = contact_fields(slow["traits"])
    plan = stores.people.contact_plan(run.ref, run.token, "u:u1", "", fields, version(slow), run.priority)
    assert plan.sync is not None, "i1 holds the person's contact update"
    nps = order("t", "o1", 10)
    relay.send(nps)
    relay.drain()
    assert len(relay.surveys()) == 1
    assert relay.state(ref("t")) == State.WAITING, "its order update rides along with i1's"
    relay.redis.lpush("relay", taskmessages.render(ref("t"), "track", "relay", ref("t") + "|again"))
    relay.drain()
    delivery.sync_contact(plan.sync, run, relay.runtime)
    assert relay.state(ref("i1")) == State.DELIVERED
    assert relay.state(ref("t")) == State.DELIVERED
    assert len(relay.surveys()) == 1


def test_trait_update_before_the_first_email_is_held_then_merged(relay: Relay) -> None:
    relay.send(identify("traits", plan="pro", at="2026-11-29T09:00:00.000Z"))
    relay.drain()
    assert relay.state(ref("traits")) == State.HELD
    assert relay.upserts() == []
    relay.send(identify("email", email="ada@example.com", at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    assert relay.state(ref("email")) == relay.state(ref("traits")) == State.DELIVERED
    assert "carried by the contact update" in relay.record(ref("traits"))["detail"]
    assert len(relay.upserts()) == 1, "one call carried both"
    assert relay.contact("ada@example.com")["attributes"]["plan"] == "pro"


def test_orders_under_the_user_id_and_the_anonymous_id_of_one_person_add_up(relay: Relay) -> None:
    relay.send(make_event("i", "identify", "u1", anonymous="a1", traits={"email": "u1@example.com"}))
    relay.send(order("o1", "A", 10, user="u1"), order("o2", "B", 5, user=None, anonymous="a1"))
    relay.drain()
    attributes = relay.contact("u1@example.com")["attributes"]
    assert attributes["order_count"] == "2"
    assert attributes["lifetime_revenue_usd"] == "15.00"


def test_the_same_order_is_counted_once_and_currencies_are_kept_apart(relay: Relay) -> None:
    relay.send(identify("i", email="u1@example.com"))
    relay.send(
        order("o1", "A", 42, at="2026-11-29T12:00:00.000Z"),
        order("o1-again", "A", 42, at="2026-11-29T12:01:00.000Z"),
        order("o2", "B", 99.5, "eur", at="2026-11-29T12:02:00.000Z"),
    )
    relay.drain()
    attributes = relay.contact("u1@example.com")["attributes"]
    assert attributes["order_count"] == "2"
    assert attributes["lifetime_revenue_usd"] == "42.00"
    assert attributes["lifetime_revenue_eur"] == "99.50"
    assert attributes["last_order_id"] == "B"
    assert attributes["last_order_currency"] == "EUR"
    assert "lifetime_revenue" not in attributes, "no sum across currencies"
    assert relay.state(ref("o1-again")) in (State.SKIPPED, State.DELIVERED)
    assert "already counted" in relay.record(ref("o1-again"))["detail"]


def test_an_order_reported_twice_is_its_earliest_report_whatever_the_arrival_order(relay: Relay) -> None:
    relay.send(identify("i", email="u1@example.com"))
    relay.send(order("repeat", "A", 10, at="2026-11-29T12:30:00.000Z"))
    relay.drain()
    relay.send(order("first", "A", 10, at="2026-11-29T12:00:00.000Z"))
    relay.drain()
    attributes = relay.contact("u1@example.com")["attributes"]
    assert attributes["order_count"] == "1"
    assert attributes["lifetime_revenue_usd"] == "10.00"
    assert attributes["last_order_date"] == "2026-11-29T12:00:00.000Z"


def test_last_order_is_the_newest_by_event_time_whatever_the_arrival_order(relay: Relay) -> None:
    relay.send(identify("i", email="u1@example.com"))
    relay.send(order("late", "NEW", 7, at="2026-11-29T15:00:00.000Z"))
    relay.send(order("early", "OLD", 3, at="2026-11-29T11:00:00.000Z"))
    relay.drain()
    attributes = relay.contact("u1@example.com")["attributes"]
    assert attributes["last_order_id"] == "NEW"
    assert attributes["last_order_total"] == "7.00"
    assert attributes["order_count"] == "2"


def test_identify_refused_by_promoter_dead_letters_the_held_tracks_at_once(relay: Relay) -> None:
    relay.send(track("held"))
    relay.drain()
    assert relay.state(ref("held")) == State.HELD
    relay.sandbox.state.configure({"fail_next": [400]})
    relay.send(identify("bad", email="bad@example.com"))
    relay.drain()
    assert relay.state(ref("bad")) == State.DEAD
    assert relay.state(ref("held")) == State.DEAD
    reason = relay.stores.dead.get(ref("held"))
    assert reason is not None
    assert ref("bad") in reason["reason"]
    assert "400" in reason["reason"]
    relay.send(track("after"))
    relay.drain()
    assert relay.state(ref("after")) == State.DEAD, "no 7-day wait for a person Promoter refused"
    # A corrected identify makes the person known; replaying what died then delivers it.
    relay.send(identify("good", email="good@example.com", at="2026-11-29T11:00:00.000Z"))
    relay.drain()
    assert relay.state(ref("good")) == State.DELIVERED
    assert relay.stores.dead.replay(ref("held")) == "replayed"
    relay.drain()
    assert relay.state(ref("held")) == State.DELIVERED
    assert [s["contact"]["email"] for s in relay.surveys()] == ["good@example.com"]


def test_replaying_the_refused_identify_releases_what_is_still_held(relay: Relay) -> None:
    relay.sandbox.state.configure({"fail_next": [400]})
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    assert relay.state(ref("i")) == State.DEAD
    relay.send(track("t"))
    relay.drain()
    assert relay.state(ref("t")) == State.DEAD
    assert relay.stores.dead.replay(ref("i")) == "replayed"
    relay.drain()
    assert relay.state(ref("i")) == State.DELIVERED
    assert relay.stores.dead.replay(ref("t")) == "replayed"
    relay.drain()
    assert relay.state(ref("t")) == State.DELIVERED


def test_alias_sends_events_of_the_previous_id_to_the_same_contact(relay: Relay) -> None:
    relay.send(track("legacy-nps", user="legacy-7"))
    relay.drain()
    assert relay.state(ref("legacy-nps")) == State.HELD
    relay.send(identify("i", user="u7", email="u7@example.com"))
    relay.send(make_event("al", "alias", "u7", previousId="legacy-7"))
    relay.drain()
    assert relay.state(ref("al")) == State.DELIVERED
    assert relay.state(ref("legacy-nps")) == State.DELIVERED
    relay.send(track("after", user="legacy-7"), track("anon", user=None, anonymous="legacy-7"))
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["u7@example.com"] * 3


def test_alias_merges_two_known_people_newest_field_wins(relay: Relay) -> None:
    relay.send(
        identify("old-id", user="legacy", email="x@example.com", plan="free", at="2026-11-29T09:00:00.000Z")
    )
    relay.send(identify("new-id", user="u8", email="y@example.com", seats=3, at="2026-11-29T10:00:00.000Z"))
    relay.drain()
    relay.send(make_event("al", "alias", "u8", previousId="legacy", timestamp="2026-11-29T11:00:00.000Z"))
    relay.drain()
    merged = relay.contact("y@example.com")["attributes"]
    assert merged["plan"] == "free"
    assert merged["seats"] == "3"
    person = relay.stores.people.person_of("u:legacy")
    assert person is not None
    assert set(person["identities"]) >= {"u:u8", "u:legacy"}


def test_anonymous_id_points_to_a_person_only_for_a_while(redis_client: redis.Redis, sandbox: Any) -> None:
    relay = make_relay(redis_client, sandbox, anonymous_id_ttl_seconds=60)
    relay.send(make_event("i", "identify", "u1", anonymous="device-1", traits={"email": "u1@example.com"}))
    relay.drain()
    assert redis_client.ttl("relay:id:{a:device-1}") <= 60
    redis_client.delete("relay:id:{a:device-1}")  # what the TTL does after a minute
    relay.send(track("later", user=None, anonymous="device-1"))
    relay.drain()
    assert relay.state(ref("later")) == State.HELD, "a shared device no longer names the earlier person"


def test_credential_like_traits_never_reach_promoter(relay: Relay) -> None:
    secrets = {"token": "t", "session_token": "s", "id_token": "i", "jwt": "j", "private_key": "k",
               "authorization": "a", "iban": "DE00", "pin": "1234", "apiKey": "x"}  # fmt: skip
    relay.send(identify("i", email="u1@example.com", plan="pro", **secrets))
    relay.drain()
    assert relay.contact("u1@example.com")["attributes"] == {"plan": "pro"}


def test_a_replayed_identify_is_sent_even_when_unchanged(relay: Relay) -> None:
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    relay.stores.dead.bury(ref("i"), "test")  # final already: burying changes nothing
    assert relay.state(ref("i")) == State.DELIVERED
    relay.sandbox.state.configure({"fail_next": [400]})
    relay.send(identify("j", email="u1@example.com", plan="x"))
    relay.drain()
    assert relay.state(ref("j")) == State.DEAD
    relay.stores.dead.replay(ref("j"))
    relay.drain()
    assert relay.state(ref("j")) == State.DELIVERED
    assert relay.contact("u1@example.com")["attributes"]["plan"] == "x"


def test_delivery_start_of_an_unknown_ref_is_nothing_to_do(relay: Relay) -> None:
    assert relay.stores.messages.start("k00000000:nope") == Start(kind=StartKind.MISSING, state="")


def _new_email_accepted_meanwhile(relay: Relay) -> None:
    relay.send(identify("id-new", email="new@example.com", at="2026-11-29T11:30:00.000Z"))


def test_an_order_survey_waits_for_an_email_change_accepted_during_its_own_contact_update(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("id-old", email="old@example.com"))
    relay.drain()
    # Every track is a survey event by default: this one updates the contact (its order), then surveys.
    relay.send(order("order", "o1", 10))
    real = relay.runtime.promoter.upsert_contact
    calls: list[Any] = []

    def upsert_while_ingest_accepts_a_new_email(body: Any) -> Any:
        if not calls:
            _new_email_accepted_meanwhile(relay)
        calls.append(body)
        return real(body)

    monkeypatch.setattr(relay.runtime.promoter, "upsert_contact", upsert_while_ingest_accepts_a_new_email)
    relay.step()
    assert relay.state(ref("order")) == "held"
    monkeypatch.undo()
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]
    assert relay.state(ref("order")) == "delivered"


def test_a_survey_waiting_for_budget_waits_for_an_email_change_accepted_meanwhile(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("id-old", email="old@example.com"))
    relay.drain()
    relay.send(track("nps"))
    # The shared budget is taken for half a second beyond its burst: the claim says "wait" (< 2 s).
    relay.redis.set(keys.RATE, relay.clock.now * 1000 + 1500)

    def sleep(_: float) -> None:
        _new_email_accepted_meanwhile(relay)
        relay.redis.delete(keys.RATE)

    waiting = relay.runtime
    relay.runtime = dataclasses.replace(waiting, sleep=sleep)
    relay.step()
    relay.runtime = waiting
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]
    assert relay.state(ref("nps")) == "delivered"


def _anonymous_person_with_a_call_in_flight_when_merged(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, answer_first: list[int]
) -> None:
    """u1 is known (one@). Visitor x has a person of its own, updated until its revisions pass u1's;
    while x's third update is at Promoter, u1 signs in on that device with a new email, which stitches
    x into u1's person (with ``answer_first`` as the sandbox's answer to the next call)."""
    relay.send(identify("p1", email="one@example.com", at="2026-11-29T09:00:00.000Z"))
    relay.drain()
    for n, plan in enumerate(["a", "b", "c"]):
        at = f"2026-11-29T10:0{n}:00.000Z"
        relay.send(make_event(f"x{n}", "identify", None, anonymous="x", timestamp=at,
                              traits={"email": "anon@example.com", "plan": plan}))  # fmt: skip
        if n < 2:
            relay.drain()
    real = relay.runtime.promoter.upsert_contact

    def merged_meanwhile(body: Any) -> Any:
        if body["email"] == "anon@example.com" and not relay.state(ref("merge")):
            merge = make_event("merge", "identify", "u1", anonymous="x", timestamp="2026-11-29T11:00:00.000Z",
                               traits={"email": "new@example.com"})  # fmt: skip
            relay.send(merge)
            relay.drain()
            # The visitor's call still in flight may land over u1's contact: the merge waits for it.
            assert relay.state(ref("merge")) == State.WAITING
            relay.sandbox.state.configure({"fail_next": answer_first})
        return real(body)

    monkeypatch.setattr(relay.runtime.promoter, "upsert_contact", merged_meanwhile)
    relay.drain()
    monkeypatch.undo()


def test_a_call_of_a_person_merged_away_meanwhile_leaves_the_survivors_contact_alone(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _anonymous_person_with_a_call_in_flight_when_merged(relay, monkeypatch, [])
    assert relay.state(ref("x2")) == State.DELIVERED
    assert relay.state(ref("merge")) == State.DELIVERED, "sent by x2's run once its own call landed"
    assert relay.upserts()[-1]["email"] == "new@example.com"
    relay.send(track("nps"))
    relay.drain()
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]


def test_a_refused_call_of_a_person_merged_away_meanwhile_leaves_the_survivor_alone(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _anonymous_person_with_a_call_in_flight_when_merged(relay, monkeypatch, [400])
    # x2's own call was refused: it dies alone; the survivor's lease is let go and the merge is sent.
    assert relay.state(ref("x2")) == State.DEAD
    relay.later()
    assert relay.state(ref("merge")) == State.DELIVERED
    person = relay.stores.people.person_of("u:u1")
    assert person is not None
    assert person["refused"] is None
    assert person["at_promoter"]["email"] == "new@example.com"
    relay.send(track("nps"))
    relay.drain()
    assert relay.state(ref("nps")) == State.DELIVERED
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]


@pytest.mark.parametrize("how", ["uncertain", "transient", "permanent"])
def test_a_failed_update_of_a_person_whose_record_expired_meanwhile_leaves_no_key_behind(
    relay: Relay, how: str
) -> None:
    message = identify("gone", email="gone@example.com")
    relay.send(message)
    relay.redis.delete("relay", "relay.low")
    start = relay.stores.messages.start(message["ref"])
    token = f"{message['ref']}#{start.run}"
    fields = contact_fields(message["traits"])
    plan = relay.stores.people.contact_plan(
        message["ref"], token, "u:u1", "", fields, version(message), "high"
    )
    assert plan.sync is not None
    person = keys.person(plan.sync.person)
    relay.redis.delete(person)  # its TTL ran out while the call was in flight
    relay.stores.people.failed(
        plan.sync, message["ref"], token, SyncFailure(how), reason="refused", seconds=30
    )
    assert not relay.redis.exists(person)
    if how == "permanent":
        assert relay.state(ref("gone")) == State.DEAD
