"""The reference model: what must have happened to each person and message, checked at rest.

It reads the generated traffic (who sent what, when it happened, when it arrived) and the scripted
Promoter's record of what it applied, and only the final status of each message from Redis. It follows
docs/delivery.md's rules (who is one person, what reaches Promoter, the guarantees) in plain sequential code:

- a person is a human of the traffic: their userId, their legacy id once aliased, their own devices;
- newest wins per contact field, by event time then ref;
- a survey goes at most once per track, only to an email of the track's own person, and not to one an
  identify the relay had already accepted (and not lost) had replaced by the track's time;
- every message ends final; a known person's surveys and identifies are not dead letters;
- orders count once per order_id, the earliest report being the order.

Some expectations depend on timing the model cannot see (a person record expiring between two events
of an idle person): those people are exempt from the exact checks, never from the ownership checks.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from tests.factories import bytes_client, stored_values, text_map, texts
from tests.sim.traffic import ORDER_EVENT, SURVEY_EVENT, Human, Sent, stamp
from worker import events, keys
from worker.states import FINAL

_PERSON_KEY = re.compile(r"^relay:person:\{(.*)\}$")

if TYPE_CHECKING:
    from tests.sim.world import World

MAX_IDENTITIES = 20
_OWNER = re.compile(r"^h(\d+)[.-]")
_NAME = re.compile(r"^(?:First|Last)(\d+)$")


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def fields_of(traits: dict[str, Any]) -> dict[str, str]:
    """Contact fields of a generated identify's traits, as Promoter should end up holding them."""
    out: dict[str, str] = {}
    for key, value in traits.items():
        if key == "email":
            out["email"] = value
        elif key in ("firstName", "first_name"):
            out["first_name"] = value
        elif key in ("lastName", "last_name"):
            out["last_name"] = value
        elif key == "company":
            out["a:company_name"] = value["name"]
        else:
            out[f"a:{key}"] = str(value)
    return out


def cents(properties: dict[str, Any]) -> int:
    if "total" in properties:
        total = Decimal(str(properties["total"]))
        return 0 if total > 10**12 else int(total * 100)
    products = properties.get("products") or []
    if any("e5" in str(p.get("price")) for p in products):
        return 0
    return int(sum(Decimal(str(p["price"])) * Decimal(str(p.get("quantity", 1))) for p in products) * 100)


def money(amount: int) -> str:
    return f"{amount // 100}.{amount % 100:02d}"


@dataclass
class Message:
    sent: Sent
    ref: str
    state: str
    detail: str
    changes: list[tuple[float, str]]
    history: list[str]

    def state_at(self, moment: float) -> str:
        """The state it was in at ``moment`` (virtual seconds), from its history."""
        state = "received"
        for at, changed in self.changes:
            if at <= moment:
                state = changed
        return state

    def story(self) -> str:
        return " > ".join(self.history[-8:])


class Oracle:
    def __init__(self, world: World) -> None:
        self.world = world
        self.settings = world.settings
        self.messages: dict[int, Message] = {}
        self.by_human: dict[int, list[Message]] = defaultdict(list)
        self.surveys_by_ref: dict[str, list[Any]] = defaultdict(list)
        for survey in world.promoter.surveys:
            self.surveys_by_ref[survey.ref].append(survey)
        self.humans = {human.index: human for human in world.traffic.humans}

    def fail(self, kind: str, detail: str) -> None:
        self.world.violate(kind, detail)

    def event_time(self, sent: Sent, ref: str) -> str:
        """When it happened, as Segment corrects a client's clock: received - (sentAt - timestamp) when
        the client sent ``sentAt`` (on the message, or on its batch), else the timestamp as sent."""
        received, index = self.world.record.received[ref]
        batch = self.world.traffic.batches[index]
        if batch.sent_at_on_batch or sent.skew:
            moment_ms = ms(received) - (ms(batch.arrival) - ms(sent.true_time))
        else:
            moment_ms = min(ms(sent.true_time + sent.skew), ms(received))
        return stamp(moment_ms / 1000)

    def version(self, sent: Sent, ref: str) -> str:
        """The relay's order of writes (its own tie-break between equal times): newest wins."""
        return events.version(cast(events.Event, {"timestamp": self.event_time(sent, ref), "ref": ref}))

    # --- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        client = self.world._plain
        base = self.world.clock() - self.world.t
        for sent in self.world.traffic.sent:
            if sent.resend:
                continue
            ref = self.world.record.ref_of.get(sent.number)
            if ref is None:
                self.fail("never accepted", f"m{sent.number} was never answered 200")
                continue
            record = text_map(client.hgetall(keys.message(ref))) or self.world.record.expired_records.get(
                ref, {}
            )
            history = texts(client.lrange(keys.history(ref), 0, -1)) or self.world.record.expired_logs.get(
                ref, []
            )
            changes: list[tuple[float, str]] = []
            for entry in history:
                parsed = json.loads(entry)
                changes.append((float(parsed["at"]) - base, str(parsed["state"])))
            steps = []
            for entry in history:
                found = re.search(r'"state":"([a-z]+)"', entry)
                said = re.search(r'"detail":"([^"]{0,70})', entry)
                steps.append(f"{found.group(1) if found else '?'}({said.group(1) if said else ''})")
            message = Message(sent, ref, record.get("state", ""), record.get("detail", ""), changes, steps)
            if sent.number in self.messages:
                continue
            self.messages[sent.number] = message
            dropped = not message.state and ref in self.world.record.suppressed
            if sent.human is not None and not dropped:
                self.by_human[sent.human].append(message)

    # --- checks ----------------------------------------------------------------------------------

    def check(self) -> None:
        self.load()
        for message in self.messages.values():
            if message.state == "" and message.ref in self.world.record.suppressed:
                continue  # a forgotten person's, dropped at ingest (check_forgotten says whose)
            if message.state not in FINAL:
                self.fail(
                    "not final at rest",
                    f"m{message.sent.number} {message.ref}: {message.state} {message.detail}",
                )
        self.check_surveys()
        exempt = self.forget_exempt()
        for human in self.humans.values():
            if human.index not in exempt:
                self.check_person(human)
        self.check_forgotten()
        self.check_contacts_owned()
        self.check_keys()
        for overlap in self.world.promoter.overlaps:
            self.fail("concurrent contact updates", overlap)

    def sim_ref(self, message: Message) -> str:
        return str(message.sent.message.get("properties", {}).get("sim_ref", ""))

    def is_survey(self, message: Message) -> bool:
        name = message.sent.message.get("event")
        return message.sent.kind == "track" and name in self.settings.survey_events

    def check_surveys(self) -> None:
        cooldown = self.settings.survey_cooldown_days * 86400
        # A forget erases the cooldown markers of the surveys it forgets, a shared device's anonymous
        # ones included (docs/privacy.md): a survey after such a forget is not bound by them.
        forgotten = {self.sim_ref(m) for m in self.messages.values() if m.state == "forgotten"}
        last: dict[tuple[str, int], Any] = {}
        for survey in sorted(self.world.promoter.surveys, key=lambda s: s.at):
            key = (survey.email, survey.campaign)
            before = last.get(key)
            if cooldown and before and survey.at - before.at < cooldown and before.ref not in forgotten:
                self.fail(
                    "surveyed within the cooldown", f"{survey.email} at {survey.at - before.at:.0f}s apart"
                )
            last[key] = survey
        for message in self.messages.values():
            if not self.is_survey(message):
                continue
            found = self.surveys_by_ref.get(self.sim_ref(message), [])
            if len(found) > 1:
                self.fail("surveyed twice", f"m{message.sent.number}: {[s.email for s in found]}")
            for survey in found:
                self.check_survey_email(message, survey)
            if message.state == "delivered" and not found and "already surveyed" not in message.detail:
                self.fail("delivered without a survey", f"m{message.sent.number}: {message.detail}")

    def allowed_owners(self, message: Message) -> set[int]:
        sent = message.sent
        if sent.message.get("userId"):
            return {sent.human} if sent.human is not None else set()
        return set(self.world.traffic.device_users.get(sent.device or "", set()))

    def check_survey_email(self, message: Message, survey: Any) -> None:
        owner = _OWNER.match(survey.email)
        owners = self.allowed_owners(message)
        if not owner or int(owner.group(1)) not in owners:
            self.fail(
                "surveyed another person's email",
                f"m{message.sent.number} ({message.sent.message.get('userId')}) -> {survey.email}",
            )
            return
        if not message.sent.message.get("userId"):
            return
        allowed = self.allowed_emails(message, survey.claimed_at_step)
        if allowed is not None and survey.email not in allowed:
            self.fail(
                "surveyed a replaced email",
                f"m{message.sent.number} -> {survey.email}, expected one of {sorted(allowed)}",
            )

    def connected(self, human: Human, user: str, step: int) -> set[str]:
        ids = {user}
        for other in self.by_human[human.index]:
            if (
                other.sent.kind == "alias"
                and self.world.record.accepted_at_step.get(other.ref, 1 << 60) < step
            ):
                ids |= {human.user_id, human.legacy_id or ""}
        return ids

    def allowed_emails(self, message: Message, step: int) -> set[str] | None:
        human = self.humans[message.sent.human or 0]
        if self.ambiguous(human):
            return None  # its record may have expired: the relay then knows only what came after
        user = str(message.sent.message.get("userId"))
        ids = self.connected(human, user, step)
        mine = self.version(message.sent, message.ref)
        current: tuple[str, str] | None = None
        later: set[str] = set()
        for other in self.by_human[human.index]:
            traits = other.sent.message.get("traits") or {}
            if other.sent.kind != "identify" or "email" not in traits:
                continue
            theirs = self.version(other.sent, other.ref)
            if theirs > mine:
                later.add(traits["email"].lower())
                continue
            accepted = self.world.record.accepted_at_step.get(other.ref, 1 << 60)
            # A dead identify still counts: its fields stay with the person and reach Promoter with the
            # next update (only a refused one's are taken out, and the generator refuses no email).
            if other.sent.message.get("userId") not in ids or accepted >= step:
                continue
            if current is None or theirs > current[0]:
                current = (theirs, traits["email"].lower())
        if current is None:
            return None
        return {current[1]} | later

    # --- one person ------------------------------------------------------------------------------

    def ambiguous(self, human: Human) -> bool:
        """Whether this person's record may have expired between two of their events (idle too long)."""
        ttl = self.settings.person_ttl_seconds
        replayed = self.world.record.replayed
        times = sorted(
            [self.world.record.accepted_at_time.get(m.ref, 0.0) for m in self.by_human[human.index]]
            + [replayed[m.ref] for m in self.by_human[human.index] if m.ref in replayed]
        )
        return any(b - a > ttl / 2 for a, b in itertools.pairwise(times))

    def check_person(self, human: Human) -> None:
        messages = self.by_human[human.index]
        email_identifies = [
            m for m in messages
            if m.sent.kind == "identify" and "email" in (m.sent.message.get("traits") or {})
            and m.sent.message.get("userId") in (human.user_id, human.legacy_id)
        ]  # fmt: skip
        for message in messages:
            traits = message.sent.message.get("traits")
            if message.sent.kind == "identify" and not traits and message.state == "dead":
                self.fail("identify without traits dead", f"m{message.sent.number}: {message.detail}")
        known = any(m.state in ("delivered", "skipped") for m in email_identifies)
        if not known or self.ambiguous(human):
            return
        first_known = min(self.world.record.accepted_at_time.get(m.ref, 0.0) for m in email_identifies)
        for message in messages:
            self.check_outcome(human, message, first_known)
        self.check_contact(human, messages)

    def check_outcome(self, human: Human, message: Message, first_known: float) -> None:
        sent = message.sent
        if message.state != "dead" or message.ref in self.world.record.discarded:
            return
        if not sent.message.get("userId") or sent.message.get("userId") not in (
            human.user_id,
            human.legacy_id,
        ):
            return
        if "POISON" in str(sent.message.get("traits")):
            return
        arrived = self.world.record.accepted_at_time.get(message.ref, 0.0)
        if first_known > arrived + self.settings.hold_ttl_seconds / 2:
            return  # it may have waited longer than a hold lasts for the person's first email
        replayed = self.world.record.replayed.get(message.ref)
        last_seen = max(
            self.world.record.accepted_at_time.get(m.ref, 0.0) for m in self.by_human[human.index]
        )
        if replayed is not None and replayed - last_seen > self.settings.person_ttl_seconds / 2:
            return  # replayed after the person may have expired
        if sent.kind == "track" and not self.is_survey(message) and sent.message.get("event") != ORDER_EVENT:
            return
        self.fail(
            "a known person's message is a dead letter",
            f"m{sent.number} {sent.kind} ({sent.message.get('userId')}): {message.story()}",
        )

    def expected_contact(self, human: Human, messages: list[Message]) -> dict[str, str]:
        newest: dict[str, tuple[str, str]] = {}
        for message in messages:
            sent = message.sent
            if sent.kind != "identify" or message.state not in ("delivered", "skipped"):
                continue
            if sent.message.get("userId") not in (human.user_id, human.legacy_id):
                continue
            stamp_ = self.version(sent, message.ref)
            for name, value in fields_of(sent.message.get("traits") or {}).items():
                if name not in newest or stamp_ > newest[name][0]:
                    newest[name] = (stamp_, value)
        return {name: value for name, (_, value) in newest.items()}

    def expected_orders(self, messages: list[Message]) -> dict[str, str]:
        reports: dict[str, tuple[str, Message]] = {}
        for message in messages:
            sent = message.sent
            if sent.kind != "track" or sent.message.get("event") != ORDER_EVENT or message.state == "dead":
                continue
            order_id = sent.message["properties"]["order_id"]
            key = self.version(sent, message.ref)
            if order_id not in reports or key < reports[order_id][0]:
                reports[order_id] = (key, message)
        if not reports:
            return {}
        sums: dict[str, int] = defaultdict(int)
        newest: tuple[str, str, Message] | None = None
        for order_id, (key, message) in reports.items():
            properties = message.sent.message["properties"]
            sums[properties["currency"]] += cents(properties)
            sort_key = f"{key[:9]}|{order_id}"
            if newest is None or sort_key > newest[0]:
                newest = (sort_key, order_id, message)
        assert newest is not None
        _, order_id, message = newest
        properties = message.sent.message["properties"]
        out = {
            "order_count": str(len(reports)),
            "last_order_id": order_id,
            "last_order_total": money(cents(properties)),
            "last_order_currency": properties["currency"],
            "last_order_date": self.event_time(message.sent, message.ref),
        }
        for currency, amount in sums.items():
            out[f"lifetime_revenue_{currency.lower()}"] = money(amount)
        return out

    def check_contact(self, human: Human, messages: list[Message]) -> None:
        expected = self.expected_contact(human, messages)
        if "email" not in expected:
            return
        contact = self.world.promoter.contacts.get(expected["email"].lower())
        if contact is None:
            self.fail("contact missing", f"h{human.index}: {expected['email']}")
            return
        diffs = {}
        for name, value in expected.items():
            if name.startswith("a:anon_") or name == "email":
                continue
            got = contact["attributes"].get(name[2:]) if name.startswith("a:") else contact.get(name)
            if got != value:
                diffs[name] = (got, value)
        orders_dead = any(
            m.state == "dead" and m.sent.message.get("event") == ORDER_EVENT for m in messages
        )  # a dead order track may or may not have been counted before it died
        for name, value in ({} if orders_dead else self.expected_orders(messages)).items():
            if contact["attributes"].get(name) != value:
                diffs[name] = (contact["attributes"].get(name), value)
        if diffs:
            self.fail("contact differs from the newest state", f"h{human.index} {expected['email']}: {diffs}")

    # --- a forgotten person -------------------------------------------------------------------------

    def forget_exempt(self) -> set[int]:
        """The forgotten person, and whoever shared a device with them: their anonymous events from it
        may have been forgotten or suppressed with the forgotten person's, so their exact outcome is not
        the model's."""
        forgotten = self.world.record.forgotten
        if forgotten is None:
            return set()
        human = self.humans[forgotten]
        exempt = {forgotten}
        for device in {human.laptop, human.phone, *human.devices}:
            exempt |= self.world.traffic.device_users.get(device, set())
        return exempt

    def check_forgotten(self) -> None:
        """After a forget: no trace of the person anywhere in Redis, nothing planned for them at Promoter
        after it, and nothing of anyone else suppressed."""
        record = self.world.record
        if record.forgotten is None or record.forgotten_at is None:
            if record.suppressed:
                self.fail("suppressed without a forget", f"{sorted(record.suppressed)[:5]}")
            return
        human = self.humans[record.forgotten]
        users = {user for user in (human.user_id, human.legacy_id) if user}
        devices = {human.laptop, human.phone, *human.devices}
        shared = {d for d in devices if self.world.traffic.device_users.get(d, set()) - {human.index}}
        # A device is the person's, as far as the relay can know, once an event named it with their
        # userId before the forget; it is erased and suppressed whole, shared or not (docs/privacy.md).
        together = [
            (m.sent.message.get("anonymousId"), record.accepted_at_time.get(m.ref, 1e18))
            for m in self.messages.values() if m.sent.message.get("userId") in users
        ]  # fmt: skip
        named = {device for device, at in together if at < record.forgotten_at}
        for message in self.messages.values():
            if message.ref not in record.suppressed or message.state:
                continue
            sent = message.sent.message
            email = str((sent.get("traits") or {}).get("email") or "").lower()
            mine = (
                sent.get("userId") in users
                or sent.get("previousId") in users
                or email in {e.lower() for e in human.emails}
                or (not sent.get("userId") and sent.get("anonymousId") in devices | named)
            )
            if not mine:
                self.fail("another person's message suppressed", f"m{message.sent.number}: {sent}")
        # Suppression ends SUPPRESSION_DAYS after the forget: what they send later is a new start.
        returned = record.forgotten_at + self.settings.suppression_days * 86400
        if any(record.accepted_at_time.get(m.ref, 0.0) >= returned for m in self.by_human[human.index]):
            return
        forgotten_at = self.world.clock() - self.world.t + record.forgotten_at
        emails = {e.lower() for e in human.emails}
        for planned, endpoint, email in self.world.promoter.log:
            if email in emails and planned > forgotten_at:
                self.fail("delivered for a forgotten person", f"{endpoint} {email} planned after the forget")
        # A forget finds a device while an index leads to it: its userId's device index lasts as long
        # as the records of their last event together (docs/privacy.md), STATUS_TTL_SECONDS here.
        since = record.forgotten_at - self.settings.status_ttl_seconds
        recent = {device for device, at in together if since <= at < record.forgotten_at}
        known = sorted(d for d in devices - shared if d in recent)
        ids = [human.user_id, *([human.legacy_id] if human.legacy_id else []), *known]
        needles = [re.compile(rf"(?<![\w]){re.escape(i)}(?![\w])") for i in ids]
        needles += [re.compile(rf"(?<![0-9A-Za-z])h{human.index}[.-]"),
                    re.compile(rf"(?:First|Last){human.index}(?!\d)")]  # fmt: skip
        # What the relay could not know was theirs: anonymous events from a device no event had named
        # with their userId before the forget (their traits may be in them all the same).
        unknown = sorted(devices - set(known))
        unknowable = [f"a:{d}" for d in unknown] + [
            m.ref for m in self.messages.values()
            if m.sent.human == human.index and not m.sent.message.get("userId")
            and m.sent.message.get("anonymousId") in unknown
        ]  # fmt: skip
        for key, found in self.traces(needles, unknowable, bool(shared)):
            self.fail("trace of a forgotten person", f"h{human.index} in {key}: {found}")

    def traces(
        self, needles: list[re.Pattern[str]], unknowable: list[str], shared: bool
    ) -> list[tuple[str, str]]:
        """Keys with a value (a hash's field, a list's or set's member) one of ``needles`` finds, but
        for values that name one of ``unknowable`` (a ref, an identity)."""
        # Bytes, read as latin-1: person records are MessagePack (ids appear in them as they are); a
        # person record is read through people.show, whose JSON names attributes as the rules do.
        client = bytes_client(self.world._plain)
        found = []
        for raw_key in client.scan_iter(count=1000):
            key = raw_key.decode("latin-1")
            values = self._values(client, raw_key, key)
            for value in values:
                text_ = f"{key} {value!s}"
                if any(name in text_ for name in unknowable):
                    continue
                hits = [
                    hit for needle in needles if (hit := needle.search(text_))
                    # An anonymous trait stitched into another person through a shared device is theirs
                    # now (the identity rules), as check_contacts_owned allows on their contact.
                    and not (shared and 'a:anon_' in text_[max(0, hit.start() - 30) : hit.start()])
                ]  # fmt: skip
                if hits:
                    found.append((key, text_[max(0, hits[0].start() - 40) : hits[0].end() + 40]))
                    break
        client.close()
        return found

    def _values(self, client: Any, raw_key: bytes, key: str) -> list[str]:
        """A key's values as text: bytes read as latin-1, a person record through people.show."""
        values: list[Any]
        if (named := _PERSON_KEY.match(key)) and client.type(raw_key) == b"string":
            values = [self.world.stores.people._show(named.group(1))]
        else:
            values = stored_values(client, raw_key)
        return [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values]

    # --- Promoter's whole record ------------------------------------------------------------------

    def check_contacts_owned(self) -> None:
        devices = self.world.traffic.device_users
        for email, contact in self.world.promoter.contacts.items():
            owner = _OWNER.match(email)
            if not owner:
                continue
            mine = int(owner.group(1))
            values = [contact.get("first_name") or "", contact.get("last_name") or ""]
            for name, value in contact["attributes"].items():
                tagged = _OWNER.match(str(value))
                if name.startswith("anon_") and tagged and mine in devices.get(f"d{tagged.group(1)}L", set()):
                    continue
                values.append(str(value))
            for value in values:
                found = _OWNER.match(value) or _NAME.match(value)
                if found and int(found.group(1)) != mine:
                    self.fail("another person's data on a contact", f"{email}: {value}")

    def check_keys(self) -> None:
        for key in self.world.unbounded_keys():
            self.fail("key without a TTL", key)
        client = self.world._plain
        for key in client.scan_iter(match=keys.person("*")):
            # The scripts' own reading of the record (schema 3 is MessagePack): its identities.
            view = self.world.stores.people.person_of(key[len(keys.person("")) - 1 : -1])
            size = len(view["identities"]) if view else 0
            if size > MAX_IDENTITIES:
                self.fail("identity set over its cap", f"{key}: {size}")


def check(world: World) -> None:
    Oracle(world).check()


__all__ = ["SURVEY_EVENT", "check"]
