"""The traffic of one seed: people, their devices and clocks, and what their Segment clients send.

Every value a person's events carry is tagged with that person (``h3.a@example.com``, ``First3``,
``h3-pro``), so the oracle can tell whose data reached a contact without trusting the relay's idea
of who is who. What a generated history contains, by the seed: anonymous browsing before sign-up,
trait-only identifies before the first email, page-load identifies that repeat what is known, email
changes back and forth, identifies without traits, surveys with and without the device's
anonymousId, orders (repeated order ids, absurd amounts), a legacy id later aliased, many devices for
one person, a shared device (a second person signs in on the first one's laptop), a poisoned trait
that Promoter refuses, resends, equal timestamps, a phone whose clock is off (corrected through
``sentAt``, which analytics-python puts on the batch), and the legacy ``action`` key for ``type``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.events import iso

SURVEY_EVENT = "NPS"
ORDER_EVENT = "Order Completed"
EPOCH = datetime(2027, 1, 4, tzinfo=UTC)


def moment(seconds: float) -> datetime:
    """Virtual seconds since the run's start as a time, exact to the millisecond."""
    return EPOCH + timedelta(milliseconds=round(seconds * 1000))


def stamp(seconds: float) -> str:
    return iso(moment(seconds))


@dataclass
class Human:
    index: int
    user_id: str
    emails: list[str]
    legacy_id: str | None
    laptop: str
    phone: str
    phone_skew: float
    churner: bool
    identified: bool
    email_at: int = 0
    traits: dict[str, Any] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    orders: int = 0


@dataclass
class Sent:
    """One message as a client sends it, and what the oracle needs to know about it."""

    number: int
    message: dict[str, Any]
    human: int | None
    device: str | None
    true_time: float
    skew: float
    flush_at: float = 0.0
    resend: bool = False

    @property
    def message_id(self) -> str:
        return str(self.message.get("messageId") or "")

    @property
    def kind(self) -> str:
        return str(self.message.get("type") or self.message.get("action"))


@dataclass
class Batch:
    arrival: float
    messages: list[Sent]
    sent_at_on_batch: bool
    skew: float


@dataclass
class Traffic:
    humans: list[Human]
    sent: list[Sent]
    batches: list[Batch]
    device_users: dict[str, set[int]]
    span: float


class Generator:
    def __init__(
        self, rng: random.Random, span: float, humans: int, shared: bool, churn: bool, without: frozenset[str]
    ) -> None:
        self.rng = rng
        self.without = without
        self.span = span
        self.sent: list[Sent] = []
        self.device_users: dict[str, set[int]] = {}
        self.humans = [self._human(index, churn and index == 0) for index in range(humans)]

        self.shared = shared and humans >= 2
        self.poison = rng.random() < 0.3 and "poison" not in without

    def _human(self, index: int, churner: bool) -> Human:
        rng = self.rng
        emails = [f"h{index}.a@example.com"] + [
            f"h{index}.{x}@example.com" for x in "bc"[: rng.choice((0, 0, 1, 2))]
        ]
        human = Human(
            index=index,
            user_id=f"u{index}",
            emails=emails,
            legacy_id=f"legacy{index}" if rng.random() < 0.25 else None,
            laptop=f"d{index}L",
            phone=f"d{index}P",
            phone_skew=0.0 if "skew" in self.without else rng.choice((0.0, -7200.0, 3600.0, -95.0, 40.0)),
            churner=churner,
            identified=rng.random() < 0.92,
        )
        human.traits = {
            "email": emails[0],
            rng.choice(("firstName", "first_name")): f"First{index}",
            rng.choice(("lastName", "last_name")): f"Last{index}",
            "plan": f"h{index}-free",
            "seats": f"h{index}-1",
            "company": {"name": f"h{index}-co"},
        }
        return human

    # --- one message ----------------------------------------------------------------------------

    def emit(
        self, human: Human | None, when: float, kind: str, device: str | None = None, user: str | None = None,
        skew: float = 0.0, **fields: Any,
    ) -> Sent:  # fmt: skip
        rng = self.rng
        number = len(self.sent)
        message: dict[str, Any] = {"type": kind, "messageId": f"m{number}"}
        if rng.random() < 0.04:
            message["messageId"] = f"m{number - 1}#1"  # like a run token of the one before
        if rng.random() < 0.03:
            del message["messageId"]
        if rng.random() < 0.05 and "action" not in self.without:
            message["action"] = message.pop("type")
        if user:
            message["userId"] = user
        if device:
            message["anonymousId"] = device
            self.device_users.setdefault(device, set())
            if human is not None:
                self.device_users[device].add(human.index)
        previous = self.sent[-1].true_time if self.sent and rng.random() < 0.05 else None
        true_time = previous if previous is not None and previous <= when else round(when, 3)
        message.update(fields)
        if kind == "track":
            message.setdefault("properties", {})["sim_ref"] = message.get("messageId", f"derived{number}")
        message["context"] = {"ip": f"10.0.{number % 250}.1", "userAgent": "sim/1.0"}
        sent = Sent(number, message, human.index if human else None, device, true_time, skew)
        self.sent.append(sent)
        return sent

    # --- histories -------------------------------------------------------------------------------

    def history(self, human: Human) -> None:
        rng = self.rng
        t = rng.uniform(0, self.span / 3)
        gap = self.span / rng.choice((8, 15, 30))

        def later() -> float:
            nonlocal t
            t += rng.expovariate(1 / gap)
            return t

        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                self._anonymous(human, later())
        if human.legacy_id and rng.random() < 0.7:
            self.emit(human, later(), "identify", user=human.legacy_id,
                      traits={"email": human.emails[-1], "plan": f"h{human.index}-legacy"})  # fmt: skip
            self.emit(human, later(), "track", user=human.legacy_id, event=SURVEY_EVENT)
        if rng.random() < 0.3:
            self.emit(human, later(), "identify", user=human.user_id, traits={"seats": f"h{human.index}-2"})
        if human.identified:
            self.emit(
                human, later(), "identify", user=human.user_id, device=human.laptop, traits=dict(human.traits)
            )
        steps = self._steps(human)
        for step in steps:
            when = later()
            if rng.random() < 0.1:
                t += rng.choice((0.6, 1.5, 3.0)) * gap * 4  # an absence
            step(when)

    def _steps(self, human: Human) -> list[Callable[[float], None]]:
        rng = self.rng
        weights: list[tuple[Any, float]] = [
            (self._page_load, 3), (self._trait_change, 2), (self._survey, 3), (self._order, 1.2),
            (self._no_traits, 0.4), (self._anonymous, 0.5), (self._new_device, 12 if human.churner else 0.3),
        ]  # fmt: skip
        if len(human.emails) > 1:
            weights.append((self._email_change, 1.5))
        if self.poison:
            weights.append((self._poisoned, 0.3))
        choices, chances = zip(*weights, strict=True)
        count = rng.randint(3, 14) if not human.churner else rng.randint(40, 70)
        steps: list[Callable[[float], None]] = [
            functools.partial(f, human) for f in rng.choices(choices, chances, k=count)
        ]
        if human.legacy_id:
            steps.insert(rng.randrange(len(steps) + 1), functools.partial(self._alias, human))
        return steps

    def _device(self, human: Human) -> tuple[str, float]:
        if self.rng.random() < 0.35:
            return human.phone, human.phone_skew
        return human.laptop, 0.0

    def _page_load(self, human: Human, when: float) -> None:
        device, skew = self._device(human)
        self.emit(
            human, when, "identify", device=device, user=human.user_id, skew=skew, traits=dict(human.traits)
        )

    def _trait_change(self, human: Human, when: float) -> None:
        device, skew = self._device(human)
        change = self.rng.choice(({"plan": f"h{human.index}-" + self.rng.choice(("pro", "team", "free"))},
                                  {"seats": f"h{human.index}-{self.rng.randint(1, 40)}"}))  # fmt: skip
        human.traits.update(change)
        self.emit(human, when, "identify", device=device, user=human.user_id, skew=skew, traits=change)

    def _email_change(self, human: Human, when: float) -> None:
        human.email_at = (human.email_at + 1) % len(human.emails)
        human.traits["email"] = human.emails[human.email_at]
        device, skew = self._device(human)
        self.emit(human, when, "identify", device=device, user=human.user_id, skew=skew,
                  traits={"email": human.traits["email"]})  # fmt: skip

    def _no_traits(self, human: Human, when: float) -> None:
        self.emit(human, when, "identify", device=human.laptop, user=human.user_id)

    def _survey(self, human: Human, when: float) -> None:
        device, skew = self._device(human)
        with_device = device if self.rng.random() < 0.5 else None
        self.emit(human, when, "track", device=with_device, user=human.user_id, skew=skew, event=SURVEY_EVENT,
                  properties={"page": f"h{human.index}-app"})  # fmt: skip

    def _order(self, human: Human, when: float) -> None:
        rng = self.rng
        if human.orders and rng.random() < 0.3:
            order_id = f"h{human.index}-o{rng.randrange(human.orders)}"
        else:
            order_id = f"h{human.index}-o{human.orders}"
            human.orders += 1
        amount: dict[str, Any]
        pick = rng.random()
        if pick < 0.1 and "absurd" not in self.without:
            amount = {"products": [{"price": "1e500000", "quantity": "1e500000"}]}
        elif pick < 0.2:
            amount = {"products": [{"price": 12.5, "quantity": 2}, {"price": "3.10"}]}
        elif pick < 0.25:
            amount = {"total": 1e30}
        else:
            amount = {"total": rng.choice((10, 42.5, 99.99, 250))}
        properties = {"order_id": order_id, "currency": rng.choice(("USD", "EUR")), **amount}
        self.emit(human, when, "track", user=human.user_id, event=ORDER_EVENT, properties=properties)

    def _anonymous(self, human: Human, when: float) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            self.emit(human, when, "track", device=human.laptop, event=SURVEY_EVENT)
        elif rng.random() < 0.5:
            self.emit(human, when, "page", device=human.laptop, name="Pricing")
        else:
            self.emit(human, when, "identify", device=human.laptop,
                      traits={"anon_visits": f"h{human.index}-{rng.randint(1, 9)}"})  # fmt: skip

    def _new_device(self, human: Human, when: float) -> None:
        device = f"d{human.index}N{len(human.devices)}"
        human.devices.append(device)
        self.emit(human, when, "identify", device=device, user=human.user_id, traits=dict(human.traits))

    def _poisoned(self, human: Human, when: float) -> None:
        self.emit(human, when, "identify", user=human.user_id, traits={"bad": f"h{human.index}-POISON"})

    def _alias(self, human: Human, when: float) -> None:
        self.emit(human, when, "alias", user=human.user_id, previousId=human.legacy_id)

    def shared_device(self, owner: Human, guest: Human) -> None:
        """The guest signs in on the owner's laptop: a survey first, then their identify, then more."""
        rng = self.rng
        t = rng.uniform(self.span / 3, self.span * 0.8)
        self.emit(guest, t, "track", device=owner.laptop, user=guest.user_id, event=SURVEY_EVENT)
        if rng.random() < 0.5:
            t += rng.uniform(1, 600)
            self.emit(
                guest, t, "identify", device=owner.laptop, user=guest.user_id, traits=dict(guest.traits)
            )
        t += rng.uniform(1, 3600)
        self.emit(guest, t, "track", device=owner.laptop, user=guest.user_id, event=SURVEY_EVENT)
        t += rng.uniform(1, 3600)
        self.emit(owner, t, "track", device=owner.laptop, user=owner.user_id, event=SURVEY_EVENT)

    # --- sending -----------------------------------------------------------------------------------

    def batches(self) -> list[Batch]:
        """Each client flushes what it queued: a batch per device and flush, some re-sent later."""
        rng = self.rng
        by_client: dict[tuple[int | None, str | None, float], list[Sent]] = {}
        for sent in sorted(self.sent, key=lambda s: (s.true_time, s.number)):
            by_client.setdefault((sent.human, sent.device, sent.skew), []).append(sent)
        batches: list[Batch] = []
        for (_, _, skew), messages in by_client.items():
            pending: list[Sent] = []
            for sent in messages:
                pending.append(sent)
                if rng.random() < 0.6:
                    batches.append(self._flush(pending, skew))
                    pending = []
            if pending:
                batches.append(self._flush(pending, skew))
        for batch in list(batches):
            if rng.random() < 0.06:
                again = Batch(
                    batch.arrival + rng.uniform(0.5, 600),
                    batch.messages,
                    batch.sent_at_on_batch,
                    skew=batch.skew,
                )
                batches.append(again)
        batches.sort(key=lambda b: b.arrival)
        return batches

    def _flush(self, messages: list[Sent], skew: float) -> Batch:
        rng = self.rng
        delay = rng.choice((0.2, 1.0, 5.0, 30.0)) if rng.random() < 0.95 else rng.uniform(600, 7200)
        arrival = round(max(s.true_time for s in messages) + delay, 3)
        for sent in messages:
            sent.flush_at = arrival
        return Batch(arrival, list(messages), sent_at_on_batch=rng.random() < 0.7, skew=skew)


def body(batch: Batch) -> dict[str, Any]:
    """The ``/v1/batch`` document a client sends for ``batch`` (timestamps on the client's clock)."""
    items = []
    for sent in batch.messages:
        message = dict(sent.message)
        message["timestamp"] = stamp(sent.true_time + sent.skew)
        if not batch.sent_at_on_batch and sent.skew:
            message["sentAt"] = stamp(batch.arrival + sent.skew)
        items.append(message)
    document: dict[str, Any] = {"batch": items}
    if batch.sent_at_on_batch:
        document["sentAt"] = stamp(batch.arrival + batch.skew)
    return document


# "forget" is not traffic: the operator's forget of one person (tests/sim/world.py).
FEATURES = ("action", "poison", "absurd", "shared", "churn", "skew", "forget")


def generate(rng: random.Random, span: float, without: frozenset[str] = frozenset()) -> Traffic:
    """``without`` turns generator features off (``FEATURES``), to look past a defect already known."""
    humans = rng.randint(3, 7)
    shared = rng.random() < 0.5 and "shared" not in without
    churn = rng.random() < 0.15 and "churn" not in without
    generator = Generator(rng, span, humans, shared=shared, churn=churn, without=without)
    for human in generator.humans:
        generator.history(human)
    if generator.shared:
        owner, guest = rng.sample(generator.humans, 2)
        generator.shared_device(owner, guest)
    batches = generator.batches()
    return Traffic(generator.humans, generator.sent, batches, generator.device_users, span)
