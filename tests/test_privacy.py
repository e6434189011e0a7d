"""Personal data (issue 21, DESIGN.md "Personal data"): what a stored event keeps, suppression after a
forget, and the forget itself, over a real Redis and the Promoter sandbox."""

from __future__ import annotations

import json
from typing import Any

import redis
from flask.testing import FlaskClient

from app.admission import minimal
from tests.conftest import basic
from tests.factories import make_event, queued_events
from tests.harness import Relay
from worker.mapping import NO_FILTER, TraitFilter

CONTEXT: dict[str, Any] = {
    "ip": "203.0.113.77",
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Safari/605.1.15",
    "locale": "en-GB",
    "timezone": "Europe/London",
    "library": {"name": "analytics.js", "version": "next-1.64.0"},
    "page": {
        "path": "/account/orders",
        "referrer": "https://news.example.org/story-about-ada",
        "search": "?utm_source=newsletter",
        "title": "Your orders",
        "url": "https://shop.example.com/account/orders?utm_source=newsletter",
    },
    "campaign": {"name": "winter-sale", "source": "newsletter", "medium": "email", "content": "ada-42"},
    "device": {"id": "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB", "model": "iPhone7,2"},
    "os": {"name": "iPhone OS", "version": "8.1.3"},
    "location": {"city": "London", "latitude": 51.5, "longitude": -0.12},
    "traits": {"email": "ada.context@example.com", "phone": "+44 20 7946 0000"},
}

CONTEXT_VALUES = ("203.0.113.77", "Mozilla/5.0", "analytics.js", "/account/orders", "winter-sale",
                  "B5372DB0", "iPhone", "London", "ada.context@example.com", "+44 20 7946 0000")  # fmt: skip


def segment(client: FlaskClient, kind: str, **message: Any) -> None:
    body = {"type": kind, "context": CONTEXT, "timestamp": "2026-12-01T10:00:00.000Z", **message}
    response = client.post(f"/v1/{kind}", json=body, headers=basic())
    assert response.status_code == 200, response.get_json()


def test_a_stored_event_keeps_only_what_delivery_needs(
    client: FlaskClient, redis_client: redis.Redis, relay: Relay
) -> None:
    """A Segment identify and track with a full analytics.js context: nothing of the context is stored,
    a track keeps no traits, and delivery still makes the contact and the survey."""
    segment(client, "identify", messageId="m-id", userId="ada", anonymousId="anon-ada",
            traits={"email": "ada@example.com", "firstName": "Ada", "plan": "pro"})  # fmt: skip
    segment(client, "track", messageId="m-track", userId="ada", event="NPS",
            properties={"order_id": "o-1", "colour": "teal"})  # fmt: skip
    segment(client, "alias", messageId="m-alias", userId="ada", previousId="ada-old", anonymousId="anon-ada")
    by_type = {event["type"]: event for event in queued_events(redis_client)}
    identify, track, alias = by_type["identify"], by_type["track"], by_type["alias"]
    stored = json.dumps([identify, track, alias])
    for value in CONTEXT_VALUES:
        assert value not in stored, value
    assert identify["traits"] == {"email": "ada@example.com", "firstName": "Ada", "plan": "pro"}
    assert track["traits"] == {}
    assert track["properties"] == {"order_id": "o-1", "colour": "teal"}
    assert alias["anonymousId"] is None
    assert alias["previousId"] == "ada-old"
    relay.drain()
    assert relay.contact("ada@example.com")["first_name"] == "Ada"
    assert [s["contact"]["email"] for s in relay.surveys()] == ["ada@example.com"]


def test_an_order_that_is_no_survey_event_keeps_only_its_amounts() -> None:
    properties = {"order_id": "o-9", "total": 12.5, "currency": "eur", "coupon": "ADA-VIP",
                  "shipping_address": "1 Lane",
                  "products": [{"name": "Gift", "price": 12.5, "quantity": 1, "sku": "S-1"}]}  # fmt: skip
    event = make_event("m-order", properties=properties)
    kept = minimal(event, survey=False, order=True, only=NO_FILTER)
    assert kept["properties"] == {"order_id": "o-9", "total": 12.5, "currency": "eur",
                                  "products": [{"price": 12.5, "quantity": 1}]}  # fmt: skip


def test_an_identify_keeps_no_trait_that_traits_deny_keeps_from_promoter() -> None:
    traits = {"email": "a@example.com", "lastName": "L", "ssn": "123",
              "address": {"city": "Paris", "street": "1 Rue"}}  # fmt: skip
    event = make_event("m-id", "identify", traits=traits)
    kept = minimal(event, survey=False, order=False, only=TraitFilter(deny=("ssn", "address_street")))
    assert kept["traits"] == {
        "email": "a@example.com",
        "lastName": "L",
        "address": {"city": "Paris", "street": "1 Rue"},
    }
