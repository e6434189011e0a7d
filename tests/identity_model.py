"""One person, one contact: random per-person histories through the real stack, checked by an oracle.

Each generated person has a seeded history of Segment messages in event time: anonymous tracks before
sign-up, a legacy user id later aliased, trait updates that arrive before the first email, page-load
identifies that repeat what is known, email changes, NPS tracks and orders (some order ids sent twice,
two currencies). All messages are then sent shuffled, some of them twice, through the HTTP ingest
while workers run against a sandbox that fails 5xx and stalls past the client timeout.

The oracle is plain sequential code over the same histories: for each person, the newest value of
every contact field by Segment ``timestamp``, order totals by distinct ``order_id`` per currency, and
for every NPS track the emails a survey may go to (the one current at the track's own timestamp, or
one set later). It never looks at the relay's state, only at what the sandbox received.

Black box on purpose: only ``/v1/batch``, ``/admin/api/messages/<id>`` and the sandbox's own record are
used, so the same check runs against any version of the relay.
``python -m tests.identity_model --users 300`` prints the figures; ``tests/test_identity_model.py``
runs it inside ``make test``.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import requests

from worker.states import FINAL

SURVEY_EVENT = "NPS Survey"
ORDER_EVENT = "Order Completed"
EPOCH = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class Person:
    index: int
    user_id: str
    anonymous_id: str | None
    legacy_id: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class History:
    """Writes one person's messages in event time: each message is a little later than the last."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.rng = rng
        self.person = Person(
            index,
            f"m{index}",
            f"anon-{index}" if rng.random() < 0.5 else None,
            f"legacy-{index}" if rng.random() < 0.25 else None,
        )
        self.clock = EPOCH + timedelta(hours=index)
        self.emails = [f"p{index}.a@example.com"] + (
            [f"p{index}.b@example.com"] if rng.random() < 0.3 else []
        )
        first_key, last_key = rng.choice([("first_name", "last_name"), ("firstName", "lastName")])
        self.traits: dict[str, Any] = {
            "email": self.emails[0],
            first_key: f"First{index}",
            last_key: rng.choice(["Lovelace", "Hopper", "Noether"]),
            "plan": "free",
            "company": {"name": f"Company {index % 17}"},
        }

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.clock += timedelta(seconds=self.rng.randint(5, 90))
        message_id = f"p{self.person.index}-{len(self.person.messages) + 1}"
        message = {"type": kind, "messageId": message_id, "timestamp": _stamp(self.clock), **fields}
        self.person.messages.append(message)
        return message

    def nps(self, **ids: Any) -> None:
        message = self.add("track", event=SURVEY_EVENT, **ids)
        message["properties"] = {"ref": message["messageId"], "score_page": self.rng.choice(["home", "app"])}

    def before_sign_up(self) -> None:
        """Anonymous visits, tracks under a legacy id, traits known before the email."""
        person, rng = self.person, self.rng
        if person.anonymous_id:
            for _ in range(rng.randint(1, 2)):
                if rng.random() < 0.6:
                    self.nps(anonymousId=person.anonymous_id)
                else:
                    self.add("track", event="Viewed Pricing", anonymousId=person.anonymous_id, properties={})
        if person.legacy_id:
            self.nps(userId=person.legacy_id)
        if rng.random() < 0.3:
            self.add("identify", userId=person.user_id, traits={"plan": "trial", "seats": rng.randint(1, 5)})

    def sign_up(self) -> None:
        ids: dict[str, Any] = {"userId": self.person.user_id}
        if self.person.anonymous_id:
            ids["anonymousId"] = self.person.anonymous_id
        self.add("identify", traits=dict(self.traits), **ids)

    def trait_change(self) -> None:
        change = {"plan": self.rng.choice(["free", "pro", "team"]), "seats": self.rng.randint(1, 50)}
        self.traits.update(change)
        self.add("identify", userId=self.person.user_id, traits=change)

    def page_load(self) -> None:
        self.add("identify", userId=self.person.user_id, traits=dict(self.traits))

    def email_change(self) -> None:
        self.traits["email"] = self.emails[1]
        self.add("identify", userId=self.person.user_id, traits={"email": self.emails[1]})

    def alias(self) -> None:
        self.add("alias", previousId=self.person.legacy_id, userId=self.person.user_id)

    def survey_track(self) -> None:
        anonymous = self.person.anonymous_id
        self.nps(
            userId=self.person.user_id,
            **({"anonymousId": anonymous} if anonymous and self.rng.random() < 0.5 else {}),
        )

    def order(self, properties: dict[str, Any]) -> None:
        self.add("track", event=ORDER_EVENT, userId=self.person.user_id, properties=dict(properties))

    def after_sign_up(self) -> None:
        """Trait changes, page loads, an email change, the alias, surveys and orders, in random order."""
        rng, index = self.rng, self.person.index
        steps: list[Callable[[], None]] = [self.trait_change] * rng.randint(1, 3) + [
            self.page_load
        ] * rng.randint(0, 2)
        steps += [self.survey_track] * rng.randint(1, 3)
        if len(self.emails) > 1:
            steps.append(self.email_change)
        if self.person.legacy_id:
            steps.append(self.alias)
        for number in range(rng.randint(0, 3)):
            properties = {
                "order_id": f"o{index}-{number}",
                "total": rng.choice([10, 42.5, 99.99, 250]),
                "currency": rng.choice(["USD", "EUR"]),
            }
            repeats = 2 if rng.random() < 0.3 else 1  # the same order_id reported again, later
            steps += [functools.partial(self.order, properties)] * repeats
        rng.shuffle(steps)
        for step in steps:
            step()


def _history(index: int, rng: random.Random) -> Person:
    history = History(index, rng)
    history.before_sign_up()
    history.sign_up()
    history.after_sign_up()
    return history.person


def generate(users: int, seed: int) -> list[Person]:
    rng = random.Random(seed)
    return [_history(index, rng) for index in range(users)]


# ----------------------------------------------------------------------------------------- oracle


def _contact_fields(traits: dict[str, Any]) -> dict[str, str]:
    """What a Promoter contact holds for these (generator-shaped) traits."""
    out: dict[str, str] = {}
    for key, value in traits.items():
        if key == "email":
            out["email"] = value
        elif key in ("first_name", "firstName"):
            out["first_name"] = value
        elif key in ("last_name", "lastName"):
            out["last_name"] = value
        elif key == "company":
            out["attr:company_name"] = value["name"]
        else:
            out[f"attr:{key}"] = str(value)
    return out


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01")), "f")


@dataclass
class Expected:
    contact: dict[str, Any]
    # NPS track messageId -> emails its survey may go to
    survey_emails: dict[str, set[str]]


def oracle(person: Person) -> Expected:
    """Newest wins per field, in event time; orders counted once per order_id, per currency."""
    ordered = sorted(person.messages, key=lambda m: m["timestamp"])
    fields: dict[str, str] = {}
    email_changes: list[tuple[str, str]] = []
    orders: dict[str, dict[str, Any]] = {}
    for message in ordered:
        if message["type"] == "identify":
            mapped = _contact_fields(message["traits"])
            fields.update(mapped)
            if "email" in mapped:
                email_changes.append((message["timestamp"], mapped["email"]))
        elif message["type"] == "track" and message["event"] == ORDER_EVENT:
            properties = message["properties"]
            orders.setdefault(properties["order_id"], {**properties, "timestamp": message["timestamp"]})
    attributes = {name[5:]: value for name, value in fields.items() if name.startswith("attr:")}
    if orders:
        revenue: dict[str, Decimal] = defaultdict(Decimal)
        for order in orders.values():
            revenue[order["currency"]] += Decimal(str(order["total"]))
        newest = max(orders.values(), key=lambda o: o["timestamp"])
        attributes["order_count"] = str(len(orders))
        for currency, total in revenue.items():
            attributes[f"lifetime_revenue_{currency.lower()}"] = _money(total)
        attributes["last_order_id"] = newest["order_id"]
        attributes["last_order_total"] = _money(Decimal(str(newest["total"])))
        attributes["last_order_currency"] = newest["currency"]
        attributes["last_order_date"] = newest["timestamp"]
    contact = {
        "email": fields["email"],
        "first_name": fields.get("first_name", ""),
        "last_name": fields.get("last_name", ""),
        "attributes": attributes,
    }
    surveys: dict[str, set[str]] = {}
    for message in ordered:
        if message["type"] == "track" and message["event"] == SURVEY_EVENT:
            at = message["timestamp"]
            current = [email for when, email in email_changes if when <= at][-1:]
            later = {email for when, email in email_changes if when > at}
            surveys[message["messageId"]] = set(current) | later
    return Expected(contact, surveys)


# ----------------------------------------------------------------------------------------- runner


@dataclass
class Stack:
    """Where the relay under test answers; the sandbox is driven through its Python state."""

    api: str
    write_key: str
    admin_token: str
    sandbox: Any  # app.sandbox.SandboxState (or anything with calls() and contacts())


def send(stack: Stack, people: list[Person], seed: int, duplicates: float = 0.05) -> dict[str, Any]:
    """Every message, shuffled across people, some twice, in batches like a Segment client."""
    rng = random.Random(seed + 1)
    messages = [message for person in people for message in person.messages]
    rng.shuffle(messages)
    for message in rng.sample(messages, int(len(messages) * duplicates)):
        messages.insert(rng.randrange(len(messages)), message)
    acknowledged: set[str] = set()
    rejected: list[dict[str, Any]] = []
    session = requests.Session()
    for start in range(0, len(messages), 50):
        batch = messages[start : start + 50]
        response = session.post(
            f"{stack.api}/v1/batch", json={"batch": batch}, auth=(stack.write_key, ""), timeout=30
        )
        body = response.json()
        if response.status_code != 200:
            rejected.extend({"messageId": m["messageId"], "status": response.status_code} for m in batch)
            continue
        refused = {entry["index"]: entry["errors"] for entry in body.get("rejected", [])}
        for index, message in enumerate(batch):
            if index in refused:
                rejected.append({"messageId": message["messageId"], "errors": refused[index]})
            else:
                acknowledged.add(message["messageId"])
    return {"sent": len(messages), "acknowledged": acknowledged, "rejected": rejected}


def states(stack: Stack, ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll each message's status until every one is final or ``timeout`` runs out."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.admin_token}"
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    waiting = set(ids)
    while waiting:
        for message_id in sorted(waiting):
            response = session.get(f"{stack.api}/admin/api/messages/{message_id}", timeout=10)
            if response.status_code == 200:
                record = response.json()["message"]
                found[message_id] = record
                if record.get("state") in FINAL:
                    waiting.discard(message_id)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return found


Fail = Callable[[str, Any], None]


def _check_contact(
    person: Person, expected: Expected, contacts: dict[str, dict[str, Any]], fail: Fail
) -> None:
    actual = contacts.get(expected.contact["email"].lower())
    if actual is None:
        fail("contacts_missing", expected.contact["email"])
        return
    wanted = expected.contact["attributes"]
    got = {
        "email": actual["email"],
        "first_name": actual["first_name"],
        "last_name": actual["last_name"],
        "attributes": {k: v for k, v in actual["attributes"].items() if k in wanted},
    }
    if got == expected.contact:
        return
    diff = {k: (got[k], expected.contact[k]) for k in got if got[k] != expected.contact[k]}
    orders_only = list(diff) == ["attributes"] and all(
        got["attributes"].get(a) == v
        for a, v in wanted.items()
        if not a.startswith(("order", "lifetime", "last_order"))
    )
    fail("orders_mismatched" if orders_only else "contacts_mismatched", {person.user_id: diff})


def _check_surveys(
    expected: Expected, surveys: dict[str, list[dict[str, Any]]], found: dict[str, dict[str, Any]], fail: Fail
) -> None:
    for track_id, allowed in expected.survey_emails.items():
        calls = surveys.get(track_id, [])
        state = found.get(track_id, {}).get("state")
        if len(calls) > 1:
            fail("duplicate_surveys", track_id)
        for call in calls:
            if call["contact"]["email"] not in allowed:
                fail("surveys_to_stale_email", {track_id: (call["contact"]["email"], sorted(allowed))})
        if state == "delivered" and not calls:
            fail("delivered_without_survey", track_id)
        if state in ("ineligible", "skipped"):
            fail("survey_tracks_not_surveyed", {track_id: state})
        if state == "dead" and "outcome unknown" not in str(found[track_id].get("detail", "")):
            fail("survey_tracks_dead", {track_id: str(found[track_id].get("detail", ""))[:120]})


def check(
    people: list[Person], sent: dict[str, Any], found: dict[str, dict[str, Any]], sandbox: Any
) -> dict[str, Any]:
    """Compare what the sandbox received with the oracle; every figure must be 0 for a pass."""
    contacts = {c["email"].lower(): c for c in sandbox.contacts()}
    surveys: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in sandbox.calls("/v2/survey/"):
        if call["status"] == 200:
            surveys[call["json"]["attributes"].get("ref", "?")].append(call["json"])
    report: Counter[str] = Counter()
    examples: dict[str, list[Any]] = defaultdict(list)

    def fail(kind: str, detail: Any) -> None:
        report[kind] += 1
        if len(examples[kind]) < 3:
            examples[kind].append(detail)

    for person in people:
        expected = oracle(person)
        _check_contact(person, expected, contacts, fail)
        _check_surveys(expected, surveys, found, fail)
    unique = {m["messageId"] for p in people for m in p.messages}
    report["rejected_by_ingest"] = len({r["messageId"] for r in sent["rejected"]})
    report["not_acknowledged"] = len(unique - sent["acknowledged"])
    report["left_non_final"] = sum(
        1 for m in sent["acknowledged"] if found.get(m, {}).get("state") not in FINAL
    )
    result: dict[str, Any] = {name: report.get(name, 0) for name in FIGURES}
    result["examples"] = dict(examples)
    result["messages"] = len(unique)
    result["surveys_at_sandbox"] = sum(len(v) for v in surveys.values())
    result["dead_unknown_outcome"] = sum(
        1 for r in found.values() if r.get("state") == "dead" and "outcome unknown" in str(r.get("detail"))
    )
    return result


FIGURES = (
    "rejected_by_ingest",
    "not_acknowledged",
    "left_non_final",
    "contacts_missing",
    "contacts_mismatched",
    "orders_mismatched",
    "surveys_to_stale_email",
    "duplicate_surveys",
    "delivered_without_survey",
    "survey_tracks_not_surveyed",
    "survey_tracks_dead",
)


def passed(result: dict[str, Any]) -> bool:
    return all(result[name] == 0 for name in FIGURES)


def main(argv: list[str] | None = None) -> int:
    """Run against a relay started by ``tests.conftest``-style fixtures in this process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args(argv)
    from tests.test_identity_model import run_model

    result = run_model(args.users, args.seed)
    print(json.dumps(result, indent=2, default=str))
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
