"""The inspection API, its OpenAPI description, /metrics and the CLI, over a real Redis (no worker)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib.metadata import version
from typing import Any, cast

import pytest
import redis
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.admin import bp as admin_bp
from app.cli import main
from app.devtools.sandbox import SandboxServer
from tests.conftest import ADMIN_TOKEN, ROOT, SOURCE, basic, ref, settings_for
from tests.factories import accept, make_event, queued_refs, stores_for
from tests.harness import Clock, Relay, make_relay
from worker import keys
from worker.events import WEBHOOK_SOURCE, make_ref
from worker.promoter import Call
from worker.settings import load
from worker.stores import Stores, build_stores

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UNKNOWN_REASON = "survey outcome unknown: the call may have reached Promoter (timeout); check Promoter"
EVIDENCE = {
    "cause": "timeout",
    "call_started": "2026-11-29T10:00:00.123+00:00",
    "call_seconds": 10.004,
    "attempts": 2,
    "worker": "host:42",
    "error": "read timeout",
}


def api(client: FlaskClient, path: str, method: str = "GET", status: int = 200, **kwargs: Any) -> Any:
    response = client.open(f"/admin/api/{path}", method=method, headers=BEARER, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def stores(redis_client: redis.Redis) -> Stores:
    return stores_for(redis_client)


def stores_at(client: redis.Redis, clock: Clock) -> Stores:
    """Stores whose scripts see ``clock`` (to bury dead letters in the past)."""
    return build_stores(load({}, redis_url="redis://unused", environment="test"), client=client, clock=clock)


def held_track(stores: Stores, message_id: str, user: str | None = "h1", anonymous: str | None = None) -> str:
    """A track held because its person is unknown to Promoter (its task message is dropped)."""
    event = make_event(message_id, user=user, anonymous=anonymous)
    accept(stores, event)
    stores.redis.delete("relay", "relay.low")
    stores.messages.start(event["ref"])
    plan = stores.people.track_plan(
        event["ref"], f"{event['ref']}#1", f"u:{user}" if user else "", f"a:{anonymous}" if anonymous else "",
        None, True, 7, "high",
    )  # fmt: skip
    assert plan.action == "held"
    return event["ref"]


def retrying_track(stores: Stores, message_id: str, user: str = "r1") -> str:
    event = make_event(message_id, user=user)
    accept(stores, event)
    stores.redis.delete("relay", "relay.low")
    stores.messages.start(event["ref"])
    assert stores.schedule.later(event["ref"], 3600, "transient: Promoter answered 503", 0)
    return event["ref"]


def dead_track(stores: Stores, message_id: str, user: str = "d1", **bury: Any) -> str:
    event = make_event(message_id, user=user)
    accept(stores, event)
    stores.redis.delete("relay", "relay.low")
    stores.messages.start(event["ref"])
    assert stores.dead.bury(event["ref"], bury.pop("reason", "Promoter rejected it: 400"), **bury)
    return event["ref"]


def iso(value: Any) -> datetime:
    """An ISO-8601 time in UTC, as the relay writes them."""
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    return moment


# ------------------------------------------------------------------------- a small OpenAPI checker


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "app" / "openapi.json").read_text(encoding="utf-8"))
    return loaded


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class Conformance:
    """Checks a response against the document, strictly: every field the API returns must be described
    (an object schema with ``properties`` and no ``additionalProperties`` allows nothing else), integers
    must be JSON integers and ``date-time`` strings ISO-8601 in UTC."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.doc
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def problems(self, value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
        schema = self.resolve(schema)
        if "oneOf" in schema:
            matching = [s for s in schema["oneOf"] if not self.problems(value, s, where)]
            return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
        if "const" in schema and value != schema["const"]:
            return [f"{where}: {value!r} is not {schema['const']!r}"]
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if types and not any(_TYPES[t](value) for t in types):
            return [f"{where}: {value!r} is not {'|'.join(types)}"]
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} not in {schema['enum']}"]
        if isinstance(value, dict):
            return self.object_problems(value, schema, where)
        if isinstance(value, list):
            return [
                p
                for i, v in enumerate(value)
                for p in self.problems(v, schema.get("items", {}), f"{where}[{i}]")
            ]
        return self.format_problems(value, schema, where)

    def object_problems(self, value: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
        found = [f"{where}: {name!r} missing" for name in schema.get("required", []) if name not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", {} if not properties else False)
        for name, item in value.items():
            if name in properties:
                found += self.problems(item, properties[name], f"{where}.{name}")
            elif extra is False:
                found.append(f"{where}.{name}: not described in the OpenAPI document")
            else:
                found += self.problems(item, extra, f"{where}.{name}")
        return found

    def format_problems(self, value: Any, schema: dict[str, Any], where: str) -> list[str]:
        if schema.get("format") != "date-time" or not isinstance(value, str):
            return []
        try:
            iso(value)
        except (AssertionError, ValueError):
            return [f"{where}: {value!r} is not an ISO-8601 UTC time"]
        return []

    def response_schema(self, path: str, method: str, status: int) -> dict[str, Any]:
        answer = self.doc["paths"][path][method]["responses"][str(status)]
        schema: dict[str, Any] = self.resolve(answer)["content"]["application/json"]["schema"]
        return schema

    def check(self, body: Any, path: str, method: str = "get", status: int = 200) -> None:
        assert self.problems(body, self.response_schema(path, method, status)) == []


@pytest.fixture
def openapi() -> Conformance:
    return Conformance(document())


# ---------------------------------------------------------------------------------------- the token


@pytest.mark.parametrize("path", ["stats", "messages", "messages/x", "users/u1", "dead-letters"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "wrong-scheme", "empty"],
)
def test_admin_api_needs_the_token(client: FlaskClient, path: str, headers: dict[str, str]) -> None:
    response = client.get(f"/admin/api/{path}", headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"error": "Missing or invalid bearer token."}
    assert ADMIN_TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path", ["dead-letters/replay", "dead-letters/x/replay", "dead-letters/x/discard", "dead-letters/discard"]
)
def test_changes_need_the_token(client: FlaskClient, redis_client: redis.Redis, path: str) -> None:
    dead_track(stores_for(redis_client), "x")
    assert client.post(f"/admin/api/{path}", json={"all": True}).status_code == 401
    assert redis_client.zcard(keys.DEAD_INDEX) == 1


@pytest.mark.usefixtures("redis_client")
def test_without_admin_token_the_api_is_disabled(redis_url: str) -> None:
    app = create_app({"TESTING": True, **settings_for(redis_url, admin_token="")})
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        response = client.get("/admin/api/stats", headers=headers)
        assert response.status_code == 403
        assert "ADMIN_TOKEN" in response.get_json()["error"]
    assert client.post("/admin/api/dead-letters/replay", headers=BEARER).status_code == 403
    assert client.get("/admin/api/openapi.json").status_code == 200, "the description needs no token"


def test_the_favicon_is_served(client: FlaskClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    assert response.get_data().startswith(b"<svg")


def test_dashboard_shell_has_no_data_and_no_token(client: FlaskClient, stores: Stores) -> None:
    dead_track(stores, "secret-looking-id")
    page = client.get("/admin/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "secret-looking-id" not in text
    assert ADMIN_TOKEN not in text
    assert "Authorization" in text
    assert "sessionStorage" in text
    assert "innerHTML" not in text
    assert "outerHTML" not in text
    assert "insertAdjacentHTML" not in text
    assert "default-src 'self'" in text


# ---------------------------------------------------------------------------------- stats, messages


def test_stats_reflect_ingest(client: FlaskClient, openapi: Conformance) -> None:
    client.post("/v1/identify", json={"userId": "u1", "traits": {"email": "a@example.com"}}, headers=basic())
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m1"}, headers=basic())
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m1"}, headers=basic())
    assert client.post("/v1/track", json={"userId": "u1"}, headers=basic()).status_code == 400
    client.post("/v1/page", json={"userId": "u1"}, headers=basic())
    assert client.post("/v1/track", json={"userId": "u1", "event": "NPS"}).status_code == 401
    stats = api(client, "stats")
    assert stats["queue"]["queued"] == 2
    assert stats["queue"]["queued_high"] + stats["queue"]["queued_low"] == 2
    assert stats["accepted"] == {"identify": 1, "track": 1, "page": 1}
    assert stats["duplicate"] == {"track": 1}
    assert stats["rejected"] == {"track": 1}
    assert stats["refused"] == {"401": 1}
    assert stats["totals"]["received"] == 2
    assert stats["totals"]["skipped"] == 1
    assert stats["per_minute"]["received"] > 0
    openapi.check(stats, "/admin/api/stats")


def test_stats_per_minute_count_each_minute_for_the_chart(
    client: FlaskClient, relay_harness: Relay, openapi: Conformance
) -> None:
    """Received, delivered and dead, minute by minute, from the counters the scripts keep."""
    relay_harness.clock.now = (time.time() // 60 - 30) * 60 + 5  # 30 minutes ago
    relay_harness.send(make_event("id-1", "identify", "u1"), make_event("nps-1", user="u1"))
    relay_harness.clock.advance(60)
    relay_harness.drain()
    relay_harness.clock.advance(600)
    relay_harness.sandbox.state.configure({"fail_next": [400]})
    relay_harness.send(make_event("id-2", "identify", "u2"))
    relay_harness.drain()
    answer = api(client, "stats/minutes?minutes=45")
    openapi.check(answer, "/admin/api/stats/minutes")
    minutes = answer["minutes"]
    assert len(minutes) == 46, "45 whole minutes and the current one"
    assert answer["kept_minutes"] == keys.MINUTE_TTL // 60
    times = [iso(m["at"]) for m in minutes]
    assert times == sorted(times)
    assert all((b - a).total_seconds() == 60 for a, b in itertools.pairwise(times))
    busy = {m["at"]: (m["received"], m["delivered"], m["dead"]) for m in minutes if any(
        (m["received"], m["delivered"], m["dead"]))}  # fmt: skip
    assert list(busy.values()) == [(2, 0, 0), (0, 2, 0), (1, 0, 1)]
    first = iso(next(iter(busy)))
    assert first.timestamp() == (relay_harness.clock.now - 660) // 60 * 60
    assert len(api(client, "stats/minutes?minutes=1000")["minutes"]) == keys.MINUTE_TTL // 60, (
        "no more than kept"
    )


def test_message_detail_has_history_from_received_by_message_id_and_by_ref(client: FlaskClient) -> None:
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m-42"}, headers=basic())
    by_id = api(client, "messages/m-42")
    by_ref = api(client, f"messages/{ref('m-42')}")
    assert by_id == by_ref
    message = by_id["message"]
    assert (message["ref"], message["source"], message["messageId"]) == (ref("m-42"), SOURCE, "m-42")
    assert message["state"] == "received"
    assert message["attempts"] == 0
    assert [h["state"] for h in message["history"]] == ["received"]
    assert iso(message["history"][0]["at"]) == iso(message["received"])
    assert by_id["event"]["messageId"] == "m-42"
    assert by_id["event"]["userId"] == "u1"
    assert by_id["dead_letter"] is None
    missing = client.get("/admin/api/messages/nope", headers=BEARER)
    assert missing.status_code == 404
    assert "nope" in missing.get_json()["error"]


def test_history_follows_the_message_until_its_dead_letter(client: FlaskClient, stores: Stores) -> None:
    message_ref = retrying_track(stores, "h-1")
    stores.dead.bury(message_ref, "gave up", evidence=EVIDENCE)
    detail = api(client, "messages/h-1")
    history = detail["message"]["history"]
    assert [h["state"] for h in history] == ["received", "retrying", "dead"]
    assert [h["detail"] for h in history][1:] == ["transient: Promoter answered 503", "gave up"]
    times = [iso(h["at"]) for h in history]
    assert times == sorted(times)
    letter = detail["dead_letter"]
    assert letter["reason"] == "gave up"
    assert letter["messageId"] == "h-1"
    assert letter["evidence"]["call_started"] == "2026-11-29T10:00:00.123Z"
    assert letter["evidence"]["attempts"] == 2
    assert letter["evidence"]["call_seconds"] == 10.004


def test_search_by_user_id_returns_that_users_recent_messages(client: FlaskClient, stores: Stores) -> None:
    accept(stores, make_event("a1", user="alice"), make_event("b1", user="bob"))
    accept(stores, make_event("a2", user="alice"), make_event("anon-1", user=None, anonymous="visitor"))
    found = api(client, "messages?q=alice")["messages"]
    assert [m["messageId"] for m in found] == ["a2", "a1"], "newest first"
    assert {m["user"] for m in found} == {"u:alice"}
    assert "history" not in found[0]
    assert [m["messageId"] for m in api(client, "messages?q=alice&limit=1")["messages"]] == ["a2"]
    assert [m["messageId"] for m in api(client, "messages?q=visitor")["messages"]] == ["anon-1"]
    assert [m["messageId"] for m in api(client, "messages?q=b1")["messages"]] == ["b1"]
    assert [m["messageId"] for m in api(client, f"messages?q={ref('a1')}")["messages"]] == ["a1"]
    assert api(client, "messages?q=nobody")["messages"] == []
    assert len(api(client, "messages")["messages"]) == 4
    assert len(api(client, "messages?limit=-3")["messages"]) == 1, "limit is clamped to at least 1"


# ---------------------------------------------------------------------------------------- users


@pytest.fixture
def relay_harness(redis_client: redis.Redis, sandbox: SandboxServer) -> Relay:
    return make_relay(redis_client, sandbox)


def test_user_view_after_a_delivered_identify(client: FlaskClient, relay_harness: Relay) -> None:
    relay_harness.send(
        make_event("id-1", "identify", "u7", traits={"email": "u7@example.com", "firstName": "Ua"})
    )
    relay_harness.drain()
    assert relay_harness.state(ref("id-1")) == "delivered"
    properties = {"order_id": "o-1", "total": 12.5, "currency": "USD"}
    relay_harness.send(make_event("order-1", user="u7", event="Order Completed", properties=properties))
    relay_harness.drain()
    assert relay_harness.state(ref("order-1")) == "delivered"
    view = api(client, "users/u7")
    assert view["identity"] == "u:u7"
    assert view["known"] is True
    person = view["person"]
    assert person["identities"] == ["u:u7"]
    assert person["contact"] == {"email": "u7@example.com", "first_name": "Ua"}
    assert person["at_promoter"]["email"] == "u7@example.com"
    assert person["contact_id"]
    assert person["known_to_promoter"] is True
    assert person["orders"] == 1
    assert person["order_attributes"]["order_count"] == 1
    assert person["order_attributes"]["last_order_total"] == "12.50"
    assert view["held"] == []
    assert view["held_count"] == 0
    unknown = api(client, "users/zz")
    assert unknown == {"identity": "u:zz", "known": False, "person": None, "held": [], "held_count": 0}


def test_user_view_lists_held_messages(client: FlaskClient, stores: Stores) -> None:
    held_track(stores, "held-1", user="h1")
    held_track(stores, "held-anon", user=None, anonymous="visitor-9")
    view = api(client, "users/h1")
    assert view["known"] is False
    assert view["held_count"] == 1
    assert view["person"] is None, "no identify yet: no person"
    [item] = view["held"]
    assert (item["messageId"], item["state"], item["type"], item["event"]) == (
        "held-1",
        "held",
        "track",
        "NPS",
    )
    assert abs(iso(item["held_at"]).timestamp() - time.time()) < 60
    anonymous = api(client, "users/visitor-9?anonymous=1")
    assert anonymous["identity"] == "a:visitor-9"
    assert [h["messageId"] for h in anonymous["held"]] == ["held-anon"]
    assert api(client, "users/visitor-9")["held"] == [], "without anonymous=1 it is a userId"


# ------------------------------------------------------------------- every endpoint's numbers and times


def test_every_endpoint_answers_numbers_as_numbers_and_times_as_iso(
    client: FlaskClient, relay_harness: Relay, openapi: Conformance
) -> None:
    relay_harness.send(make_event("id-1", "identify", "u7"), make_event("nps-1", user="u7"))
    relay_harness.drain()
    stores = stores_for(relay_harness.redis)
    refs = [held_track(stores, "held-1"), retrying_track(stores, "retry-1")]
    refs += [
        dead_track(stores, "dead-1", evidence=EVIDENCE, reason=UNKNOWN_REASON),
        dead_track(stores, "dead-2"),
    ]
    relay_harness.redis.hset(keys.message(refs[0]), "survey", f"inflight:{time.time() + 30:.3f}")

    openapi.check(api(client, "stats"), "/admin/api/stats")
    openapi.check(api(client, "stats/minutes"), "/admin/api/stats/minutes")
    listing = api(client, "messages")
    openapi.check(listing, "/admin/api/messages")
    assert len(listing["messages"]) == 6
    for message in listing["messages"]:
        assert isinstance(message["attempts"], int)
        assert all(iso(message[name]) for name in ("received", "updated", "since"))
    openapi.check(api(client, "messages?q=u7"), "/admin/api/messages")
    for message_ref in [ref("id-1"), ref("nps-1"), *refs]:
        detail = api(client, f"messages/{message_ref}")
        openapi.check(detail, "/admin/api/messages/{message_id}")
        assert all(iso(h["at"]) for h in detail["message"]["history"])
    assert iso(api(client, f"messages/{refs[0]}")["message"]["survey_deadline"])
    dead = api(client, "dead-letters")
    openapi.check(dead, "/admin/api/dead-letters")
    assert len(dead["dead_letters"]) == 2
    assert all(
        isinstance(d["attempts"], int) and iso(d["at"]) and iso(d["received"]) for d in dead["dead_letters"]
    )
    for user in ("u7", "h1", "nobody"):
        openapi.check(api(client, f"users/{user}"), "/admin/api/users/{user_id}")


# ------------------------------------------------------------------------------------- dead letters


def test_dead_letters_list_pages_newest_first(client: FlaskClient, redis_client: redis.Redis) -> None:
    clock = Clock(now=time.time() - 100)
    stores = stores_at(redis_client, clock)
    for n in range(3):
        dead_track(stores, f"d{n}", reason=f"reason {n}", response='{"detail": "nope"}')
        clock.advance(10)
    listing = api(client, "dead-letters")
    assert listing["total"] == 3
    assert [d["messageId"] for d in listing["dead_letters"]] == ["d2", "d1", "d0"]
    first = listing["dead_letters"][0]
    assert first["id"] == ref("d2")
    assert first["reason"] == "reason 2"
    assert first["attempts"] == 1
    assert first["last_response"] == '{"detail": "nope"}'
    assert first["user"] == "u:d1"
    assert first["event"]["messageId"] == "d2"
    assert first["type"] == "track"
    page = api(client, "dead-letters?limit=1&offset=1")
    assert page["total"] == 3
    assert [d["messageId"] for d in page["dead_letters"]] == ["d1"]
    assert api(client, "dead-letters?offset=5")["dead_letters"] == []


def test_replay_one_queues_it_again(client: FlaskClient, stores: Stores, redis_client: redis.Redis) -> None:
    dead_track(stores, "d1")
    assert api(client, "dead-letters/d1/replay", "POST") == {"replayed": 1}
    assert redis_client.hget(keys.message(ref("d1")), "state") == "received"
    assert queued_refs(redis_client) == [ref("d1")]
    listed = [m["ref"] for m in api(client, "messages")["messages"]]
    assert listed == [ref("d1")], "a replayed message is listed once"
    again = api(client, "dead-letters/d1/replay", "POST", status=404)
    assert again["reason"] == "missing"
    assert again["replayed"] == 0
    assert api(client, "stats")["replayed"] == 1


def test_a_bare_message_id_names_the_dead_letter_even_when_another_source_has_that_id(
    client: FlaskClient, stores: Stores, redis_client: redis.Redis
) -> None:
    """The same messageId from the webhook (delivered) and from a write key (dead): replay and discard
    by the bare id act on the dead letter, as the CLI does."""
    accept(stores, make_event("twin", source=WEBHOOK_SOURCE))
    redis_client.hset(keys.message(make_ref(WEBHOOK_SOURCE, "twin")), "state", "delivered")
    dead_track(stores, "twin")
    assert api(client, "dead-letters/twin/replay", "POST") == {"replayed": 1}
    assert redis_client.hget(keys.message(ref("twin")), "state") == "received"
    dead_track(stores, "twin-2")
    accept(stores, make_event("twin-2", source=WEBHOOK_SOURCE))
    assert api(client, "dead-letters/twin-2/discard", "POST") == {"discarded": 1}
    assert api(client, "dead-letters/discard", "POST", json={"refs": ["twin-2"]}) == {"discarded": 0}
    assert stores.dead.count() == 0


def test_replay_of_an_unknown_ref_is_404(client: FlaskClient) -> None:
    answer = api(client, f"dead-letters/{ref('never')}/replay", "POST", status=404)
    assert answer == {"replayed": 0, "reason": "missing", "error": f"No dead letter {ref('never')!r}."}


def test_replay_is_refused_when_the_survey_was_sent(
    client: FlaskClient, stores: Stores, redis_client: redis.Redis, openapi: Conformance
) -> None:
    message_ref = dead_track(stores, "s1")
    redis_client.hset(keys.message(message_ref), "survey", "sent")
    refused = api(client, "dead-letters/s1/replay", "POST", status=409)
    assert refused["reason"] == "surveyed"
    assert "survey twice" in refused["error"]
    openapi.check(refused, "/admin/api/dead-letters/{message_id}/replay", "post", 409)
    assert stores.dead.count() == 1
    assert queued_refs(redis_client) == []
    assert redis_client.hget(keys.message(message_ref), "state") == "dead"


def test_replay_is_refused_while_its_survey_call_is_being_made(
    client: FlaskClient, stores: Stores, redis_client: redis.Redis, openapi: Conformance
) -> None:
    """Buried while its own survey call was in flight (the contact update it rode along with was
    refused): a replay now would clear the guard and could send a second survey."""
    message_ref = dead_track(stores, "c1")
    redis_client.hset(keys.message(message_ref), "survey", f"inflight:{time.time() + 60:.3f}")
    refused = api(client, "dead-letters/c1/replay", "POST", status=409)
    assert refused["reason"] == "calling"
    openapi.check(refused, "/admin/api/dead-letters/{message_id}/replay", "post", 409)
    assert queued_refs(redis_client) == []
    redis_client.hset(keys.message(message_ref), "survey", f"inflight:{time.time() - 1:.3f}")
    assert api(client, "dead-letters/c1/replay", "POST") == {"replayed": 1}, "its call has ended"


def test_replay_is_refused_when_the_event_expired(
    client: FlaskClient, stores: Stores, redis_client: redis.Redis
) -> None:
    message_ref = dead_track(stores, "e1")
    redis_client.delete(keys.event(message_ref))
    refused = api(client, "dead-letters/e1/replay", "POST", status=410)
    assert refused["reason"] == "expired"
    assert stores.dead.count() == 1


def test_replay_all_says_what_it_could_not_replay(
    client: FlaskClient, stores: Stores, redis_client: redis.Redis, openapi: Conformance
) -> None:
    dead_track(stores, "ok-1")
    redis_client.hset(keys.message(dead_track(stores, "sent-1")), "survey", "sent")
    answer = api(client, "dead-letters/replay", "POST")
    assert answer == {"replayed": 1, "refused": {"surveyed": 1}}
    openapi.check(answer, "/admin/api/dead-letters/replay", "post")
    assert queued_refs(redis_client) == [ref("ok-1")]
    assert [d["messageId"] for d in api(client, "dead-letters")["dead_letters"]] == ["sent-1"]


def test_discard_one_and_many(client: FlaskClient, stores: Stores, redis_client: redis.Redis) -> None:
    for name in ("d1", "d2", "d3", "d4"):
        dead_track(stores, name)
    assert api(client, "dead-letters/d1/discard", "POST") == {"discarded": 1}
    assert api(client, "dead-letters/d1/discard", "POST", status=404)["discarded"] == 0
    assert redis_client.hget(keys.message(ref("d1")), "state") == "dead"
    assert redis_client.exists(keys.event(ref("d1"))) == 0
    many = api(client, "dead-letters/discard", "POST", json={"refs": ["d2", ref("d3"), "nope"]})
    assert many == {"discarded": 2}
    assert [d["messageId"] for d in api(client, "dead-letters")["dead_letters"]] == ["d4"]
    assert api(client, "stats")["dead_dropped"] == {"discarded": 3}


@pytest.mark.parametrize(
    "body",
    [None, [], {"refs": "d1"}, {"refs": [1]}, {"all": "yes"}, {"all": True, "older_than_seconds": -1},
     {"all": True, "older_than_seconds": "1h"}, {"all": True, "older_than_seconds": True}],
)  # fmt: skip
def test_discard_many_refuses_a_bad_body(client: FlaskClient, stores: Stores, body: Any) -> None:
    dead_track(stores, "d1")
    answer = api(client, "dead-letters/discard", "POST", status=400, json=body)
    assert "error" in answer
    assert stores.dead.count() == 1


def test_discard_all_older_than(client: FlaskClient, redis_client: redis.Redis) -> None:
    old = stores_at(redis_client, Clock(now=time.time() - 7200))
    for name in ("old-1", "old-2"):
        dead_track(old, name)
    recent = stores_for(redis_client)
    dead_track(recent, "new-1")
    answer = api(client, "dead-letters/discard", "POST", json={"all": True, "older_than_seconds": 3600})
    assert answer == {"discarded": 2}
    assert [d["messageId"] for d in api(client, "dead-letters")["dead_letters"]] == ["new-1"]
    assert api(client, "dead-letters/discard", "POST", json={"all": True}) == {"discarded": 1}
    assert api(client, "dead-letters")["total"] == 0


# ---------------------------------------------------------------------------------------- OpenAPI


def admin_routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin/api"):
            path = rule.rule.replace("<path:", "{").replace("<", "{").replace(">", "}")
            routes |= {(path, m.lower()) for m in cast(set[str], rule.methods) - {"HEAD", "OPTIONS"}}
    return routes


def test_openapi_is_served_and_describes_every_route(client: FlaskClient, app: Flask) -> None:
    served = client.get("/admin/api/openapi.json")
    assert served.status_code == 200
    assert served.mimetype == "application/json"
    doc = json.loads(served.get_data(as_text=True))
    assert doc == document()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] == version("promoter-relay")
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    routes = admin_routes(app)
    assert len(routes) == 12
    assert described == routes
    assert {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith("/admin/api")} == {
        f"{admin_bp.name}.{name}"
        for name in ("openapi", "stats", "stats_minutes", "recent_messages", "message", "user",
                     "dead_letters", "replay_one", "replay_all", "discard_one", "discard_many", "nps")
    }  # fmt: skip


def test_openapi_security_and_references(openapi: Conformance) -> None:
    doc = openapi.doc
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"
    }  # fmt: skip
    assert doc["security"] == [{"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path.endswith("openapi.json"):
                assert operation["security"] == []
                continue
            assert {"200", "401", "403", "503"} <= set(operation["responses"]), (path, method)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert openapi.resolve({"$ref": name}), name


def test_openapi_stats_schema_names_every_field_the_api_returns(
    client: FlaskClient, stores: Stores, openapi: Conformance
) -> None:
    schema = openapi.response_schema("/admin/api/stats", "get", 200)
    assert openapi.problems({"queue": {}, "surprise": 1}, schema), "the checker is strict"
    event = make_event("c1")
    accept(stores, event)
    stores.people.settle_survey(event["ref"], "cooldown", "surveyed 1 day ago", "", 7)
    stats = api(client, "stats")
    assert stats["saved"] == {"cooldown": 1}
    assert openapi.problems(stats, schema) == []
    properties = openapi.resolve(schema)["properties"]
    assert set(stats) == set(properties)
    for group in ("queue", "totals", "per_minute", "budget"):
        assert set(stats[group]) == set(openapi.resolve(properties[group])["properties"]), group


def test_checker_catches_wrong_types(openapi: Conformance) -> None:
    schema = openapi.response_schema("/admin/api/dead-letters", "get", 200)
    letter = {"id": "k:x", "source": "k", "messageId": "x", "reason": "r", "attempts": "1",
              "at": "1800000000.5", "type": "track"}  # fmt: skip
    problems = openapi.problems({"total": 1, "dead_letters": [letter]}, schema)
    assert sorted(p.split(":")[0] for p in problems) == ["$.dead_letters[0].at", "$.dead_letters[0].attempts"]


# ---------------------------------------------------------------------------------------- /metrics


def samples(client: FlaskClient, name: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    text = client.get("/metrics", headers=headers or {}).get_data(as_text=True)
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture
def metrics_app(redis_client: redis.Redis, redis_url: str) -> FlaskClient:
    return create_app(
        {"TESTING": True, **settings_for(redis_url, metrics_token="metrics-token-0123")}
    ).test_client()


def test_metrics_need_the_metrics_token_when_set(metrics_app: FlaskClient) -> None:
    assert metrics_app.get("/metrics").status_code == 401
    assert metrics_app.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert metrics_app.get("/metrics", headers=BEARER).status_code == 401, "the admin token is not it"
    ok = metrics_app.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123"})
    assert ok.status_code == 200
    assert "relay_queue" in ok.get_data(as_text=True)


def test_metrics_without_a_token_are_open_and_name_one_charset(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    [content_type] = response.headers.getlist("Content-Type")
    assert content_type.startswith("text/plain")
    assert content_type.lower().count("charset") == 1, content_type


def test_metrics_count_a_refused_request(client: FlaskClient) -> None:
    assert samples(client, "relay_requests_refused_total") == {}
    assert client.post("/v1/track", json={"userId": "u1", "event": "NPS"}).status_code == 401
    assert samples(client, "relay_requests_refused_total") == {"status=401": 1.0}


def test_metrics_count_saved_calls_and_dropped_dead_letters(client: FlaskClient, stores: Stores) -> None:
    assert samples(client, "relay_promoter_calls_saved_total") == {}
    event = make_event("c1")
    accept(stores, event)
    stores.people.settle_survey(event["ref"], "cooldown", "surveyed 1 day ago", "", 7)
    assert samples(client, "relay_promoter_calls_saved_total") == {"reason=cooldown": 1.0}
    assert samples(client, "relay_dead_letters_dropped_total") == {}
    stores.dead.discard([dead_track(stores, "d1")])
    assert samples(client, "relay_dead_letters_dropped_total") == {"why=discarded": 1.0}


def test_metrics_latency_buckets_are_cumulative(client: FlaskClient, stores: Stores) -> None:
    calls = [Call("survey", "200", 0.03), Call("survey", "200", 2.0), Call("survey", "error", 30.0)]
    for n, call in enumerate(calls):
        event = make_event(f"s{n}")
        accept(stores, event)
        outcome = "sent" if call.status == "200" else "failed"
        stores.people.settle_survey(event["ref"], outcome, "", "u1@example.com", 7, call)
    buckets = samples(client, "relay_promoter_request_duration_seconds_bucket")
    bounds = sorted(buckets, key=lambda k: float(k.split("le=")[1]))
    values = [buckets[b] for b in bounds]
    assert values == sorted(values), "cumulative"
    assert buckets["endpoint=survey,le=0.025"] == 0
    assert buckets["endpoint=survey,le=0.05"] == 1
    assert buckets["endpoint=survey,le=2.5"] == 2
    assert buckets["endpoint=survey,le=10.0"] == 2
    count = samples(client, "relay_promoter_request_duration_seconds_count")["endpoint=survey"]
    assert buckets["endpoint=survey,le=+Inf"] == count == 3
    total = samples(client, "relay_promoter_request_duration_seconds_sum")["endpoint=survey"]
    assert total == pytest.approx(32.03)
    answers = samples(client, "relay_promoter_requests_total")
    assert answers == {"endpoint=survey,status=200": 2.0, "endpoint=survey,status=error": 1.0}


# -------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(
    redis_client: redis.Redis,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RELAY_ENV", "test")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result

    return run


def test_cli_status_json(cli: Callable[..., Result], stores: Stores) -> None:
    dead_track(stores, "c1")
    accept(stores, make_event("q1"))
    status = json.loads(cli("status", "--json").stdout)
    assert status["queue"]["dead_letters"] == 1
    assert status["queue"]["queued"] == 1
    assert status["totals"]["dead"] == 1
    text = cli("status").stdout
    assert "dead_letters" in text
    assert "queue:" in text


def test_cli_lists_dead_letters_with_user_and_reason(cli: Callable[..., Result], stores: Stores) -> None:
    dead_track(stores, "c1", user="carol", reason="never identified")
    dead_track(stores, "c2", user="dan", reason=UNKNOWN_REASON, evidence=EVIDENCE)
    listing = cli("dead-letters", "list").stdout
    assert "2 dead letter(s)" in listing
    [line] = [line for line in listing.splitlines() if ref("c1") in line]
    assert "user=u:carol" in line
    assert "never identified" in line
    assert "attempts=1" in line
    assert '"cause": "timeout"' in listing
    as_json = json.loads(cli("dead-letters", "list", "--json").stdout)
    assert [d["messageId"] for d in as_json] == ["c2", "c1"]


def test_cli_replay(cli: Callable[..., Result], stores: Stores, redis_client: redis.Redis) -> None:
    dead_track(stores, "c1")
    unknown = cli("dead-letters", "replay", "nope", code=1)
    assert "nope: no such dead letter" in unknown.stdout
    both = cli("dead-letters", "replay", "c1", "missing", code=1)
    assert "c1: replayed" in both.stdout
    assert "missing: no such dead letter" in both.stdout
    assert queued_refs(redis_client) == [ref("c1")]
    assert "replayed 0 dead letter(s)" in cli("dead-letters", "replay", "--all").stdout


def test_cli_discard(cli: Callable[..., Result], stores: Stores, redis_client: redis.Redis) -> None:
    for name in ("c1", "c2", "c3"):
        dead_track(stores, name)
    assert "discarded 1 dead letter(s)" in cli("dead-letters", "discard", "c1").stdout
    missing = cli("dead-letters", "discard", "c1", code=1)
    assert "no such dead letter: c1" in missing.stdout
    assert (
        "discarded 0 dead letter(s)" in cli("dead-letters", "discard", "--all", "--older-than", "1h").stdout
    )
    assert "discarded 2 dead letter(s)" in cli("dead-letters", "discard", "--all").stdout
    assert redis_client.zcard(keys.DEAD_INDEX) == 0
    cli("dead-letters", "discard", code=2)


def test_cli_version(cli: Callable[..., Result]) -> None:
    assert cli("--version").stdout.strip() == f"promoter-relay, version {version('promoter-relay')}"
