"""A seeded, realistic Segment mix for the ``calls`` section, and the plain-Python oracle that counts
what a naive forwarder would call and the fewest calls any correct relay could make.

Each user, over a day or so: 10-30 page-load identifies carrying the same traits (email, name, plan); for
10 % of them a plan change partway (that identify and every later one carry the new plan); 1-3
tracks, some of them the survey event; and for some users "Order Completed" tracks, some orders
reported twice (same ``order_id``, a second message). Timestamps increase per user; the whole mix is
sent in time order, so one user's events are spread over the replay as in life.

Messages are Segment bodies with a ``_at`` key (seconds into ``SPAN_SECONDS``) that the sender turns into a
timestamp and strips.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

SURVEY_EVENT = "NPS Survey"
ORDER_EVENT = "Order Completed"
OTHER_EVENTS = ("Viewed Pricing", "Clicked Upgrade", "Viewed Docs")
PLANS = ("free", "starter", "pro", "business")
FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "Tim")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Allen")
SPAN_SECONDS = 2 * 86_400.0  # the mix happened over the two days before the run
LIBRARY = {"library": {"name": "analytics.js", "version": "4.1.0"}}

Message = dict[str, Any]


@dataclass(frozen=True)
class MixShape:
    users: int = 2000
    page_loads: tuple[int, int] = (10, 30)
    trait_change_share: float = 0.10
    tracks: tuple[int, int] = (1, 3)
    survey_share: float = 0.4  # of the 1-3 tracks, those that are the survey event
    order_user_share: float = 0.25
    orders: tuple[int, int] = (1, 2)
    repeated_order_share: float = 0.3  # orders reported a second time


class _User:
    """One user's messages, built in time order from a seeded generator."""

    def __init__(self, rng: random.Random, salt: str, n: int) -> None:
        self.rng, self.n = rng, n
        self.user_id = f"usr_{salt}_{n:05d}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}.{n}.{salt}@example.com".lower()
        self.traits = {"email": email, "name": f"{first} {last}", "plan": rng.choice(PLANS)}
        self.messages: list[Message] = []
        self.seq = 0

    def add(self, at: float, body: Message) -> None:
        self.seq += 1
        common = {"messageId": f"{self.user_id}-{self.seq:03d}", "userId": self.user_id, "context": LIBRARY}
        self.messages.append({**common, **body, "_at": at})

    def page_loads(self, count: int, change_at: int | None) -> list[float]:
        """Identifies spaced 30 s to 40 min apart from a start in the first day; their times."""
        at = self.rng.uniform(0, SPAN_SECONDS / 2)
        times = []
        for index in range(count):
            if index == change_at:
                others = [p for p in PLANS if p != self.traits["plan"]]
                self.traits = {**self.traits, "plan": self.rng.choice(others)}
            self.add(at, {"type": "identify", "traits": dict(self.traits)})
            times.append(at)
            at += self.rng.uniform(30, 2400)
        return times

    def track(self, at: float, name: str, properties: Message) -> None:
        self.add(at, {"type": "track", "event": name, "properties": properties})


def _later(rng: random.Random, times: list[float]) -> float:
    """A moment between two page loads, after the first one."""
    index = rng.randrange(len(times) - 1)
    return rng.uniform(times[index] + 1, times[index + 1] - 1)


def _tracks(user: _User, shape: MixShape, times: list[float]) -> None:
    rng = user.rng
    for _ in range(rng.randint(*shape.tracks)):
        if rng.random() < shape.survey_share:
            user.track(_later(rng, times), SURVEY_EVENT, {"page": "/app", "plan": user.traits["plan"]})
        else:
            user.track(_later(rng, times), rng.choice(OTHER_EVENTS), {"path": "/pricing"})


def _orders(user: _User, shape: MixShape, times: list[float]) -> None:
    rng = user.rng
    if rng.random() >= shape.order_user_share:
        return
    for k in range(rng.randint(*shape.orders)):
        at = _later(rng, times)
        total = round(rng.uniform(9, 400), 2)
        order = {
            "order_id": f"ord-{user.user_id}-{k}",
            "total": total,
            "currency": rng.choice(("USD", "EUR")),
        }
        user.track(at, ORDER_EVENT, order)
        if rng.random() < shape.repeated_order_share:  # the same order, reported again a bit later
            user.track(at + rng.uniform(5, 600), ORDER_EVENT, dict(order))


def generate(seed: int, salt: str, shape: MixShape | None = None) -> list[Message]:
    """The whole mix in time order. ``seed`` fixes its shape; ``salt`` only names users and messages."""
    shape = shape or MixShape()
    rng = random.Random(seed)
    messages: list[Message] = []
    for n in range(shape.users):
        user = _User(rng, salt, n)
        count = rng.randint(*shape.page_loads)
        change = rng.randint(count // 2, count - 1) if rng.random() < shape.trait_change_share else None
        times = user.page_loads(count, change)
        _tracks(user, shape, times)
        _orders(user, shape, times)
        messages += user.messages
    messages.sort(key=lambda m: m["_at"])
    return messages


# --- the oracle ------------------------------------------------------------------------------------


def _kind(message: Message) -> str:
    if message["type"] == "identify":
        return "identify"
    name = message.get("event")
    return "survey" if name == SURVEY_EVENT else "order" if name == ORDER_EVENT else "other"


def forwarder_calls(messages: list[Message]) -> dict[str, int]:
    """Segment's own destination: every identify and every order track is an upsert, every survey-event
    track a survey; other tracks call nothing."""
    kinds = defaultdict(int, {"identify": 0, "survey": 0, "order": 0})
    for message in messages:
        kinds[_kind(message)] += 1
    upserts = kinds["identify"] + kinds["order"]
    return {"calls": upserts + kinds["survey"], "contacts": upserts, "surveys": kinds["survey"]}


def _contact_state(state: tuple[Any, ...], message: Message) -> tuple[Any, ...]:
    traits, orders = state
    if message["type"] == "identify":
        return tuple(sorted(message["traits"].items())), orders
    return traits, orders | {message["properties"]["order_id"]}


def lower_bound(messages: list[Message]) -> dict[str, int]:
    """Distinct contact states each person goes through (first state, each trait change, each new
    distinct order), plus one survey per survey-event track."""
    state: dict[str, tuple[Any, ...]] = {}
    contacts = surveys = 0
    for message in sorted(messages, key=lambda m: m["_at"]):
        kind = _kind(message)
        if kind == "survey":
            surveys += 1
        elif kind in ("identify", "order"):
            before = state.get(message["userId"], ((), frozenset()))
            after = _contact_state(before, message)
            contacts += after != before
            state[message["userId"]] = after
    return {"calls": contacts + surveys, "contacts": contacts, "surveys": surveys}


def final_contacts(messages: list[Message]) -> dict[str, dict[str, Any]]:
    """Per email: the plan and the number of distinct orders Promoter should end with."""
    plans: dict[str, tuple[float, str, str]] = {}
    orders: dict[str, set[str]] = defaultdict(set)
    for message in messages:
        if message["type"] == "identify":
            user, traits = message["userId"], message["traits"]
            if user not in plans or plans[user][0] <= message["_at"]:
                plans[user] = (message["_at"], traits["email"], traits["plan"])
        elif message.get("event") == ORDER_EVENT:
            orders[message["userId"]].add(message["properties"]["order_id"])
    return {email: {"plan": plan, "orders": len(orders[user])} for user, (_, email, plan) in plans.items()}


KIND_LABELS = {"identify": "identifies", "survey": "survey tracks", "order": "order tracks",
               "other": "other tracks"}  # fmt: skip


def shape_counts(messages: list[Message]) -> dict[str, int]:
    kinds: dict[str, int] = dict.fromkeys(KIND_LABELS.values(), 0)
    for message in messages:
        kinds[KIND_LABELS[_kind(message)]] += 1
    users = len({m["userId"] for m in messages})
    return {"events": len(messages), "users": users, **kinds}
