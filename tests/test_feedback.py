"""NPS responses back into Segment, end to end: the relay's task bodies over a real Redis, the Promoter
sandbox over HTTP, and a real HTTP receiver speaking Segment's batch API, reached through the official
``segment-analytics-python`` client. Each surveyed contact's answer must arrive once as a track and an
identify under the right userId; a re-poll sends nothing; an edit is sent once more; a 429, a 5xx or a
Segment outage loses nothing."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app.devtools.sandbox import SandboxServer
from app.devtools.segment_receiver import ReceiverServer, ReceiverState
from tests.conftest import ADMIN_TOKEN, CAMPAIGN_ID, Processes, wait_until
from tests.factories import make_event
from tests.harness import Relay, make_relay
from tests.test_admin import Conformance, document
from tests.test_key_audit import allowed_without_ttl
from worker import feedback, keys, nps
from worker.nps_store import DAYS_KEPT, NpsStore
from worker.segment_sender import SegmentSender

FEEDBACK_KEY = "feedback-write-key"
USERS = ("u1", "u2", "u3")

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    with ReceiverServer(ReceiverState(write_key=FEEDBACK_KEY)) as server:
        yield server


@pytest.fixture
def sender(receiver: ReceiverServer) -> Iterator[SegmentSender]:
    sending = SegmentSender(FEEDBACK_KEY, receiver.url)
    yield sending
    sending.close()


@pytest.fixture
def loop(redis_client: redis.Redis, sandbox: SandboxServer, receiver: ReceiverServer) -> Relay:
    relay = make_relay(
        redis_client, sandbox, feedback_segment_write_key=FEEDBACK_KEY, feedback_segment_host=receiver.url
    )
    relay.clock.now = time.time()  # the sandbox dates responses with the real clock
    return relay


def survey_users(relay: Relay, users: Sequence[str] = USERS) -> dict[str, int]:
    """README's example for each user: an identify with an email, then a track that surveys them.
    Returns each user's feedback id at the sandbox."""
    for user in users:
        relay.send(
            make_event(f"id-{user}", "identify", user, traits={"email": f"{user.upper()}@Example.com"})
        )
    relay.drain()
    for user in users:
        relay.send(make_event(f"nps-{user}", "track", user))
    relay.drain()
    assert len(relay.surveys()) == len(users)
    found = relay.sandbox.state.feedback_list(None, None, None)
    return {r["contact"]["email"].split("@")[0].lower(): r["id"] for r in found}


def stranger(relay: Relay, score: int = 4) -> dict[str, Any]:
    """A contact Promoter has but the relay never sent (added in Promoter's own UI, say)."""
    contact = relay.sandbox.state.upsert({"email": "Stranger@Example.com"})
    return relay.sandbox.state.add_feedback(CAMPAIGN_ID, contact, score, "Who are you?")


def received(receiver: ReceiverServer, kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in receiver.state.messages() if kind is None or m["type"] == kind]


def tick(relay: Relay, sender: feedback.Sender, seconds: float = 0.0) -> feedback.Outcome:
    relay.clock.advance(seconds)
    return feedback.poll(relay.runtime, sender, sleep=lambda _: None)


def feedback_calls(relay: Relay) -> list[str]:
    return [str(c["status"]) for c in relay.sandbox.state.calls("/feedback/")]


def test_each_response_arrives_once_as_a_track_and_an_identify_under_its_user(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    ids = survey_users(loop)
    other = stranger(loop)
    scores = {r["id"]: r["score"] for r in loop.sandbox.state.feedback_list(None, None, None)}

    outcome = tick(loop, sender)
    assert (outcome.status, outcome.sent, outcome.pages) == ("done", 4, 1)
    tracks, identifies = received(receiver, "track"), received(receiver, "identify")
    assert len(tracks) == len(identifies) == 4
    assert not [m for m in received(receiver) if m["duplicate"]]
    for user, feedback_id in ids.items():
        [track] = [m for m in tracks if m["properties"]["feedback_id"] == str(feedback_id)]
        assert track["userId"] == user
        assert track["anonymousId"] is None
        assert track["event"] == "NPS Survey Responded"
        props = track["properties"]
        assert props["score"] == scores[feedback_id]
        assert props["category"] == nps.category(scores[feedback_id])
        assert props["campaign_id"] == CAMPAIGN_ID
        assert set(props) == {"score", "category", "comment", "campaign_id", "feedback_id", "posted_date"}
        [identify] = [m for m in identifies if m.get("userId") == user]
        assert identify["traits"] == {
            "nps_score": scores[feedback_id],
            "nps_category": nps.category(scores[feedback_id]),
            "nps_responded_at": props["posted_date"],
        }
        assert track["messageId"] != identify["messageId"]
    # A contact the relay does not know: an anonymousId from Promoter's contact id, the email in traits.
    [track] = [m for m in tracks if m["properties"]["feedback_id"] == str(other["id"])]
    assert track["userId"] is None
    assert track["anonymousId"] == f"promoter-contact-{other['contact']['id']}"
    [identify] = [m for m in identifies if m.get("anonymousId") == track["anonymousId"]]
    assert identify["traits"]["email"] == "Stranger@Example.com"
    assert identify["traits"]["nps_category"] == "detractor"

    # Re-polls cost a Promoter call each and send nothing.
    for _ in range(2):
        again = tick(loop, sender, 300)
        assert (again.status, again.sent) == ("done", 0)
    assert len(received(receiver)) == 8
    assert feedback_calls(loop) == ["200"] * 3

    # An edited comment is sent once more, under new messageIds; then nothing again.
    edited_id = ids["u2"]
    loop.sandbox.state.edit_feedback(edited_id, {"comment": "Changed my mind: great support"})
    assert tick(loop, sender, 300).sent == 1
    assert tick(loop, sender, 300).sent == 0
    edits = received(receiver)[8:]
    assert sorted(m["type"] for m in edits) == ["identify", "track"]
    assert all(m["userId"] == "u2" and not m["duplicate"] for m in edits)
    [new_track] = [m for m in edits if m["type"] == "track"]
    assert new_track["properties"]["comment"] == "Changed my mind: great support"
    [old_track] = [m for m in tracks if m["properties"]["feedback_id"] == str(edited_id)]
    assert new_track["messageId"] != old_track["messageId"]

    # Nothing the loop wrote lives forever unless documented as bounded.
    unbounded = [k for k in loop.redis.scan_iter() if loop.redis.ttl(k) == -1 and not allowed_without_ttl(k)]
    assert unbounded == []
    assert loop.redis.ttl(keys.email_slot("u1@example.com")[0]) > 0


def test_a_429_on_the_poll_loses_nothing_and_resumes_at_the_page_it_failed(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    users = tuple(f"p{n}" for n in range(5))
    ids = survey_users(loop, users)
    loop.sandbox.state.configure({"feedback_page_size": 2, "retry_after": 30})

    class ThrottleAfterFirstPage:
        """The real sender; once page 1 is handed over, Promoter answers the next call with a 429."""

        def send(self, messages: Sequence[nps.Message]) -> int:
            loop.sandbox.state.configure({"throttle_next": 1})
            return sender.send(messages)

    outcome = tick(loop, ThrottleAfterFirstPage())
    assert (outcome.status, outcome.pages, outcome.sent) == ("failed", 1, 2)
    cursor = feedback.load_cursor(loop.redis)
    assert (cursor.page, cursor.failures) == (2, 1)
    assert "429" in cursor.last_error
    assert loop.stores.budget.wait_seconds("low")[1] == "paused after a 429 from Promoter"
    assert tick(loop, sender, 10).status == "not due"

    resumed = tick(loop, sender, 21)
    assert (resumed.status, resumed.pages, resumed.sent) == ("done", 2, 3)
    assert feedback_calls(loop) == ["200", "429", "200", "200"]
    tracks = received(receiver, "track")
    assert Counter(m["userId"] for m in tracks) == Counter(users)
    assert sorted(int(m["properties"]["feedback_id"]) for m in tracks) == sorted(ids.values())
    assert len(received(receiver, "identify")) == 5
    assert not [m for m in received(receiver) if m["duplicate"]]


def test_a_5xx_is_retried_after_a_backoff(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    survey_users(loop, ("a1",))
    loop.sandbox.state.configure({"fail_next": [503]})
    failed = tick(loop, sender)
    assert (failed.status, failed.sent) == ("failed", 0)
    assert feedback.load_cursor(loop.redis).next_at > loop.clock()
    retried = tick(loop, sender, loop.runtime.settings.retry_max_delay_seconds)
    assert (retried.status, retried.sent) == ("done", 1)
    assert [m["userId"] for m in received(receiver)] == ["a1", "a1"]


def test_a_segment_outage_moves_no_cursor_and_the_page_is_sent_later(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    survey_users(loop, ("s1", "s2"))
    receiver.state.configure({"fail_next": [500] * 4})  # the client's first try and its 3 retries
    failed = tick(loop, sender)
    assert (failed.status, failed.sent) == ("failed", 0)
    assert "Segment did not take page 1" in feedback.load_cursor(loop.redis).last_error
    assert received(receiver) == []
    assert NpsStore(loop.redis, loop.clock).summary(1, "day")["totals"]["responses"] == 0
    sent = tick(loop, sender, 3600)
    assert (sent.status, sent.sent) == ("done", 2)
    assert sorted(m["userId"] for m in received(receiver, "track")) == ["s1", "s2"]


def test_segment_rate_limits_are_waited_out_by_the_client(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    survey_users(loop, ("r1",))
    receiver.state.configure({"fail_next": [429], "retry_after": 1})
    assert tick(loop, sender).sent == 1
    assert receiver.state.requests() == 2
    assert [m["type"] for m in received(receiver)] == ["track", "identify"]


def test_polling_waits_for_the_low_priority_share_of_the_daily_budget(
    redis_client: redis.Redis, sandbox: SandboxServer, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    relay = make_relay(
        redis_client,
        sandbox,
        feedback_segment_write_key=FEEDBACK_KEY,
        feedback_segment_host=receiver.url,
        promoter_daily_limit=10,
        promoter_daily_reserve=0.2,
    )
    relay.clock.now = time.time()
    survey_users(relay, ("b1",))  # 2 calls of the 10
    used = relay.stores.budget.used_today()
    relay.redis.set(keys.budget(str(int(relay.clock() // 86400))), 8)  # what low priority may use: 8
    waiting = tick(relay, sender)
    assert waiting.status == "waiting"
    assert "daily Promoter budget used up" in feedback.load_cursor(relay.redis).last_error
    assert feedback_calls(relay) == []
    assert used == 2


def test_the_dashboard_aggregates_count_an_edited_score_once(
    loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    ids = survey_users(loop, ("c1", "c2"))
    loop.sandbox.state.edit_feedback(ids["c1"], {"score": 10})
    loop.sandbox.state.edit_feedback(ids["c2"], {"score": 2})
    tick(loop, sender)
    store = NpsStore(loop.redis, loop.clock)
    first = store.summary(7, "day")["totals"]
    assert (first["promoters"], first["detractors"], first["responses"], first["nps"]) == (1, 1, 2, 0.0)
    loop.sandbox.state.edit_feedback(ids["c2"], {"score": 9, "comment": "They fixed it"})
    tick(loop, sender, 300)
    summary = store.summary(7, "week")
    assert (summary["totals"]["promoters"], summary["totals"]["responses"], summary["totals"]["nps"]) == (
        2,
        2,
        100.0,
    )
    latest = summary["latest"]
    assert [item["feedback_id"] for item in latest] == [str(ids["c2"]), str(ids["c1"])]
    assert latest[0]["edited"] is True
    assert latest[0]["email"] == "C***@Example.com"
    assert latest[0]["user"] == "c2"
    # Counted under the day each response was posted (a run across midnight has two).
    days = loop.redis.keys(keys.NPS_DAY + "*")
    assert days
    assert all(0 < loop.redis.ttl(day) <= DAYS_KEPT * 86400 for day in days)


def test_off_without_a_write_key(relay: Relay, receiver: ReceiverServer, sender: SegmentSender) -> None:
    survey_users(relay, ("o1",))
    assert feedback.poll(relay.runtime, sender).status == "off"
    assert feedback.run_task(relay.runtime) == 0
    assert feedback_calls(relay) == []


def test_the_email_index_follows_the_contact_promoter_has(relay: Relay) -> None:
    people = relay.stores.people
    relay.send(make_event("i1", "identify", "u7", traits={"email": "Ada@Example.com"}))
    relay.drain()
    assert people.user_of_email("ada@example.com") == "u7"
    assert people.user_of_email("ADA@EXAMPLE.COM") == "u7"
    assert people.user_of_email("bob@example.com") is None
    relay.send(make_event("i2", "identify", "u7", traits={"email": "ada@new.example"},
                          timestamp="2026-11-29T01:00:00.000Z"))  # fmt: skip
    relay.drain()
    assert people.user_of_email("ada@new.example") == "u7"
    assert people.user_of_email("ada@example.com") is None, "the old address is no longer this person's"
    # Persons joined by an alias: an email's index entry may name the person merged away; it is
    # followed (``merged_into``), and only the email the joined person has at Promoter answers.
    relay.send(make_event("i3", "identify", "legacy", traits={"email": "old@example.com"}))
    relay.drain()
    assert people.user_of_email("old@example.com") == "legacy"
    relay.send(make_event("al", "alias", "u7", previousId="legacy"))
    relay.drain()
    joined = people.person_of("u:u7")
    assert joined is not None
    assert {"u:u7", "u:legacy"} <= set(joined["identities"])
    at_promoter = joined["at_promoter"]["email"]
    assert people.user_of_email(at_promoter) in ("legacy", "u7")
    for other in {"old@example.com", "ada@new.example"} - {at_promoter}:
        assert people.user_of_email(other) is None


def test_the_beat_task_runs_the_loop_in_real_worker_processes(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, receiver: ReceiverServer, tmp_path: Any
) -> None:
    from tests.conftest import worker_env

    env = worker_env(
        redis_url, sandbox.url, FEEDBACK_SEGMENT_WRITE_KEY=FEEDBACK_KEY, FEEDBACK_SEGMENT_HOST=receiver.url
    )
    processes = Processes(env, tmp_path)
    try:
        relay = make_relay(redis_client, sandbox)
        relay.clock.now = time.time()
        survey_users(relay, ("w1", "w2"))
        processes.worker()
        processes.beat()
        wait_until(lambda: len(received(receiver)) >= 4, timeout=90, interval=0.5)
        time.sleep(2 * feedback.BEAT_SECONDS)  # more ticks: not due, nothing sent again
    finally:
        processes.stop()
    assert sorted(m["userId"] for m in received(receiver, "track")) == ["w1", "w2"]
    assert len(received(receiver)) == 4
    assert feedback.load_cursor(relay.redis).sent_total == 2


def test_the_admin_api_shows_nps_per_day_and_week_and_the_latest_masked(
    client: FlaskClient, loop: Relay, receiver: ReceiverServer, sender: SegmentSender
) -> None:
    ids = survey_users(loop, ("d1", "d2", "d3"))
    for user, score in (("d1", 10), ("d2", 9), ("d3", 3)):
        loop.sandbox.state.edit_feedback(ids[user], {"score": score})
    tick(loop, sender)
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    openapi = Conformance(document())
    for by in ("day", "week"):
        answer = client.get(f"/admin/api/nps?by={by}&days=14", headers=bearer)
        assert answer.status_code == 200
        body = answer.get_json()
        openapi.check(body, "/admin/api/nps")
        assert body["totals"] == {"period": "total", "responses": 3, "promoters": 2, "passives": 0,
                                  "detractors": 1, "nps": 33.3}  # fmt: skip
        assert sum(p["responses"] for p in body["series"]) == 3
        assert body["series"][-1]["responses"] == 3, "today's responses are in the last period"
    assert len(client.get("/admin/api/nps?days=14", headers=bearer).get_json()["series"]) == 14
    body = client.get("/admin/api/nps", headers=bearer).get_json()
    assert body["enabled"] is False, "this app has no FEEDBACK_SEGMENT_WRITE_KEY"
    assert body["poll"]["sent_total"] == 3
    assert body["poll"]["last_run_at"]
    shown = json.dumps(body["latest"])
    assert "@Example.com" in shown
    assert all(f"{user.upper()}@" not in shown for user in ids)
    assert sorted(item["user"] for item in body["latest"]) == ["d1", "d2", "d3"]
    refused = client.get("/admin/api/nps?by=month", headers=bearer)
    assert refused.status_code == 400
    openapi.check(refused.get_json(), "/admin/api/nps", status=400)
    assert client.get("/admin/api/nps").status_code == 401
