"""Events and stores for tests, made one way: the worker's ``Event`` contract with sensible defaults."""

from __future__ import annotations

from typing import Any, cast

import redis

from tests.conftest import SOURCE
from worker import keys, taskmessages
from worker.events import Event, make_ref
from worker.messages import Admission, event_of
from worker.settings import Settings, load
from worker.states import Route, State
from worker.stores import Stores, build_stores


def make_event(
    message_id: str,
    kind: str = "track",
    user: str | None = "u1",
    *,
    anonymous: str | None = None,
    source: str = SOURCE,
    timestamp: str = "2026-11-29T00:00:00.000Z",
    **fields: Any,
) -> Event:
    event: dict[str, Any] = {
        "ref": make_ref(source, message_id),
        "messageId": message_id,
        "source": source,
        "type": kind,
        "userId": user,
        "anonymousId": anonymous,
        "traits": {"email": f"{user}@example.com"} if kind == "identify" and user else {},
        "event": "NPS" if kind == "track" else None,
        "properties": {},
        "previousId": None,
        "timestamp": timestamp,
        "campaignId": None,
    }
    event.update(fields)
    return cast(Event, event)


def stores_for(client: redis.Redis, **overrides: Any) -> Stores:
    settings: Settings = load({}, redis_url="redis://unused", environment="test", **overrides)
    return build_stores(settings, client=client)


def accept(stores: Stores, *events: Event, route: Route | str = Route.HIGH) -> list[str]:
    """Store and queue events the way ingest does (identifies carrying an email, and aliases, take the
    contact route)."""
    admissions = []
    for event in events:
        if event["type"] == "identify" and event["traits"].get("email") and route == "high":
            compare = {"email": event["traits"]["email"]}
            admissions.append(Admission(event, State.RECEIVED, route=Route.CONTACT, compare=compare))
        elif event["type"] == "alias":
            admissions.append(Admission(event, State.RECEIVED, route=Route.CONTACT))
        else:
            admissions.append(Admission(event, State.RECEIVED, route=Route(route)))
    return stores.messages.accept(admissions)


def text(reply: bytes | str | list[bytes | str] | None) -> str:
    """One reply of a ``decode_responses=True`` client (the tests' clients), which is a ``str``."""
    if not isinstance(reply, str):
        raise TypeError(f"expected a decoded string reply, got {reply!r}")
    return reply


def texts(replies: list[bytes | str]) -> list[str]:
    """A list reply (``LRANGE``, ``KEYS``) of a ``decode_responses=True`` client."""
    return [text(reply) for reply in replies]


def text_map(reply: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply (``HGETALL``) of a ``decode_responses=True`` client."""
    return {text(name): text(value) for name, value in reply.items()}


def queued_refs(client: redis.Redis, *queues: str) -> list[str]:
    """Refs in the queues, oldest first (consumers pop from the right)."""
    refs = []
    for queue in queues or ("relay", "relay.low"):
        refs += [taskmessages.ref_of(raw) for raw in reversed(texts(client.lrange(queue, 0, -1)))]
    return refs


def queued_events(client: redis.Redis, *queues: str) -> list[dict[str, Any]]:
    """The events of the queued refs, whole, as a worker loads them."""
    out: list[dict[str, Any]] = []
    for ref in queued_refs(client, *queues):
        event = event_of(client, ref)
        out.append(dict(event) if event is not None else {})
    return out


def status(client: redis.Redis, ref: str) -> dict[str, str]:
    """A status record as the relay reads it: the fields a fresh record leaves out at their defaults."""
    raw = text_map(client.hgetall(keys.message(ref)))
    if not raw:
        return {}
    return {"ref": ref, "queue": "relay", "attempts": "0", "detail": "", "event": "", **raw}


def bytes_client(client: redis.Redis) -> redis.Redis:
    """The same Redis answering bytes: person records are MessagePack, whose strings are stored as they
    are, and a leak scan must read them so."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def stored_values(raw: redis.Redis, key: bytes) -> list[bytes]:
    """Everything a key holds, as bytes: a string; a hash's fields as ``field=value``; the members of a
    list, set or sorted set; ``<type>`` for any other type."""
    kind = cast(bytes, raw.type(key)).decode()
    reads: dict[str, Any] = {
        "string": lambda: [raw.get(key) or b""],
        "hash": lambda: [k + b"=" + v for k, v in cast(dict[bytes, bytes], raw.hgetall(key)).items()],
        "list": lambda: raw.lrange(key, 0, -1),
        "set": lambda: raw.smembers(key),
        "zset": lambda: raw.zrange(key, 0, -1),
    }
    return list(reads[kind]()) if kind in reads else [f"<{kind}>".encode()]
