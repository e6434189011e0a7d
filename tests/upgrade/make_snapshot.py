"""Make the Redis snapshot of release ece91c4 that ``tests/test_upgrade.py`` upgrades.

Run it with the OLD code, from a checkout of ece91c4 with its own venv (it imports that checkout's
``worker`` and ``tests`` packages, which the working directory puts first on the path)::

    git worktree add /tmp/old ece91c4 && (cd /tmp/old && make install)
    cd /tmp/old && .venv/bin/python /path/to/promoter-relay/tests/upgrade/make_snapshot.py \
        /path/to/promoter-relay/tests/upgrade/snapshot-ece91c4.json

It starts its own redis-server and Promoter sandbox, drives the old relay's task bodies (the old
``tests.harness``) through a scenario with some of each kind of stored data (below), and writes every
key with its type, value and TTL as JSON, plus the calls the old relay made to Promoter and what each
scenario message is. JSON rather than an RDB file: it reads and diffs in a review, and does not
depend on the Redis version that loads it.

Scenario (userIds; every track is "NPS" and a survey event unless it is an order):
- alice: identified and surveyed (a cooldown marker), delivered.
- bob: identified, one order delivered (order record and order attributes).
- carol: identify and track queued, never run (task messages in the broker's list).
- dave: a track held, never identified.
- visitor v1: an anonymous track held under its anonymousId.
- frank: identify retrying after a 503 (in the retry schedule), his track held behind it.
- gina: identify refused (400): a dead letter, and her held track dead-lettered with it.
- henry: identified as henry_old, then aliased henry_old -> henry (one person, two userIds).
- ivy: an anonymous-only visitor (v2) identified with an email, delivered.
- jack and kate: both seen with anonymousId v3, which ece91c4 merged into one person (two userIds).
- lena: a trait update without an email, held in her person's waiting set until one arrives.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))

import redis

from app.devtools.processes import EmbeddedRedis
from app.devtools.sandbox import SandboxServer, SandboxState
from tests.conftest import SANDBOX_KEY
from tests.factories import make_event
from tests.harness import make_relay

SETTINGS = {"survey_cooldown_days": 30, "survey_events": frozenset({"NPS"})}


def identify(mid: str, user: str | None, email: str, anonymous: str | None = None, **traits: Any) -> Any:
    return make_event(mid, "identify", user, anonymous=anonymous, traits={"email": email, **traits})


def track(mid: str, user: str | None, anonymous: str | None = None, name: str = "NPS", **props: Any) -> Any:
    return make_event(mid, "track", user, anonymous=anonymous, event=name, properties=props)


def dump(client: Any) -> list[dict[str, Any]]:
    """Every key: its name, type, value (strings, hashes, lists, sets sorted, zsets as pairs), PTTL."""
    found = []
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = [[member, score] for member, score in client.zrange(key, 0, -1, withscores=True)]
        else:
            raise TypeError(f"{key}: {kind}")
        found.append({"key": key, "type": kind, "value": value, "pttl": client.pttl(key)})
    return found


def scenario(relay: Any) -> dict[str, str]:
    """Drive the old relay; returns each scenario message's ref by a name the test uses."""
    refs: dict[str, str] = {}

    def send(name: str, event: Any) -> None:
        refs[name] = event["ref"]
        relay.send(event)

    send(
        "alice_identify", identify("m-alice-1", "alice", "alice@example.com", plan="pro", first_name="Alice")
    )
    send("alice_track", track("m-alice-2", "alice"))
    send("bob_identify", identify("m-bob-1", "bob", "bob@example.com", first_name="Bob"))
    order: dict[str, Any] = {"order_id": "o-1", "total": 12.5, "currency": "EUR"}
    send("bob_order", track("m-bob-2", "bob", name="Order Completed", **order))
    send("henry_identify", identify("m-henry-1", "henry_old", "henry@example.com"))
    send("ivy_identify", identify("m-ivy-1", None, "ivy@example.com", anonymous="v2"))
    send("jack_identify", identify("m-jack-1", "jack", "jack@example.com", anonymous="v3"))
    relay.drain()
    send("kate_identify", identify("m-kate-1", "kate", "kate@example.com", anonymous="v3"))
    send("henry_alias", make_event("m-henry-2", "alias", "henry", previousId="henry_old"))
    relay.drain()

    send("dave_track", track("m-dave-1", "dave"))
    send("visitor_track", track("m-v1-1", None, anonymous="v1"))
    relay.drain()

    # gina: Promoter refuses her contact; her track was held for it and dies with it.
    send("gina_track", track("m-gina-1", "gina"))
    relay.drain()
    relay.sandbox.state.configure({"fail_next": [400]})
    send("gina_identify", identify("m-gina-2", "gina", "gina@example.com"))
    relay.drain()

    # frank: a 503, so his identify waits in the retry schedule; his track is held behind it.
    relay.sandbox.state.configure({"fail_next": [503]})
    send("frank_identify", identify("m-frank-1", "frank", "frank@example.com"))
    relay.drain()
    send("frank_track", track("m-frank-2", "frank"))
    relay.drain()

    # lena: traits before any email; the update waits for the identify that brings one.
    send("lena_traits", make_event("m-lena-1", "identify", "lena", traits={"plan": "basic"}))
    relay.drain()

    # carol: accepted, never run: her task messages stay in the broker's queue list.
    send("carol_identify", identify("m-carol-1", "carol", "carol@example.com"))
    send("carol_track", track("m-carol-2", "carol"))
    return refs


def main(out: Path) -> None:
    snapshot: dict[str, Any]
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder)).start()
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            with SandboxServer(SandboxState(api_key=SANDBOX_KEY)) as sandbox:
                relay = make_relay(client, sandbox, **SETTINGS)
                refs = scenario(relay)
                states = {name: relay.state(ref) for name, ref in refs.items()}
                snapshot = {
                    "made_by": "tests/upgrade/make_snapshot.py with the code of ece91c4",
                    "clock": relay.clock.now,
                    "refs": refs,
                    "states": states,
                    "surveys": [c["contact"]["email"] for c in relay.surveys()],
                    "upserts": [c["email"] for c in relay.upserts()],
                    "contacts": relay.sandbox.state.contacts(),
                    "keys": dump(client),
                }
        finally:
            server.stop()
    out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"{out}: {len(snapshot['keys'])} keys; states {states}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
