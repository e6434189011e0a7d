"""Personal data (issue 21, DESIGN.md "Personal data"): what a stored event keeps, suppression after a
forget, and the forget itself, over a real Redis and the Promoter sandbox."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

from app import create_app
from app.admission import minimal
from app.cli import main
from app.devtools.sandbox import SandboxServer
from tests.conftest import ADMIN_TOKEN, SANDBOX_KEY, Processes, basic, ref, settings_for, wait_until
from tests.factories import bytes_client, make_event, queued_events, stored_values, texts
from tests.harness import Relay, make_relay
from tests.test_admin import Conformance, document
from worker import keys, taskmessages
from worker.forget import REMOVE_TASK
from worker.mapping import NO_FILTER, TraitFilter
from worker.tasks import remove_contacts

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


# ------------------------------------------------------------------------------- forget, suppression

SUPPRESSION_KEY = "test-suppression-key-0123456789"
ADA = "ada-7781"
LEGACY = "ada-legacy-12"
ANONYMOUS = ("anon-laptop-ada", "anon-phone-ada")
ADA_TRAITS = {"email": "ada.lovelace@example.com", "firstName": "Augusta", "lastName": "Lovelace-King",
              "plan": "analytical-engine-pro", "address": {"city": "Marylebone"}}  # fmt: skip
# Everything that says who Ada is: none of it may be left anywhere in Redis after the forget.
ADA_NEEDLES = (ADA, LEGACY, *ANONYMOUS, "ada.lovelace@example.com", "ada.old@example.com",
               "ada.new@example.com", "Augusta", "Lovelace-King", "analytical-engine-pro", "Marylebone",
               "ord-ada-991")  # fmt: skip


def traces(client: redis.Redis, needles: tuple[str, ...]) -> list[str]:
    """Every key whose name or value (string, hash, list, set, sorted set) holds one of ``needles``."""
    raw = bytes_client(client)
    lowered = [needle.lower().encode() for needle in needles]
    found = []
    for key in raw.scan_iter(count=1000):
        text = (key + b"\n" + b"\n".join(stored_values(raw, key))).lower()
        found += [
            f"{key.decode(errors='replace')}: {needle.decode()}" for needle in lowered if needle in text
        ]
    raw.close()
    return found


def ada_identify(relay: Relay, message_id: str, anonymous: str | None = None, **traits: Any) -> None:
    relay.send(make_event(message_id, "identify", ADA, anonymous=anonymous, traits={**ADA_TRAITS, **traits}))


def test_a_forgotten_person_leaves_no_trace_in_redis_and_is_suppressed(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer
) -> None:
    """Ada: two anonymousIds, an alias of an older userId, traits, an order, a survey, a dead letter,
    a held track and an identify whose Promoter call is stalled while she is forgotten. After the
    forget (and after the stalled call returns), SCAN finds nothing of her anywhere in Redis (Celery's
    queues included): only the keyed suppression markers. Her later events are acknowledged, not
    delivered, counted as suppressed."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    ada_identify(relay, "ada-1", anonymous=ANONYMOUS[0])
    relay.send(make_event("legacy-1", "identify", LEGACY, traits={"email": "ada.old@example.com"}))
    relay.send(make_event("ada-alias", "alias", ADA, previousId=LEGACY))
    relay.send(make_event("ada-order", "track", ADA, event="Order Completed",
                          properties={"order_id": "ord-ada-991", "total": 18.43}))  # fmt: skip
    relay.drain()
    assert relay.surveys()
    sandbox.state.configure({"fail_next": [400]})
    ada_identify(relay, "ada-refused", plan="analytical-engine-pro", colour="Marylebone teal")
    relay.drain()
    assert relay.state(ref("ada-refused")) == "dead"
    # An email change whose call stalls, and a track held behind it.
    ada_identify(relay, "ada-new-email", email="ada.new@example.com")
    relay.send(make_event("ada-held", "track", ADA, anonymous=ANONYMOUS[1]))
    sandbox.state.configure({"delay_next": [2.0]})
    stalled = threading.Thread(target=relay.step)
    stalled.start()
    wait_until(lambda: [c for c in sandbox.state.calls("/contacts/") if c["status"] is None])
    assert relay.step() == ref("ada-held")
    assert relay.state(ref("ada-held")) == "held"
    assert traces(redis_client, ADA_NEEDLES)  # the scan can fail

    result = relay.stores.forgetter.forget([ADA])
    stalled.join()
    relay.drain()

    assert result.persons == 1
    assert result.messages >= 6
    assert traces(redis_client, ADA_NEEDLES) == []
    assert [str(k) for k in redis_client.scan_iter(match="relay:suppressed:*")]
    for message in ("ada-1", "ada-order", "ada-refused", "ada-new-email", "ada-held"):
        assert relay.state(ref(message)) == "forgotten", message

    calls = len(sandbox.state.calls())
    app = create_app({"TESTING": True, **settings_for(redis_url, suppression_key=SUPPRESSION_KEY)})
    client = app.test_client()
    later = (("identify", {"userId": ADA, "traits": ADA_TRAITS}),
             ("track", {"anonymousId": ANONYMOUS[1], "event": "NPS"}),
             ("identify", {"userId": "someone", "traits": {"email": "ada.new@example.com"}}))  # fmt: skip
    for kind, body in later:
        response = client.post(f"/v1/{kind}", json=body, headers=basic())
        assert response.status_code == 200
        assert response.get_json() == {"success": True}
    relay.drain()
    assert len(sandbox.state.calls()) == calls
    assert traces(redis_client, ADA_NEEDLES) == []
    stats = client.get("/admin/api/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
    assert stats["suppressed"] == {"identify": 2, "track": 1}


# ------------------------------------------------------------------------------ the three ways in

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def known_ada(relay: Relay) -> None:
    """Ada, known to Promoter (contact in the sandbox), with a held track of her anonymous visitor; on
    the wall clock, which the API and the CLI read."""
    relay.clock.now = time.time()
    ada_identify(relay, "ada-1", anonymous=ANONYMOUS[0])
    relay.drain()
    relay.send(make_event("visitor", "track", None, anonymous="anon-never-identified"))
    relay.drain()
    assert relay.contact("ada.lovelace@example.com")


@pytest.fixture
def privacy_client(redis_url: str, redis_client: redis.Redis) -> FlaskClient:
    return create_app(
        {"TESTING": True, **settings_for(redis_url, suppression_key=SUPPRESSION_KEY)}
    ).test_client()


def test_the_admin_api_forgets_and_removes_the_contact_at_promoter_through_a_429(
    privacy_client: FlaskClient, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY, retry_base_seconds=0.1)
    known_ada(relay)
    openapi = Conformance(document())
    response = privacy_client.post("/admin/api/people/forget", headers=BEARER,
                                   json={"userIds": [ADA, "ghost"], "atPromoter": True})  # fmt: skip
    assert response.status_code == 202
    started = response.get_json()
    openapi.check(started, "/admin/api/people/forget", "post", 202)
    assert started["unknown"] == {"userIds": ["ghost"], "emails": []}
    assert (started["found"], started["persons"], started["suppressed"]) == (True, 1, True)
    assert response.headers["Location"] == started["status"]
    job = privacy_client.get(started["status"], headers=BEARER).get_json()
    openapi.check(job, "/admin/api/people/forget/{job}")
    assert (job["state"], job["atPromoter"]["state"], job["unknown"]) == ("running", "pending", 1)
    [queued] = texts(redis_client.lrange("relay.control", 0, -1))
    assert json.loads(queued)["headers"]["task"] == REMOVE_TASK
    assert taskmessages.ref_of(queued) == started["job"]

    sandbox.state.configure({"throttle_next": 1, "retry_after": 1})
    first = remove_contacts(relay.runtime, started["job"], 1)
    assert not first.done
    assert first.retry_in == 1
    assert relay.stores.budget.wait_seconds()[0] > 0, "a 429 pauses every worker"
    relay.clock.advance(2)
    assert remove_contacts(relay.runtime, started["job"], 2).done

    assert [c["status"] for c in sandbox.state.calls("/contacts/remove/")] == [429, 200]
    assert not [c for c in sandbox.state.contacts() if c["email"] == "ada.lovelace@example.com"]
    job = privacy_client.get(started["status"], headers=BEARER).get_json()
    openapi.check(job, "/admin/api/people/forget/{job}")
    assert job["state"] == "done"
    assert job["atPromoter"] == {"state": "done", "removed": 1, "notFound": 0, "attempts": 2,
                                 "detail": "contacts removed"}  # fmt: skip
    assert traces(redis_client, ADA_NEEDLES) == []


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (None, {"_schema": ['Expected {"userIds": [...], "emails": [...], "atPromoter": false}.']}),
        ({}, {"userIds": ["Give at least one userId or email."]}),
        ({"userIds": "ada"}, {"userIds": ["Not a valid list."]}),
        (
            {"userIds": ["ada", 7, " "]},
            {"userIds": {"1": ["Not a valid string."], "2": ["Not a valid string."]}},
        ),
        ({"emails": ["not-an-email"]}, {"emails": {"0": ["Not a valid email address."]}}),
        ({"userIds": ["a"], "atPromoter": "yes"}, {"atPromoter": ["Not a valid boolean."]}),
        ({"userIds": ["a"], "user_ids": ["b"]}, {"user_ids": ["Unknown field."]}),
        ({"userIds": ["x"] * 101}, {"userIds": ["At most 100 at a time."]}),
    ],
)
def test_a_bad_forget_request_is_400_with_field_errors(
    privacy_client: FlaskClient, body: Any, errors: dict[str, Any]
) -> None:
    response = privacy_client.post("/admin/api/people/forget", headers=BEARER, json=body)
    assert response.status_code == 400
    assert response.get_json() == {"error": "Invalid forget request.", "errors": errors}
    Conformance(document()).check(response.get_json(), "/admin/api/people/forget", "post", 400)


def test_forgetting_nobody_says_so_and_an_unknown_job_is_404(privacy_client: FlaskClient) -> None:
    response = privacy_client.post("/admin/api/people/forget", headers=BEARER,
                                   json={"userIds": ["ghost"], "emails": ["ghost@example.com"]})  # fmt: skip
    assert response.status_code == 202
    answer = response.get_json()
    assert answer["found"] is False
    assert "nothing found for 2 of the ids given" in answer["detail"]
    job = privacy_client.get(answer["status"], headers=BEARER).get_json()
    assert (job["persons"], job["unknown"], job["atPromoter"]["state"]) == (0, 2, "")
    missing = privacy_client.get("/admin/api/people/forget/nope", headers=BEARER)
    assert missing.status_code == 404
    assert "No forget job 'nope'" in missing.get_json()["error"]


@pytest.fixture
def forget_cli(redis_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    env = {"REDIS_URL": redis_url, "RELAY_ENV": "test", "SUPPRESSION_KEY": SUPPRESSION_KEY,
           "PROMOTER_API_URL": sandbox.url, "PROMOTER_API_KEY": SANDBOX_KEY}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def test_the_cli_asks_first_and_says_what_it_found(
    forget_cli: CliRunner, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    known_ada(relay)
    declined = forget_cli.invoke(main, ["forget", ADA], input="n\n")
    assert declined.exit_code == 1
    assert "Erase everything the relay holds about the 1 id(s) given?" in declined.output
    assert "Aborted" in declined.output
    assert traces(redis_client, ADA_NEEDLES)

    done = forget_cli.invoke(main, ["forget", ADA, "ghost", "--email", "nobody@example.com"], input="y\n")
    assert done.exit_code == 1, done.output
    assert "erased 1 person(s)" in done.output
    assert "nothing found for user id 'ghost'" in done.output
    assert "nothing found for email 'nobody@example.com'" in done.output
    assert "later events naming them are dropped for 30 day(s)" in done.output
    assert traces(redis_client, ADA_NEEDLES) == []
    assert "ada.lovelace" not in done.output


def test_the_cli_removes_the_contact_at_promoter_waiting_out_a_429(
    forget_cli: CliRunner, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    known_ada(relay)
    sandbox.state.configure({"throttle_next": 1, "retry_after": 1})
    result = forget_cli.invoke(main, ["forget", ADA, "--at-promoter", "--yes"])
    assert result.exit_code == 0, result.output
    assert "again in 1.0s" in result.output
    assert "at Promoter: done (1 removed, 0 not there)" in result.output
    assert [c["status"] for c in sandbox.state.calls("/contacts/remove/")] == [429, 200]
    assert not sandbox.state.contacts()
    assert traces(redis_client, ADA_NEEDLES) == []


def test_without_a_key_a_forget_erases_but_suppresses_nothing(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox)
    known_ada(relay)
    result = relay.stores.forgetter.forget([ADA])
    assert (result.persons, result.suppressed) == (1, False)
    assert traces(redis_client, ADA_NEEDLES) == []
    assert not list(redis_client.scan_iter(match="relay:suppressed:*"))
    ada_identify(relay, "ada-again")
    relay.drain()
    assert relay.state(ref("ada-again")) == "delivered"


def test_info_logs_carry_no_email_name_or_trait_value(
    redis_client: redis.Redis,
    sandbox: SandboxServer,
    privacy_client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ingest, delivery (contact, survey, a refusal, a retry), suppression and forget, logged at INFO:
    message ids and refs, never an email, a name or a trait value."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    with caplog.at_level(logging.INFO):
        for kind, body in (("identify", {"userId": ADA, "traits": ADA_TRAITS}),
                           ("track", {"userId": ADA, "event": "Order Completed",
                                      "properties": {"order_id": "ord-ada-991", "total": 3}})):  # fmt: skip
            assert privacy_client.post(f"/v1/{kind}", json=body, headers=basic()).status_code == 200
        relay.drain()
        sandbox.state.configure({"fail_next": [503, 400]})
        ada_identify(relay, "ada-retried", plan="analytical-engine-max", colour="Marylebone teal")
        relay.drain()
        relay.later()
        privacy_client.post("/admin/api/people/forget", headers=BEARER, json={"userIds": [ADA]})
        privacy_client.post("/v1/identify", json={"userId": ADA, "traits": ADA_TRAITS}, headers=basic())
    logged = "\n".join(r.getMessage() + " " + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "suppressed" in logged, "the paths were not walked"
    assert "dead" in logged
    for needle in (
        "ada.lovelace@example.com",
        "Augusta",
        "Lovelace-King",
        "analytical-engine-pro",
        "Marylebone",
    ):
        assert needle.lower() not in logged.lower(), needle


def test_the_dashboard_offers_forget_with_a_confirmation_and_masks_emails(
    privacy_client: FlaskClient,
) -> None:
    """The page's script (no browser here: tests/test_dashboard_browser.py drives one where Chromium is
    installed): a "Forget this person" button on the person and the message views, asking first, posting
    to the forget API; emails shown masked unless "Show emails" is ticked."""
    page = privacy_client.get("/admin/").get_data(as_text=True)
    for panel in ("user", "detail"):
        assert f'id="{panel}-forget">Forget this person</button>' in page
        assert f'id="{panel}-forget-promoter"' in page
        assert (
            f'$("{panel}-forget").addEventListener("click", () => act(() => forgetPerson("{panel}")));'
            in page
        )
    script = page[page.index("async function forgetPerson") :]
    script = script[: script.index("\n}\n")]
    assert script.index("window.confirm(question)") < script.index('post("people/forget"')
    assert 'if (!window.confirm(question)) { notify("Nothing forgotten."); return; }' in script
    assert 'id="show-emails"' in page
    assert (
        'function text(value) { return value === undefined || value === null ? "" : masked(String(value)); }'
        in page
    )
    assert "masked(JSON.stringify(body.event, null, 2))" in page


@pytest.mark.integration
def test_a_worker_removes_the_contact_at_promoter_for_an_api_forget(
    redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer, processes: Processes
) -> None:
    """The API queues the removal on the control queue; a real Celery worker makes it, a 429 retried."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    known_ada(relay)
    settings = settings_for(redis_url, suppression_key=SUPPRESSION_KEY)
    client = create_app({"TESTING": True, **settings}).test_client()
    sandbox.state.configure({"throttle_next": 1, "retry_after": 1})
    body = {"userIds": [ADA], "atPromoter": True}
    response = client.post("/admin/api/people/forget", headers=BEARER, json=body)
    assert response.status_code == 202
    processes.env.update(SUPPRESSION_KEY=SUPPRESSION_KEY)
    processes.worker()
    status = response.get_json()["status"]
    job = wait_until(lambda: (j := client.get(status, headers=BEARER).get_json())["state"] != "running" and j)
    assert job["atPromoter"]["state"] == "done", job
    assert (job["atPromoter"]["removed"], job["atPromoter"]["attempts"]) == (1, 2)
    assert [c["status"] for c in sandbox.state.calls("/contacts/remove/")] == [429, 200]
    assert traces(redis_client, ADA_NEEDLES) == []


def test_a_forgotten_visitors_device_suppresses_only_its_anonymous_events(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """Ada is forgotten after using the family laptop; Bob, signed in on it later, is not suppressed;
    anonymous events from it are (they would be Ada's)."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    ada_identify(relay, "ada-1", anonymous="family-laptop")
    relay.drain()
    relay.stores.forgetter.forget([ADA])
    bob = make_event(
        "bob-1", "identify", "bob", anonymous="family-laptop", traits={"email": "bob@example.com"}
    )
    assert relay.send(bob, make_event("visitor", "track", None, anonymous="family-laptop")) == [
        ref("bob-1"),
        "!",
    ]
    relay.drain()
    assert relay.state(ref("bob-1")) == "delivered"


def test_a_forget_reaches_a_device_whose_link_to_the_person_expired(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """The laptop Ada signed in on is no longer linked to her (ANONYMOUS_ID_TTL_SECONDS passed), and
    sends anonymous events: the forget of her userId still finds them, and suppresses the laptop's
    anonymous events."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY, anonymous_id_ttl_seconds=600)
    ada_identify(relay, "ada-1", anonymous="ada-laptop")
    relay.drain()
    relay.clock.advance(3600)
    redis_client.delete(keys.identity("a:ada-laptop"))  # expired, as Redis would have it by now
    ada_identify(relay, "ada-2", anonymous="ada-phone")  # her record lets go of the laptop
    relay.drain()
    relay.send(make_event("browsing", "track", None, anonymous="ada-laptop",
                          properties={"viewed": "analytical-engine-pro"}))  # fmt: skip
    relay.drain()
    assert relay.state(ref("browsing")) == "held"
    assert "a:ada-laptop" not in relay.stores.people.person_of("u:" + ADA)["identities"]  # type: ignore[index]
    relay.stores.forgetter.forget([ADA])
    assert relay.state(ref("browsing")) == "forgotten"
    assert traces(redis_client, ("ada-laptop", "analytical-engine-pro", ADA)) == []
    assert relay.send(make_event("later", "track", None, anonymous="ada-laptop")) == ["!"]


def test_an_identitys_indexes_outlive_every_record_they_lead_to_and_no_longer(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """The indexes a forget finds a person's messages and devices through are personal data too: they
    last as long as the longest-kept status record filed under them (a dead letter's, when there is
    one), then go, and leave the person one key for the rest of the year (issue 23)."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    settings = relay.runtime.settings
    indexes = (keys.messages("u:" + ADA), keys.devices("u:" + ADA))

    def expiries() -> tuple[list[int], list[int]]:
        refs = [str(r) for r in redis_client.zrange(indexes[0], 0, -1) if r]  # '': the index's end
        return [redis_client.ttl(i) for i in indexes], [redis_client.ttl(keys.message(r)) for r in refs]

    ada_identify(relay, "ada-1", anonymous="ada-laptop")
    relay.drain()
    relay.clock.advance(3600)
    relay.send(make_event("ada-nps", "track", ADA))
    relay.drain()
    kept, records = expiries()
    assert len(records) == 2
    assert all(max(records) <= ttl <= settings.status_ttl_seconds for ttl in kept), (kept, records)

    sandbox.state.configure({"fail_next": [400]})
    ada_identify(relay, "ada-refused", plan="basic")
    relay.drain()
    assert relay.state(ref("ada-refused")) == "dead"
    kept, records = expiries()
    assert max(records) > settings.status_ttl_seconds
    assert all(max(records) <= ttl <= settings.dead_letter_ttl_seconds for ttl in kept), (kept, records)

    redis_client.delete(keys.message(ref("ada-refused")))  # the dead letter expired, and the indexes:
    for index in indexes:
        redis_client.delete(index)
    assert relay.send(make_event("ada-2", "identify", ADA, anonymous="ada-phone")) == [ref("ada-2")]
    relay.drain()
    kept, records = expiries()
    assert all(max(records) <= ttl <= settings.status_ttl_seconds for ttl in kept), (kept, records)


@pytest.mark.parametrize("written_before", [False, True], ids=["index", "index of the release before"])
def test_a_forget_reaches_a_devices_dead_letter_from_before_the_person_signed_in_on_it(
    redis_client: redis.Redis, sandbox: SandboxServer, written_before: bool
) -> None:
    """A laptop's anonymous track is dead-lettered (no identify came within the anonymous hold), then
    Ada signs in on it. Her own messages expire after STATUS_TTL_SECONDS; the laptop's dead letter is
    kept for DEAD_LETTER_TTL_SECONDS, and a forget of Ada in between still erases it (simulator seed 31
    found the device index expiring first)."""
    relay = make_relay(
        redis_client,
        sandbox,
        suppression_key=SUPPRESSION_KEY,
        anonymous_hold_ttl_seconds=600,
        anonymous_hold_expiry="dead-letter",
    )
    relay.send(make_event("laptop-nps", "track", None, anonymous="ada-laptop"))
    relay.drain()
    relay.clock.advance(700)
    relay.stores.holds.expire()
    assert relay.state(ref("laptop-nps")) == "dead"
    if written_before:  # the release before kept no end in the index, and a 30-day TTL
        redis_client.zrem(keys.messages("a:ada-laptop"), "")
        redis_client.expire(keys.messages("a:ada-laptop"), 30 * 86400)
    ada_identify(relay, "ada-1", anonymous="ada-laptop")
    relay.drain()
    status_ttl = relay.runtime.settings.status_ttl_seconds
    assert redis_client.ttl(keys.devices("u:" + ADA)) > status_ttl  # as long as the dead letter
    for key in redis_client.scan_iter(match="relay:*"):  # Ada's own records expire, as Redis would
        if 0 < redis_client.ttl(key) <= status_ttl and not str(key).startswith("relay:person:"):
            redis_client.delete(key)
    relay.clock.advance(status_ttl + 60)
    assert relay.state(ref("laptop-nps")) == "dead"
    relay.stores.forgetter.forget([ADA])
    assert relay.state(ref("laptop-nps")) == "forgotten"
    assert traces(redis_client, ("ada-laptop", ADA)) == []


def expire_indexes(client: redis.Redis, now: float) -> None:
    """Delete the indexes whose end (member '', in the scripts' clock) has passed, as Redis would."""
    for pattern in ("relay:id:*:msgs", "relay:id:*:devices"):
        for key in client.scan_iter(match=pattern):
            end = client.zscore(key, "")
            if end is not None and end <= now:
                client.delete(key)


def test_a_shared_device_keeps_every_user_it_names_reachable_for_a_forget(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """Ada signs in on the family PC, Bob two days later. The PC's own index names them both and
    lasts three days from Bob's sign-in; Ada's index of her devices must last as long, or a forget of
    Ada after her own messages expired misses the PC, and its index keeps her userId."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    ada_identify(relay, "ada-1", anonymous="family-pc")
    relay.drain()
    relay.clock.advance(2 * 86400)
    relay.send(
        make_event("bob-1", "identify", "bob", anonymous="family-pc", traits={"email": "bob@example.com"})
    )
    relay.drain()
    pc_end = redis_client.zscore(keys.devices("a:family-pc"), "")
    assert pc_end is not None
    assert (redis_client.zscore(keys.devices("u:" + ADA), "") or 0) >= pc_end
    relay.clock.advance(1.5 * 86400)
    expire_indexes(redis_client, relay.clock())
    redis_client.delete(keys.message(ref("ada-1")), keys.history(ref("ada-1")))  # expired with them
    relay.stores.forgetter.forget([ADA])
    assert traces(redis_client, (ADA,)) == []


def test_a_discarded_dead_letter_keeps_its_index_as_long_as_its_record(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """Discarding a dead letter near the end of its 30 days gives its record STATUS_TTL_SECONDS more:
    the index a forget finds it through must last as long."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY)
    sandbox.state.configure({"fail_next": [400]})
    ada_identify(relay, "ada-refused")
    relay.drain()
    assert relay.state(ref("ada-refused")) == "dead"
    relay.clock.advance(29 * 86400)
    assert relay.stores.dead.discard([ref("ada-refused")]) == 1
    status_ttl = relay.runtime.settings.status_ttl_seconds
    assert (redis_client.zscore(keys.messages("u:" + ADA), "") or 0) >= relay.clock() + status_ttl


def test_a_survey_call_in_flight_during_the_forget_writes_no_cooldown_marker_back(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """With SURVEY_COOLDOWN_DAYS, a survey claim writes a marker named by the email; a call that returns
    after the forget must not write it again (tests/sim/mutations.py 'forgotten-survey-settles')."""
    relay = make_relay(redis_client, sandbox, suppression_key=SUPPRESSION_KEY, survey_cooldown_days=30)
    ada_identify(relay, "ada-1")
    relay.drain()
    relay.send(make_event("ada-nps", "track", ADA))
    sandbox.state.configure({"delay_next": [1.5]})
    stalled = threading.Thread(target=relay.step)
    stalled.start()
    wait_until(lambda: [c for c in sandbox.state.calls("/v2/survey/") if c["status"] is None])
    relay.stores.forgetter.forget([ADA])
    stalled.join()
    assert [c["status"] for c in sandbox.state.calls("/v2/survey/")] == [200]
    assert relay.state(ref("ada-nps")) == "forgotten"
    assert traces(redis_client, ADA_NEEDLES) == []
