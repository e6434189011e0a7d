"""One userId, one person (docs/delivery.md, "Who is one person"): each defect an independent review found,
as a test that failed on the code before the fix (ece91c4), written against the relay's own task bodies
(``tests.harness``) over a real Redis and the sandbox over HTTP.

Interleavings that need a call in flight are made by running other steps from inside the sandbox
call (the harness is one thread: the call waits while they run), as ``tests/test_people.py`` does.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app.devtools.sandbox import SandboxServer
from tests.conftest import basic, ref, wait_until
from tests.factories import make_event, queued_events, queued_refs
from tests.harness import Relay, make_relay
from worker import keys, taskmessages
from worker.events import iso, parse_iso
from worker.states import State

AT = "2026-11-29T10:00:00.000Z"


def identify(message_id: str, user: str | None = "u1", at: str = AT, anonymous: str | None = None,
             **traits: Any) -> Any:  # fmt: skip
    return make_event(message_id, "identify", user, anonymous=anonymous, timestamp=at, traits=traits)


def track(
    message_id: str, user: str | None = "u1", at: str = "2026-11-29T12:00:00.000Z", **fields: Any
) -> Any:
    return make_event(message_id, "track", user, timestamp=at, **fields)


def survey_emails(relay: Relay) -> list[str]:
    return [s["contact"]["email"] for s in relay.surveys()]


def during_first_call(
    relay: Relay, monkeypatch: pytest.MonkeyPatch, endpoint: str, steps: Callable[[], None]
) -> None:
    """Run ``steps`` while the first ``endpoint`` call ('upsert_contact' or 'survey') is at Promoter."""
    real = getattr(relay.runtime.promoter, endpoint)
    calls: list[Any] = []

    def call(body: Any) -> Any:
        calls.append(body)
        if len(calls) == 1:
            steps()
        return real(body)

    monkeypatch.setattr(relay.runtime.promoter, endpoint, call)


def drop_queued(relay: Relay) -> list[str]:
    """Take every task message off the queues, unrun (a worker will pick them up later)."""
    refs = queued_refs(relay.redis)
    relay.redis.delete("relay", "relay.low")
    return refs


def queue_again(relay: Relay, message_ref: str, kind: str, task_id: str) -> None:
    relay.redis.lpush("relay", taskmessages.render(message_ref, kind, "relay", task_id))


# 1 ------------------------------------------------------------------------------------- shared browser


def test_a_shared_browser_never_surveys_the_second_user_at_the_first_ones_email(relay: Relay) -> None:
    relay.send(identify("alice-id", "alice", anonymous="laptop", email="alice@example.com"))
    relay.drain()
    relay.send(track("bob-nps", "bob", anonymous="laptop"))
    relay.drain()
    assert survey_emails(relay) == [], "Bob is not known yet: his survey waits for his identify"
    assert relay.state(ref("bob-nps")) == State.HELD
    relay.send(
        identify("bob-id", "bob", anonymous="laptop", at="2026-11-29T13:00:00.000Z", email="bob@example.com")
    )
    relay.drain()
    assert survey_emails(relay) == ["bob@example.com"]
    relay.send(track("alice-nps", "alice", at="2026-11-29T14:00:00.000Z"))
    relay.drain()
    assert survey_emails(relay) == ["bob@example.com", "alice@example.com"]
    assert relay.upserts()[-1]["email"] == "bob@example.com", "Alice's contact was never rewritten"
    assert all(u["email"] == "alice@example.com" for u in relay.upserts()[:1])


def test_a_second_known_user_on_a_shared_browser_is_not_merged_into_the_first(relay: Relay) -> None:
    relay.send(identify("alice-id", "alice", anonymous="laptop", email="alice@example.com"))
    relay.send(identify("bob-id", "bob", email="bob@example.com"))
    relay.drain()
    relay.send(
        identify(
            "bob-again", "bob", anonymous="laptop", at="2026-11-29T11:00:00.000Z", email="bob@example.com"
        )
    )
    relay.drain()
    relay.send(
        track("alice-nps", "alice"), track("bob-nps", "bob"), track("laptop-nps", None, anonymous="laptop")
    )
    relay.drain()
    assert sorted(survey_emails(relay)[:2]) == ["alice@example.com", "bob@example.com"]
    # The laptop belongs to the last userId seen with it: Bob.
    assert survey_emails(relay)[2] == "bob@example.com"


# 2 ------------------------------------------------------------- a held track whose order rode along


def test_a_held_track_whose_order_rides_along_is_released_not_stranded(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("i0", email="old@example.com"))
    relay.drain()
    relay.send(identify("traits", at="2026-11-29T10:30:00.000Z", plan="pro"))

    def meanwhile() -> None:
        relay.send(track("order", event="Order Completed", properties={"order_id": "A", "total": 10}))
        relay.redis.set(keys.PAUSE, int((relay.clock.now + 30) * 1000))  # a 429: the survey must wait
        relay.drain()  # its order rides along with the trait update's call; its survey claim waits
        relay.send(identify("i2", at="2026-11-29T11:00:00.000Z", email="new@example.com"))
        drop_queued(relay)  # the email change is accepted; no worker has taken it yet
        relay.clock.advance(31)
        relay.stores.schedule.dispatch_due()
        relay.drain()  # the survey claim sees the change on its way: the track waits for it

    during_first_call(relay, monkeypatch, "upsert_contact", meanwhile)
    relay.drain()
    monkeypatch.undo()
    queue_again(relay, ref("i2"), "identify", ref("i2"))
    relay.drain()
    relay.later()
    assert relay.state(ref("order")) == State.DELIVERED
    assert survey_emails(relay) == ["new@example.com"]


# 3 ------------------------------------------------------------------------------- stale anonymous ids


def test_a_stale_anonymous_id_does_not_hold_one_persons_surveys_behind_anothers_identify(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, anonymous_id_ttl_seconds=60)
    relay.send(identify("alice-id", "alice", anonymous="kiosk", email="alice@example.com"))
    relay.drain()
    redis_client.delete(keys.identity("a:kiosk"))  # its link expired: nobody uses the kiosk for a while
    relay.clock.advance(3600)
    relay.sandbox.state.configure({"fail_next": [503]})
    relay.send(
        identify("bob-id", "bob", anonymous="kiosk", at="2026-11-29T11:00:00.000Z", email="bob@example.com")
    )
    relay.drain()
    assert relay.state(ref("bob-id")) == State.RETRYING
    relay.send(track("alice-nps", "alice"))
    relay.drain()
    assert relay.state(ref("alice-nps")) == State.DELIVERED, "Bob's pending identify is not Alice's"
    assert survey_emails(relay) == ["alice@example.com"]


# 4 ------------------------------------------------------------- a resend goes where the first call went


def test_a_resend_after_an_unknown_outcome_goes_to_the_email_the_first_call_went_to(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, unknown_survey_outcome="resend")
    relay.sandbox.state.configure({"survey_cooldown_seconds": 3600})  # Promoter's eligibility window
    relay.send(identify("i1", email="first@example.com"))
    relay.drain()
    relay.sandbox.state.configure({"delay_next": [3.0]})  # the survey call lands after the client's timeout
    relay.send(track("nps"))
    relay.drain()
    assert relay.state(ref("nps")) == State.RETRYING
    relay.send(identify("i2", at="2026-11-29T11:00:00.000Z", email="second@example.com"))
    relay.drain()
    wait_until(lambda: all(call["status"] for call in relay.sandbox.state.calls("/v2/survey/")))  # it landed
    relay.later()
    assert survey_emails(relay) == ["first@example.com"], "one survey, to the first email"
    assert relay.state(ref("nps")) == State.DELIVERED
    assert "already surveyed" in relay.record(ref("nps"))["detail"]


# 5 ------------------------------------------------------------------ an active user stays identified


def test_any_event_keeps_its_persons_identities_alive(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, person_ttl_seconds=3600)
    relay.send(identify("i1", email="u1@example.com"))
    relay.drain()
    kept = [k for k in redis_client.scan_iter("relay:*") if "u1" in k and "msg" not in k]
    for key in kept:
        redis_client.expire(key, 100)  # most of a person's TTL has passed without an identify
    relay.send(track("nps"))
    relay.drain()
    assert relay.state(ref("nps")) == State.DELIVERED
    for key in kept:
        assert redis_client.ttl(key) == -2 or redis_client.ttl(key) > 3500, f"{key} was not kept alive"
    assert any(redis_client.ttl(key) > 3500 for key in kept)


# 6 ----------------------------------------------------------------------- the cooldown is claimed


def test_two_surveys_of_one_person_at_once_make_one_call_with_a_cooldown(
    redis_client: redis.Redis, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = make_relay(redis_client, sandbox, survey_cooldown_days=30)
    relay.send(identify("i1", email="u1@example.com"))
    relay.drain()
    relay.send(track("nps-1"))

    def second_track() -> None:
        relay.send(track("nps-2", at="2026-11-29T12:01:00.000Z"))
        relay.drain()

    during_first_call(relay, monkeypatch, "survey", second_track)
    relay.drain()
    monkeypatch.undo()
    relay.later(60)
    assert len(relay.sandbox.state.calls("/v2/survey/")) == 1
    assert {relay.state(ref("nps-1")), relay.state(ref("nps-2"))} == {State.DELIVERED, State.INELIGIBLE}


# 7 ----------------------------------------------------------------------- absurd amounts cost no survey


def test_an_order_with_an_absurd_amount_is_counted_without_it_and_still_surveyed(relay: Relay) -> None:
    relay.send(identify("i1", email="u1@example.com"))
    properties = {"order_id": "big", "products": [{"price": "1e500000", "quantity": "1e500000"}]}
    relay.send(track("order", event="Order Completed", properties=properties))
    relay.drain()
    assert relay.state(ref("order")) == State.DELIVERED
    assert survey_emails(relay) == ["u1@example.com"]
    attributes = relay.contact("u1@example.com")["attributes"]
    assert attributes["order_count"] == "1"
    assert attributes["lifetime_revenue_usd"] == "0.00"


# 8 ------------------------------------------------------------------------------------------- bounds


def test_a_persons_identities_and_attributes_stay_bounded(relay: Relay) -> None:
    for n in range(300):
        at = f"2026-11-29T10:{n // 60:02d}:{n % 60:02d}.000Z"
        relay.send(
            identify(f"i{n}", anonymous=f"device-{n}", at=at, email="u1@example.com", **{f"trait_{n}": "x"})
        )
    relay.drain()
    person = relay.stores.people.person_of("u:u1")
    assert person is not None
    assert len(person["identities"]) <= 21, len(person["identities"])
    assert len(person["contact"]) <= 103, len(person["contact"])
    assert redis_client_count(relay, "relay:id:{a:device-*}") <= 20, "dropped ids lose their links too"


def redis_client_count(relay: Relay, pattern: str) -> int:
    return sum(1 for _ in relay.redis.scan_iter(pattern))


# 9 ---------------------------------------------------------------------- a batch's sentAt corrects


def test_a_batchs_top_level_sent_at_corrects_each_messages_clock(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """analytics-python puts sentAt on the batch: a client clock two hours behind is corrected."""
    behind = datetime.now(UTC) - timedelta(hours=2)
    message = {"type": "identify", "userId": "u1", "messageId": "clock", "traits": {"email": "u@example.com"}}
    message["timestamp"] = iso(behind - timedelta(minutes=1))
    body = {"sentAt": iso(behind), "batch": [message]}
    headers = {**basic(), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = client.post("/v1/batch", data=gzip.compress(json.dumps(body).encode()), headers=headers)
    assert response.status_code == 200
    [event] = queued_events(redis_client)
    skew = datetime.now(UTC) - parse_iso(event["timestamp"])
    assert timedelta(seconds=30) < skew < timedelta(minutes=5), (
        "a minute before it was received, not two hours"
    )


# 10 --------------------------------------------------------------------------- an identify without traits


def test_an_identify_without_traits_is_skipped_at_once_not_held_until_it_dies(relay: Relay) -> None:
    relay.send(make_event("bare", "identify", "nobody", traits={}))
    relay.drain()
    assert relay.state(ref("bare")) == State.SKIPPED
    relay.later(8 * 86400)
    assert relay.stores.dead.count() == 0


# Also from the review --------------------------------------------------------------------------


def test_an_unexpected_error_after_a_survey_call_is_an_unknown_outcome_not_an_internal_error(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("i1", email="u1@example.com"))
    relay.drain()
    real = relay.runtime.promoter.survey

    def survey_then_fail(body: Any) -> Any:
        real(body)
        raise RuntimeError("a bug in a library, after the request went out")

    monkeypatch.setattr(relay.runtime.promoter, "survey", survey_then_fail)
    relay.send(track("nps"))
    relay.drain()
    monkeypatch.undo()
    letter = relay.stores.dead.get(ref("nps"))
    assert letter is not None
    assert "outcome unknown" in letter["reason"], "an operator must check Promoter before replaying"
    relay.later(600)
    assert relay.stores.dead.replay(ref("nps")) in ("replayed", "calling")
    assert relay.redis.hget(keys.message(ref("nps")), "survey") != "inflight", "no guard left in flight"


def test_two_copies_of_one_identifys_task_make_one_call(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("i1", email="u1@example.com"))

    def copy_runs() -> None:
        queue_again(relay, ref("i1"), "identify", ref("i1") + "|copy")  # a redelivery or the reconciler
        relay.drain()

    during_first_call(relay, monkeypatch, "upsert_contact", copy_runs)
    relay.drain()
    monkeypatch.undo()
    assert len(relay.sandbox.state.calls("/contacts/")) == 1
    assert relay.state(ref("i1")) == State.DELIVERED


def test_a_refused_update_that_carried_several_identifies_buries_none_of_the_valid_ones(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay.send(identify("i1", email="u1@example.com"))
    relay.drain()
    relay.send(identify("t1", at="2026-11-29T10:10:00.000Z", plan="pro"))
    real = relay.runtime.promoter.upsert_contact
    calls: list[Any] = []

    def t1_in_flight(body: Any) -> Any:
        calls.append(body)
        if len(calls) == 1:  # t2 and t3 arrive while t1's call is at Promoter, and ride along...
            relay.send(identify("t2", at="2026-11-29T10:11:00.000Z", seats="3"),
                       identify("t3", at="2026-11-29T10:12:00.000Z", team="x"))  # fmt: skip
            relay.drain()
            reply = real(body)
            relay.sandbox.state.configure({"fail_next": [400]})  # ...in a call Promoter refuses
            return reply
        return real(body)

    monkeypatch.setattr(relay.runtime.promoter, "upsert_contact", t1_in_flight)
    relay.drain()
    monkeypatch.undo()
    relay.later()
    assert [relay.state(ref(m)) for m in ("t1", "t2", "t3")] == [State.DELIVERED] * 3
    attributes = relay.contact("u1@example.com")["attributes"]
    assert (attributes["plan"], attributes["seats"], attributes["team"]) == ("pro", "3", "x")


def test_an_alias_that_changes_the_email_holds_surveys_like_an_email_change(relay: Relay) -> None:
    relay.send(identify("u-id", "u9", email="old@example.com"))
    relay.send(identify("legacy-id", "legacy-9", at="2026-11-29T11:00:00.000Z", email="new@example.com"))
    relay.drain()
    relay.send(make_event("al", "alias", "u9", previousId="legacy-9", timestamp="2026-11-29T11:30:00.000Z"))
    alias_task = drop_queued(relay)
    relay.send(track("nps", "u9"))
    relay.drain()
    assert relay.state(ref("nps")) == State.HELD, "the merge may change the email: the survey waits"
    queue_again(relay, alias_task[0], "alias", alias_task[0])
    relay.drain()
    assert survey_emails(relay) == ["new@example.com"]


def test_replaying_a_dead_email_change_holds_surveys_again(relay: Relay) -> None:
    relay.send(identify("i1", email="old@example.com"))
    relay.drain()
    relay.sandbox.state.configure({"fail_next": [400]})
    relay.send(identify("i2", at="2026-11-29T11:00:00.000Z", email="new@example.com"))
    relay.drain()
    assert relay.state(ref("i2")) == State.DEAD
    assert relay.stores.dead.replay(ref("i2")) == "replayed"
    replayed = drop_queued(relay)
    relay.send(track("nps"))
    relay.drain()
    assert relay.state(ref("nps")) == State.HELD, "the replayed email change goes first"
    queue_again(relay, replayed[0], "identify", replayed[0] + "|again")
    relay.drain()
    assert survey_emails(relay) == ["new@example.com"]


def test_no_task_id_of_one_message_is_another_messages_first_task_id(relay: Relay) -> None:
    relay.send(identify("x", email="u1@example.com"), identify("x#1", "u2", email="u2@example.com"))
    first_ids = {json.loads(raw)["headers"]["id"] for raw in relay.redis.lrange("relay", 0, -1)}
    relay.stores.dead.bury(ref("x"), "test")
    assert relay.stores.dead.replay(ref("x")) == "replayed"
    ids = [json.loads(raw)["headers"]["id"] for raw in relay.redis.lrange("relay", 0, -1)]
    assert len(ids) == len(set(ids)) == 3, ids
    assert ref("x#1") in first_ids


@pytest.mark.parametrize("path", ["/v1/batch", "/segment"])
def test_the_legacy_action_key_is_read_as_the_type(
    client: FlaskClient, redis_client: redis.Redis, path: str
) -> None:
    message = {
        "action": "identify",
        "userId": "u1",
        "messageId": "legacy",
        "traits": {"email": "u1@example.com"},
    }
    body = {"batch": [message]} if path == "/v1/batch" else message
    response = client.post(path, json=body, headers=basic())
    assert response.status_code == 200, response.get_json()
    [event] = queued_events(redis_client)
    assert event["type"] == "identify"


# Found by the simulator ------------------------------------------------------------------------------


def test_a_message_gone_from_redis_is_not_written_again_when_its_visitor_signs_in(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """Seed 3808: a visitor's trait update waits for their first contact update, its hold expires
    (skipped) and later its status record; when the visitor signs in, the stitch moved the person's
    waiting messages and wrote into the vanished one's key: a record with no state and no TTL."""
    relay = make_relay(redis_client, sandbox, anonymous_hold_ttl_seconds=600)
    relay.send(identify("visit", None, anonymous="d1", visits="1"))
    relay.drain()
    assert relay.state(ref("visit")) == State.HELD
    relay.clock.advance(601)
    relay.stores.holds.expire()
    assert relay.state(ref("visit")) == State.SKIPPED
    assert not redis_client.zscore(keys.person_waiting("a:d1"), ref("visit")), (
        "a final message waits for nothing"
    )
    for key in (keys.message(ref("visit")), keys.history(ref("visit")), keys.event(ref("visit"))):
        redis_client.delete(key)  # STATUS_TTL_SECONDS later
    redis_client.zadd(keys.person_waiting("a:d1"), {ref("visit"): 1})  # as a release before the fix left it
    relay.send(identify("signin", "u1", anonymous="d1", at="2026-11-29T11:00:00.000Z", email="v@example.com"))
    relay.drain()
    assert relay.state(ref("signin")) == State.DELIVERED
    assert not redis_client.exists(keys.message(ref("visit"))), redis_client.hgetall(
        keys.message(ref("visit"))
    )


class WorkerDied(BaseException):
    """The worker process dies where it stands (nothing of ours catches a BaseException)."""


def test_a_call_whose_worker_died_after_promoter_took_it_is_not_taken_for_unmade(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promoter has plan 'team'. An update to 'free' reaches Promoter and its worker dies before it
    records that; meanwhile a newer identify sets 'team' again and rides along with that update. Once
    the dead worker's lease runs out, what Promoter has is not known (as after a timeout): the relay
    must not conclude that 'team' is already there (simulator seed 7857)."""
    relay.send(identify("i-team", email="ada@example.com", plan="team"))
    relay.drain()
    real = relay.runtime.promoter.upsert_contact

    def dies_after_the_call(body: Any) -> Any:
        relay.send(
            identify("i-team-again", at="2026-11-29T10:00:02.000Z", email="ada@example.com", plan="team")
        )
        assert relay.step() == ref("i-team-again")  # rides along with the update in flight
        real(body)
        raise WorkerDied

    relay.send(identify("i-free", at="2026-11-29T10:00:01.000Z", email="ada@example.com", plan="free"))
    monkeypatch.setattr(relay.runtime.promoter, "upsert_contact", dies_after_the_call)
    with pytest.raises(WorkerDied):
        relay.step()
    monkeypatch.setattr(relay.runtime.promoter, "upsert_contact", real)
    assert relay.contact("ada@example.com")["attributes"]["plan"] == "free"
    assert relay.state(ref("i-team-again")) == State.WAITING

    relay.clock.advance(relay.runtime.settings.visibility_timeout + 600)
    assert relay.stores.reconciler.requeue_stale() >= 1
    relay.drain()
    assert relay.contact("ada@example.com")["attributes"]["plan"] == "team"
    assert relay.state(ref("i-team-again")) == State.DELIVERED


def test_an_older_value_that_joined_a_refused_update_goes_back_in(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan change is refused by Promoter. Two identifies arrived while its call was in flight, at a
    later revision: a seats change, and an older plan (its value replaced by the refused one). They
    waited for the follow-up the refused run would have made; it makes none, so they must run again,
    the older plan going back in, not wait for a later update to mark them carried without their
    value (simulator seed 9265). Before the fix they stayed waiting."""
    relay.send(identify("i-start", email="ada@example.com", plan="start"))
    relay.drain()
    relay.send(identify("i-newer", at="2026-11-29T10:00:02.000Z", email="ada@example.com", plan="refused"))

    def older_arrives() -> None:
        relay.send(identify("i-seats", at="2026-11-29T10:00:03.000Z", seats=4))  # a later revision
        relay.send(identify("i-older", at="2026-11-29T10:00:01.000Z", email="ada@example.com", plan="older"))
        assert [relay.step(), relay.step()] == [ref("i-seats"), ref("i-older")]
        assert relay.state(ref("i-older")) == State.WAITING
        relay.sandbox.state.configure({"fail_next": [400]})

    during_first_call(relay, monkeypatch, "upsert_contact", older_arrives)
    relay.drain()
    relay.later(120)
    assert relay.state(ref("i-newer")) == State.DEAD
    assert relay.state(ref("i-older")) == State.DELIVERED
    assert relay.contact("ada@example.com")["attributes"] == {"plan": "older", "seats": "4"}


def test_a_call_that_settles_after_its_lease_ran_out_still_lets_go_of_it(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled call returns after its lease ran out and settles: what Promoter has is known, so an
    identify that changes nothing afterwards makes no call (the lease is not taken for abandoned)."""
    relay.send(identify("i-1", email="ada@example.com", plan="pro"))
    during_first_call(
        relay,
        monkeypatch,
        "upsert_contact",
        lambda: relay.clock.advance(relay.stores.people.lease_seconds + 5),
    )
    relay.drain()
    assert relay.state(ref("i-1")) == State.DELIVERED
    relay.send(identify("i-2", at="2026-11-29T10:05:00.000Z", email="ada@example.com", plan="pro"))
    relay.drain()
    assert relay.state(ref("i-2")) == State.SKIPPED
    assert len(relay.upserts()) == 1
