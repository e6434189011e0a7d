"""Upgrading from release ece91c4 with data in Redis loses nothing and surveys nobody twice.

``tests/upgrade/snapshot-ece91c4.json`` is a Redis keyspace written by the code of ece91c4 itself
(``tests/upgrade/make_snapshot.py``, whose docstring lists the scenario): delivered and surveyed people,
queued identify and track task messages, held tracks (of a userId and of an anonymous visitor), a
retrying identify, dead letters, an order, an alias, an anonymous-only person and two userIds the old
code merged. The new code starts on it (the migration first, as the workers do at start), delivers
everything against the sandbox, and each promise of the upgrade is checked against what the old code
had already sent to Promoter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import pytest
import redis

from app.devtools.sandbox import SandboxControl, SandboxServer
from tests.conftest import Processes, wait_until
from tests.factories import make_event
from tests.harness import Relay, make_relay
from tests.upgrade import snapshot
from worker import keys, migrate, taskmessages

SETTINGS: dict[str, Any] = {"survey_cooldown_days": 30, "survey_events": frozenset({"NPS"})}


@pytest.fixture
def old() -> dict[str, Any]:
    return snapshot.read()


@pytest.fixture
def upgraded(redis_client: redis.Redis, sandbox: SandboxServer, old: dict[str, Any]) -> Relay:
    """The old keyspace, the new code's relay on it at the old clock, migrated as a worker does."""
    snapshot.restore(redis_client, old)
    relay = make_relay(redis_client, sandbox, **SETTINGS)
    relay.clock.now = old["clock"] + 60
    report = migrate.migrate(redis_client, relay.runtime.settings, clock=relay.clock)
    assert report.before == 1
    assert report.after == migrate.CURRENT
    return relay


def surveyed_emails(old: dict[str, Any], relay: Relay) -> Counter[str]:
    """Every survey Promoter got, before the upgrade and after, by email."""
    return Counter([*old["surveys"], *(call["contact"]["email"] for call in relay.surveys())])


def test_everything_queued_held_retrying_and_dead_is_delivered_once_after_the_upgrade(
    upgraded: Relay, old: dict[str, Any]
) -> None:
    relay, refs = upgraded, old["refs"]
    assert old["states"]["carol_identify"] == "received"
    assert old["states"]["frank_identify"] == "retrying"

    # The old task messages in the broker's list run as they are (carol), the retry comes due (frank).
    relay.drain()
    relay.later()
    # dave and the visitor v1 (now erin) are identified by the new code; their held tracks go out.
    relay.send(make_event("n-dave-1", "identify", "dave"))
    relay.send(make_event("n-erin-1", "identify", "erin", anonymous="v1"))
    # lena's traits waited for an email under the old code; the new code's identify brings one.
    relay.send(make_event("n-lena-1", "identify", "lena"))
    relay.drain()
    # Dead letters of the old code are listed and replayed: gina's refused identify, then her track.
    dead = {letter["id"] for letter in relay.stores.dead.list()}
    assert dead == {refs["gina_identify"], refs["gina_track"]}
    assert relay.stores.dead.replay(refs["gina_identify"]) == "replayed"
    relay.drain()
    assert relay.stores.dead.replay(refs["gina_track"]) == "replayed"
    relay.drain()
    # Tracks reaching people the old code knew: through an alias, an anonymous-only visitor.
    relay.send(make_event("n-henry-1", "track", "henry_old"))
    relay.send(make_event("n-ivy-1", "track", None, anonymous="v2"))
    relay.drain()

    for name, ref in refs.items():
        assert relay.state(ref) == "delivered", name
    assert relay.contact("lena@example.com")["attributes"] == {"plan": "basic"}
    assert relay.state(refs["dave_track"]) == "delivered"
    surveyed = surveyed_emails(old, relay)
    assert max(surveyed.values()) == 1, surveyed
    assert set(surveyed) == {
        f"{name}@example.com" for name in ("alice", "carol", "frank", "dave", "erin", "gina", "henry", "ivy")
    }
    # Nothing left anywhere: no queue, schedule, hold or pending entry.
    client = relay.redis
    for queue in (relay.runtime.settings.queue_name, relay.runtime.settings.low_queue):
        assert client.llen(queue) == 0
    assert client.zcard(keys.SCHEDULE) == 0
    assert client.zcard(keys.PENDING) == 0
    # The hold indexes may name identities whose lists emptied (holds.expire prunes those): no list
    # holds anything.
    for index in (keys.HOLDS_USERS, keys.HOLDS_ANONYMOUS):
        for identity in cast(list[str], client.zrange(index, 0, -1)):
            assert client.llen(keys.held(identity)) == 0, identity
    assert int(client.get(keys.HELD_COUNT) or 0) == 0
    assert relay.stores.dead.count() == 0


def test_people_the_old_code_surveyed_or_synced_are_not_surveyed_or_sent_again(
    upgraded: Relay, old: dict[str, Any]
) -> None:
    relay, refs = upgraded, old["refs"]
    upserts_before = len(old["upserts"])
    # The same contact again: the fingerprint the old code recorded says Promoter has it.
    alice = make_event(
        "n-alice-1",
        "identify",
        "alice",
        traits={"email": "alice@example.com", "plan": "pro", "first_name": "Alice"},
    )
    bob = make_event("n-bob-1", "identify", "bob", traits={"email": "bob@example.com", "first_name": "Bob"})
    # bob's order reported again under another messageId: counted once, as before the upgrade.
    order = make_event(
        "n-bob-2",
        "track",
        "bob",
        event="Order Completed",
        properties={"order_id": "o-1", "total": 12.5, "currency": "EUR"},
    )
    # alice was surveyed by the old code: a new survey event is within the cooldown.
    again = make_event("n-alice-2", "track", "alice")
    relay.send(alice, bob, order, again)
    # A copy of an old task message of a message the old code delivered, as the broker may redeliver it.
    relay.redis.lpush(
        relay.runtime.settings.queue_name,
        taskmessages.render(
            refs["alice_track"], "track", relay.runtime.settings.queue_name, refs["alice_track"]
        ),
    )
    relay.drain()

    assert relay.state(alice["ref"]) == "skipped"
    assert relay.state(bob["ref"]) == "skipped"
    assert relay.state(order["ref"]) == "skipped"
    assert relay.state(again["ref"]) == "ineligible"
    sent_again = [call["email"] for call in relay.upserts() if call["email"] in old["upserts"]]
    assert sent_again == []
    assert upserts_before == 7
    assert "alice@example.com" not in [call["contact"]["email"] for call in relay.surveys()]
    assert relay.stores.people.person_of("u:bob")["order_attributes"]["order_count"] == 1  # type: ignore[index]


@pytest.mark.integration
def test_workers_started_on_the_old_data_migrate_it_once_then_run_the_old_task_messages(
    redis_client: redis.Redis, processes: Processes, sandbox_control: SandboxControl, old: dict[str, Any]
) -> None:
    """Two real workers start at once on the old keyspace: one migrates (the other waits for it),
    and the task messages ece91c4 left in the broker's list are consumed as they are."""
    snapshot.restore(redis_client, old)
    processes.env.update(SURVEY_COOLDOWN_DAYS="30", SURVEY_EVENTS="NPS")
    processes.worker()
    processes.worker()
    carol = old["refs"]["carol_track"]
    wait_until(lambda: redis_client.hget(keys.message(carol), "state") == "delivered", timeout=60)
    assert redis_client.get(keys.SCHEMA) == str(migrate.CURRENT)
    assert processes.logs().count("worker: schema 2: migrated") == 1
    assert [call["json"]["contact"]["email"] for call in sandbox_control.surveys()] == ["carol@example.com"]
