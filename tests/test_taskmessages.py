"""The task messages our Lua scripts push must be the ones Celery itself would publish, field for field."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from celery import Celery

from tests.factories import accept, make_event, stores_for, text
from worker import taskmessages

# Per-message values, and the two we set on purpose: no result backend, so no reply_to and
# ignore_result; argsrepr shows only the message type and ref.
VARYING = {
    "id",
    "root_id",
    "origin",
    "argsrepr",
    "correlation_id",
    "delivery_tag",
    "ignore_result",
    "reply_to",
}


def subset(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where ``ours`` has a key ``theirs`` lacks, or a different value (per-message values aside)."""
    if not isinstance(ours, dict):
        return (
            []
            if ours == theirs or path.rsplit(".", 1)[-1] in VARYING
            else [f"{path}: {ours!r} != {theirs!r}"]
        )
    if not isinstance(theirs, dict):
        return [f"{path}: not an object in send_task's message"]
    problems = []
    for key, value in ours.items():
        if key not in theirs:
            problems.append(f"{path}.{key}: not in send_task's message")
        else:
            problems += subset(value, theirs[key], f"{path}.{key}")
    return problems


def test_lua_built_message_is_a_subset_of_what_send_task_publishes(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Celery reads every header and property it needs with a default; ours carries only what
    differs from those defaults, named and valued exactly as Celery's own messages have them."""
    event = make_event("m-1", properties={"score": 1e-7, "name": "Zoë"})
    (task_id,) = accept(stores_for(redis_client), event)
    ours = json.loads(text(redis_client.rpop("relay") or "{}"))

    app = Celery("probe", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="relay")
    app.send_task(taskmessages.TRACK_TASK, args=[event["ref"]], queue="relay")
    published = json.loads(text(redis_client.rpop("relay") or "{}"))

    assert published["properties"].pop("body_encoding") == "base64"
    assert "body_encoding" not in ours["properties"], "a plain body, readable by kombu as is"
    our_args, our_kwargs, our_embed = json.loads(ours.pop("body"))
    their_args, their_kwargs, their_embed = json.loads(base64.b64decode(published.pop("body")))
    assert (our_args, our_kwargs) == (their_args, their_kwargs) == ([event["ref"]], {})
    assert our_embed == {}
    assert all(value is None for value in their_embed.values())
    assert subset(ours, published) == []
    assert ours["headers"]["task"] == published["headers"]["task"] == taskmessages.TRACK_TASK
    assert ours["headers"]["id"] == task_id == ours["properties"]["delivery_tag"] == event["ref"]
    assert "Zo" not in json.dumps(ours), "event content stays out of the task message (and of Flower)"
    assert len(json.dumps(ours)) < 400, "a queued message is most of what a backlog costs in Redis"


def test_python_and_lua_render_the_same_message(redis_client: redis.Redis) -> None:
    event = make_event('quote"and\\slash/ü', kind="identify")
    (task_id,) = accept(stores_for(redis_client), event)
    raw = text(redis_client.rpop("relay") or "{}")
    assert taskmessages.ref_of(raw) == event["ref"]
    from_lua = json.loads(raw)
    from_python = json.loads(taskmessages.render(event["ref"], "identify", "relay", task_id))
    # The body is JSON inside JSON: the two spell escapes differently (cjson writes \/), and read alike.
    assert json.loads(from_lua.pop("body")) == json.loads(from_python.pop("body"))
    assert from_lua == from_python


def test_each_enqueue_has_its_own_ids(redis_client: redis.Redis) -> None:
    stores = stores_for(redis_client)
    first, second = accept(stores, make_event("a")), accept(stores, make_event("b"))
    assert first != second
    messages = [json.loads(raw) for raw in redis_client.lrange("relay", 0, -1)]
    assert len({m["properties"]["delivery_tag"] for m in messages}) == 2
