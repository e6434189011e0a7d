"""The retry policy of ``worker.tasks.deliver``, one kind of failure per test.

Each test runs the relay's task bodies in this process (``tests.harness``) against a real Redis and
the sandbox over HTTP; ``relay.later`` moves the harness clock, so retry windows and Promoter's
``Retry-After`` pass without sleeping.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.devtools.sandbox import SandboxServer
from tests.conftest import ref
from tests.factories import make_event
from tests.harness import Relay, make_relay
from worker import keys
from worker.promoter import classify
from worker.states import State
from worker.tasks import FailurePolicy


def identify(message_id: str, user: str = "u1", **traits: Any) -> Any:
    return make_event(message_id, "identify", user, traits=traits)


def track(message_id: str, user: str = "u1", event: str = "NPS") -> Any:
    return make_event(message_id, "track", user, event=event)


def dead_reason(relay: Relay, message_id: str) -> str:
    record = relay.stores.dead.get(ref(message_id))
    assert record is not None, f"{message_id} is not a dead letter"
    reason: str = record["reason"]
    return reason


def test_survey_without_a_campaign_is_a_dead_letter_saying_what_to_set(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, promoter_campaign_id=None, survey_events=frozenset({"NPS"}))
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    assert relay.state(ref("i")) == State.DELIVERED, "contact updates need no campaign"
    relay.send(track("nps"), track("signup", event="Signed Up"))
    relay.drain()
    assert relay.state(ref("nps")) == State.DEAD
    assert dead_reason(relay, "nps").startswith("no campaign: set PROMOTER_CAMPAIGN_ID")
    assert relay.surveys() == []
    assert relay.state(ref("signup")) == State.DELIVERED, "a track that surveys no one needs no campaign"
    assert relay.redis.zscore(keys.SCHEDULE, ref("nps")) is None, "a configuration error is not retried"


def test_transient_failures_are_retried_until_the_retry_window_runs_out(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    window = 600
    relay = make_relay(
        redis_client, sandbox, retry_window_seconds=window, retry_base_seconds=1, retry_max_delay_seconds=60
    )
    sandbox.state.configure({"down": True})
    started = relay.clock.now
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    assert relay.state(ref("i")) == State.RETRYING
    while relay.clock.now - started < window:
        assert relay.state(ref("i")) == State.RETRYING, f"{relay.clock.now - started:.0f}s in"
        assert relay.stores.dead.count() == 0
        relay.later(61)
    relay.later(61)  # the last try, at the window's end, has run by now
    assert relay.state(ref("i")) == State.DEAD
    reason = dead_reason(relay, "i")
    assert reason.startswith(f"retry window of {window}s exhausted; last: transient"), reason
    assert "503" in reason
    attempts = len(sandbox.state.calls("/contacts/"))
    assert attempts > 3, "retried with backoff within the window, not given up at once"
    assert relay.redis.zscore(keys.SCHEDULE, ref("i")) is None
    relay.later(3600)
    assert len(sandbox.state.calls("/contacts/")) == attempts, "nothing runs once it is buried"


def test_a_429_pauses_every_call_for_retry_after_and_reschedules_the_message(relay: Relay) -> None:
    relay.sandbox.state.configure({"throttle_next": 1, "retry_after": 30})
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    assert relay.state(ref("i")) == State.RETRYING
    assert relay.stores.dead.count() == 0, "a 429 is never a dead letter"
    due = relay.redis.zscore(keys.SCHEDULE, ref("i"))
    assert due == pytest.approx(relay.clock.now + 30, abs=1)
    wait, why = relay.stores.budget.wait_seconds()
    assert wait == pytest.approx(30, abs=1)
    assert "429" in why
    assert "429" in relay.record(ref("i"))["detail"]
    relay.later(10)
    assert relay.state(ref("i")) == State.RETRYING, "not before Retry-After has passed"
    assert len(relay.sandbox.state.calls("/contacts/")) == 1
    relay.later(21)
    assert relay.state(ref("i")) == State.DELIVERED
    assert relay.contact("u1@example.com")["email"] == "u1@example.com"


def test_a_survey_promoter_refuses_is_a_dead_letter_and_the_contact_stays_known(relay: Relay) -> None:
    relay.send(identify("i", email="u1@example.com"))
    relay.drain()
    assert relay.state(ref("i")) == State.DELIVERED
    relay.sandbox.state.configure({"fail_next": [400]})
    relay.send(track("nps"))
    relay.drain()
    assert relay.state(ref("nps")) == State.DEAD
    reason = dead_reason(relay, "nps")
    assert reason.startswith("Promoter rejected it"), reason
    assert "400" in reason
    [refused] = relay.sandbox.state.calls("/v2/survey/")
    assert refused["status"] == 400
    assert relay.state(ref("i")) == State.DELIVERED, "the refused survey does not undo the contact"
    person = relay.stores.people.person_of("u:u1")
    assert person is not None
    assert person["known_to_promoter"]
    assert person["refused"] is None
    relay.send(track("nps-2"))
    relay.drain()
    assert relay.state(ref("nps-2")) == State.DELIVERED, "the next survey goes out, not held"
    assert [s["contact"]["email"] for s in relay.surveys()] == ["u1@example.com"]


def test_an_ineligible_answer_to_a_contact_update_is_promoters_refusal_not_an_internal_error(
    relay: Relay,
) -> None:
    """ "Not eligible" is a survey outcome; should Promoter ever answer it to a contact update, the
    message is a dead letter with Promoter's answer like any other refusal."""
    body = '{"non_field_errors": ["Contact is not eligible for survey."]}'
    relay.send(identify("i", email="u1@example.com"))
    relay.redis.delete("relay", "relay.low")
    start = relay.stores.messages.start(ref("i"))
    error = classify(400, {}, body)
    assert error is not None
    state = FailurePolicy(ref("i"), start, relay.runtime, {}).handle(error)
    assert state == State.DEAD
    reason = dead_reason(relay, "i")
    assert reason.startswith("Promoter rejected it: HTTP 400"), reason
    letter = relay.stores.dead.get(ref("i"))
    assert letter is not None
    assert letter["last_response"] == body
