"""Promoter's budget is spent only on change: unchanged identifies skip, updates of one person coalesce,
a local cooldown saves survey calls Promoter would refuse, and a daily limit keeps a surveys' reserve."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.devtools.sandbox import SandboxServer
from tests.conftest import ref
from tests.factories import make_event, text_map
from tests.harness import Relay, make_relay
from worker import delivery, keys
from worker.states import State

TRAITS: dict[str, Any] = {
    "email": "ada@example.com",
    "firstName": "Ada",
    "plan": "pro",
    "company": {"name": "Acme"},
}


def identify(message_id: str, at: str = "2026-11-29T10:00:00.000Z", **traits: Any) -> Any:
    return make_event(message_id, "identify", "u1", timestamp=at, traits=traits)


def saved(relay: Relay) -> dict[str, str]:
    counters = text_map(relay.redis.hgetall(keys.STATS))
    return {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("saved:")}


def test_an_unchanged_identify_makes_no_call(relay: Relay) -> None:
    relay.send(identify("first", **TRAITS))
    relay.drain()
    for i in range(5):  # analytics.js sends an identify on every page load, with the same traits
        relay.send(identify(f"page-{i}", at=f"2026-11-29T10:0{i + 1}:00.000Z", **TRAITS), route="low")
    relay.drain()
    assert len(relay.upserts()) == 1
    assert {relay.state(ref(f"page-{i}")) for i in range(5)} == {State.SKIPPED}
    assert relay.record(ref("page-0"))["detail"] == "unchanged: Promoter already has this contact"
    assert saved(relay) == {"unchanged": "5"}


@pytest.mark.parametrize(
    "change",
    [
        {"plan": "team"},
        {"firstName": "Augusta"},
        {"email": "ada@new.example.com"},
        {"seats": 3},
        {"company": {"name": "B"}},
    ],
    ids=["trait", "first-name", "email", "new-trait", "nested"],
)
def test_any_changed_field_makes_exactly_one_call(relay: Relay, change: dict[str, Any]) -> None:
    relay.send(identify("first", **TRAITS))
    relay.drain()
    relay.send(identify("changed", at="2026-11-29T11:00:00.000Z", **{**TRAITS, **change}))
    relay.drain()
    assert len(relay.upserts()) == 2
    assert relay.state(ref("changed")) == State.DELIVERED


def test_a_new_contact_list_configuration_sends_unchanged_contacts_again(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    make_relay(redis_client, sandbox).send(identify("first", **TRAITS))
    make_relay(redis_client, sandbox).drain()
    listed = make_relay(redis_client, sandbox, promoter_contact_list_ids=(4,))
    listed.send(identify("same", at="2026-11-29T11:00:00.000Z", **TRAITS))
    listed.drain()
    assert [u.get("contact_list") for u in listed.upserts()] == [None, [4]]


def test_coalesced_identifies_make_one_call_with_the_newest_values(
    redis_client: redis.Redis, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = make_relay(redis_client, sandbox, promoter_rate_limit=1.0)
    monkeypatch.setattr(delivery, "MAX_INLINE_WAIT_SECONDS", 0.0)
    relay.send(make_event("other", "identify", "someone", traits={"email": "x@example.com"}))
    relay.drain()  # takes the only slot of this second
    relay.send(identify("first", **TRAITS))
    relay.drain()
    assert relay.state(ref("first")) == State.RETRYING, "waits for budget"
    relay.send(identify("second", at="2026-11-29T10:01:00.000Z", plan="team"))
    relay.send(identify("third", at="2026-11-29T10:02:00.000Z", seats=12))
    relay.drain()
    # No call was made, so nobody keeps the person's lease: each waits for budget, and the first
    # call made carries the other two.
    assert relay.state(ref("second")) == relay.state(ref("third")) == State.RETRYING
    relay.later(5)
    mine = [u for u in relay.upserts() if u["email"] == "ada@example.com"]
    assert len(mine) == 1, mine
    assert mine[0]["attributes"] == {"plan": "team", "seats": "12", "company_name": "Acme"}
    for message in ("first", "second", "third"):
        assert relay.state(ref(message)) == State.DELIVERED
    assert "carried by the contact update of " + ref("first") in relay.record(ref("third"))["detail"]
    assert saved(relay)["coalesced"] == "2"


def test_a_local_survey_cooldown_saves_calls_promoter_would_refuse(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, survey_cooldown_days=30)
    relay.send(identify("i", **TRAITS))
    relay.send(make_event("nps-1", "track", "u1"), make_event("nps-2", "track", "u1"))
    relay.drain()
    assert len(relay.surveys()) == 1
    assert relay.state(ref("nps-2")) == State.INELIGIBLE
    assert relay.record(ref("nps-2"))["detail"].startswith("surveyed 0 days ago")
    assert len(sandbox.state.calls("/v2/survey/")) == 1, "no call made"
    assert saved(relay)["cooldown"] == "1"


def test_without_the_cooldown_every_survey_event_is_sent(relay: Relay) -> None:
    relay.send(identify("i", **TRAITS))
    relay.send(make_event("nps-1", "track", "u1"), make_event("nps-2", "track", "u1"))
    relay.drain()
    assert len(relay.surveys()) == 2


def test_near_the_daily_limit_low_priority_updates_wait_for_tomorrow(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, promoter_daily_limit=5, promoter_daily_reserve=0.4)
    for i in range(3):
        relay.send(make_event(f"i{i}", "identify", f"u{i}", traits={"email": f"u{i}@example.com"}))
    relay.drain()
    for i in range(3):  # trait updates: low priority
        update = make_event(
            f"t{i}", "identify", f"u{i}", traits={"plan": "pro"}, timestamp="2026-11-29T10:00:00.000Z"
        )
        relay.send(update,
                   route="low")  # fmt: skip
    relay.drain()
    assert [relay.state(ref(f"t{i}")) for i in range(3)] == [State.RETRYING] * 3
    assert "daily Promoter budget used up" in relay.record(ref("t0"))["detail"]
    relay.send(make_event("nps", "track", "u0"))
    relay.drain()
    assert relay.state(ref("nps")) == State.DELIVERED, "the reserve is the surveys'"
    assert relay.stores.budget.used_today() == 4
    relay.later(86400)
    assert [relay.state(ref(f"t{i}")) for i in range(3)] == [State.DELIVERED] * 3


def test_an_update_waiting_for_tomorrows_budget_does_not_hold_back_an_email_change_or_a_survey(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, promoter_daily_limit=10, promoter_daily_reserve=0.2)
    relay.send(identify("first", email="old@example.com"))
    relay.drain()
    relay.redis.set(keys.budget(str(int(relay.clock.now // 86400))), 8)  # low updates stop at 8 of 10
    relay.send(identify("traits", "2026-11-29T10:01:00.000Z", plan="pro"), route="low")
    relay.drain()
    assert relay.state(ref("traits")) == State.RETRYING
    relay.send(identify("newmail", "2026-11-29T10:02:00.000Z", email="new@example.com"))
    relay.send(make_event("nps", "track", "u1", timestamp="2026-11-29T10:03:00.000Z"))
    relay.drain()
    assert relay.state(ref("newmail")) == State.DELIVERED
    # The email change carried the waiting trait update along: one call for both, from the reserve.
    assert relay.state(ref("traits")) == State.DELIVERED
    assert relay.upserts()[-1]["attributes"]["plan"] == "pro"
    assert relay.state(ref("nps")) == State.DELIVERED
    assert [s["contact"]["email"] for s in relay.surveys()] == ["new@example.com"]
    assert relay.stores.budget.used_today() == 10
