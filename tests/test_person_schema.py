"""Person records in schema 3 (MessagePack, fields by position, worker/lua/lib/persons.lua), and the
records schema 2 wrote (JSON objects): read as they are, written back as schema 3 (issue 23).

``SCHEMA_2`` is what the code before schema 3 (commit 94d1dc6) left in Redis after four messages of
one person: an identify with ten traits and anonymousId anon-1, a newer identify with anon-2 and
another plan, an "Order Completed" and an alias of old-ada, each delivered through the sandbox at the
harness clock's time; ``SHOWN`` is what ``People.person_of`` answered then.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from tests.factories import make_event
from tests.harness import Relay
from worker import keys, scripts
from worker.settings import load

SCHEMA_2: dict[str, tuple[str, int]] = {
    "relay:email:{3ca93ad87e0bb737}": ("u:ada", 31536000),
    "relay:id:{a:anon-1}": ("u:ada", 86400),
    "relay:id:{a:anon-2}": ("u:ada", 86400),
    "relay:id:{a:old-ada}": ("u:ada", 86400),
    "relay:person:{u:ada}": (
        '{"fp":"1054750fef352a36","rev":3,"vs":["0mx1o47400f2fdb","0mx1q9cw0eba5c0"],"srev":3,'
        '"f":{"a:phone":["+44 20 7946 0958",1],"first_name":["Ada",1],"a:country":["GB",1],'
        '"email":["Ada@Example.com",2],"a:created_at":["2024-03-14T09:26:53Z",1],"a:city":["London",1],'
        '"a:plan":["team",2],"last_name":["Lovelace",1],"a:title":["Countess",1],'
        '"a:company":["Analytical Engines",1]},"sf":"Ada","se":"Ada@Example.com",'
        '"ids":{"a:old-ada":1800000000,"u:old-ada":1800000000,"a:anon-2":1800000000,'
        '"a:anon-1":1800000000},"sl":"Lovelace",'
        '"o":{"A-1":["0mx1seio0f3d41e",4250,"EUR","2026-11-29T12:00:00.000Z"]},"cid":"1"}',
        31536000,
    ),
    "relay:person:{u:old-ada}": ('{"into":"u:ada"}', 31536000),
}
SHOWN: dict[str, Any] = {
    "person": "u:ada",
    "identities": ["a:anon-1", "a:anon-2", "a:old-ada", "u:ada", "u:old-ada"],
    "contact": {
        "last_name": "Lovelace", "first_name": "Ada", "country": "GB", "email": "Ada@Example.com",
        "created_at": "2024-03-14T09:26:53Z", "city": "London", "phone": "+44 20 7946 0958",
        "plan": "team", "title": "Countess", "company": "Analytical Engines",
    },
    "order_attributes": {
        "last_order_currency": "EUR", "last_order_date": "2026-11-29T12:00:00.000Z", "last_order_id": "A-1",
        "last_order_total": "42.50", "lifetime_revenue_eur": "42.50", "order_count": 1,
    },
    "at_promoter": {"first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Example.com"},
    "contact_id": "1",
    "known_to_promoter": True,
    "refused": None,
    "orders": 1,
    "waiting_for_update": [],
}  # fmt: skip
TRAITS = {"email": "Ada@Example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "team",
          "company": "Analytical Engines", "city": "London", "country": "GB", "phone": "+44 20 7946 0958",
          "title": "Countess", "created_at": "2024-03-14T09:26:53Z"}  # fmt: skip


def written_by_schema_2(client: redis.Redis) -> None:
    for name, (value, ttl) in SCHEMA_2.items():
        client.set(name, value, ex=ttl)


def order(message_id: str, at: str, order_id: str, total: float) -> Any:
    properties = {"order_id": order_id, "total": total, "currency": "EUR"}
    return make_event(
        message_id, "track", "ada", timestamp=at, event="Order Completed", properties=properties
    )


def run(relay: Relay, *events: Any) -> None:
    for event in events:
        relay.send(event)
        relay.drain()


def test_a_schema_2_person_reads_the_same_and_keeps_its_versions_fingerprint_and_orders(relay: Relay) -> None:
    written_by_schema_2(relay.redis)
    people = relay.stores.people
    assert people.person_of("u:ada") == SHOWN
    assert people.person_of("u:old-ada") == SHOWN
    assert people.user_of_email("ada@example.com") == "ada"

    # Promoter has this contact (the fingerprint came along): the same traits send nothing.
    same = make_event("s3-same", "identify", "ada", timestamp="2026-11-30T10:00:00.000Z", traits=TRAITS)
    # Older than the identify that set the plan to 'team' (the versions came along): it loses.
    older = make_event("s3-older", "identify", "ada", timestamp="2026-11-29T10:30:00.000Z",
                       traits={"email": "Ada@Example.com", "plan": "pro"})  # fmt: skip
    # Order A-1 again: counted once.
    again = order("s3-order", "2026-11-30T12:00:00.000Z", "A-1", 42.5)
    run(relay, same, older, again)
    assert relay.upserts() == []
    assert [relay.state(e["ref"]) for e in (same, older)] == ["skipped", "skipped"]
    assert relay.record(again["ref"])["duplicate_order"] == "1"

    first = relay.redis.eval("return string.byte(redis.call('GET', KEYS[1]))", 1, keys.person("u:ada"))
    assert first != ord("{"), "written back as schema 3 (MessagePack, not JSON)"
    assert people.person_of("u:ada") == SHOWN
    assert relay.redis.ttl(keys.person_anonymous("u:ada")) == 86400

    # A new order goes out with both orders counted, from the converted record.
    second = order("s3-order2", "2026-11-30T13:00:00.000Z", "A-2", 10)
    run(relay, second)
    [upsert] = relay.upserts()
    assert upsert["email"] == "Ada@Example.com"
    assert upsert["attributes"]["order_count"] == "2"
    assert upsert["attributes"]["lifetime_revenue_eur"] == "52.50"
    assert upsert["attributes"]["plan"] == "team"

    # The email index moved to its bucket: the schema 2 key may expire.
    relay.redis.delete("relay:email:{3ca93ad87e0bb737}")
    assert people.user_of_email("ada@example.com") == "ada"


def test_anonymous_ids_leave_the_person_when_their_links_expire(relay: Relay) -> None:
    run(relay, make_event("s3-a", "identify", "bea", anonymous="anon-b", traits={"email": "bea@example.com"}))
    assert relay.stores.people.person_of("u:bea")["identities"] == ["a:anon-b", "u:bea"]  # type: ignore[index]
    before = relay.redis.memory_usage(keys.person("u:bea"))
    relay.clock.advance(86400 + 1)
    relay.redis.delete(keys.person_anonymous("u:bea"), keys.identity("a:anon-b"))  # as their TTL does
    assert relay.stores.people.person_of("u:bea")["identities"] == ["u:bea"]  # type: ignore[index]
    assert relay.redis.memory_usage(keys.person("u:bea")) == before, "the record never held them"


ROUND_TRIP = """
local record = cjson.decode(ARGV[2])
local packed = encode_person(record)
NAME_CODE, CODE_NAME = {}, {}
return {string.sub(packed, 1, 1) == '{' and 'json' or 'packed', cjson.encode(decode_person(packed))}
"""


def round_trip(client: redis.Redis, record: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    settings = load({}, redis_url="redis://unused", environment="test", **overrides)
    library = "".join(scripts.source(f"lib/{part}") for part in scripts.LIBRARY)
    kind, decoded = client.eval(
        scripts.head(settings) + library + ROUND_TRIP, 0, "1800000000", json.dumps(record)
    )
    assert kind == "packed"
    back: dict[str, Any] = json.loads(decoded)
    return back


@pytest.mark.parametrize(
    "record",
    [
        {"into": "u:ada"},
        {"f": {}, "vs": [], "rev": 0},
        {"f": {"email": ["a@example.com", 1]}, "vs": ["000000000000000"], "rev": 0},
        {
            "f": {"email": ["a@example.com", 2], "first_name": ["A", 1], "a:plan": ["pro", 1],
                  "a:x y": ["", 2]},
            "vs": ["0mx1o47400f2fdb", "0mx1q9cw0eba5c0"], "rev": 7, "srev": 5, "fp": "",
            "se": "old@example.com", "sf": "A", "sl": "", "cid": "00123",
            "ids": {"u:old": 1800000000.5, "u:older": 1799999999},
            "o": {"A-1": ["0mx1seio0f3d41e", -4250, "EUR", "2026-11-29T12:00:00.000Z"],
                  "9": ["0mx1seio0f3d41f", 0, "USD", "x"]},
            "lease": "ref#2|1800000030.5", "refused": "identify r was refused by Promoter: 400",
            "refused_by": "r",
        },
        {"f": {"last_name": ["L", 1]}, "vs": ["000000000000000"], "rev": 1, "fp": "0123456789abcdef",
         "cid": "9007199254740", "se": "s@example.com"},
    ],
)  # fmt: skip
def test_a_record_packs_and_unpacks_to_itself(redis_client: redis.Redis, record: dict[str, Any]) -> None:
    back = round_trip(redis_client, record)
    if "f" in record and not record["f"]:
        assert back["f"] in ({}, [])  # cjson writes an empty table as {} or []: both are none
        back["f"] = {}
    if back.get("vs") == {}:
        back["vs"] = []
    assert back == record


def test_past_max_names_an_attribute_is_stored_by_its_name(redis_client: redis.Redis) -> None:
    redis_client.hset(keys.NAMES, mapping={f"n:{i}": i for i in range(2 * scripts.MAX_NAMES)})
    record = {"f": {"a:brand new": ["v", 1]}, "vs": ["000000000000000"], "rev": 1}
    assert round_trip(redis_client, record) == record
    assert not redis_client.hexists(keys.NAMES, "n:brand new")
