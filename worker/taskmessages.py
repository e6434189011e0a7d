"""Celery task messages built inside Lua scripts, from one template made here.

Celery's own ``send_task`` costs a Redis round trip per message and cannot be combined with other
writes. Ingest must store the status record, the dedup marker and the task message in one atomic
step (an event answered 200 must be queued, a duplicate must not be); releasing held tracks, retries
coming due, replays and the reconciler must likewise queue messages inside the script that decides
to. So every enqueue goes through one Lua helper (``enqueue`` in ``lua/lib/core.lua``) that fills this
template: Celery's task protocol 2 inside kombu's Redis transport envelope. The task's only argument
is the message ref; the event itself is stored once, beside the status record.

``tests/test_taskmessages.py`` checks the result against what ``send_task`` publishes, and the
integration tests prove that a real worker executes it.
"""

from __future__ import annotations

import json
from typing import Any

IDENTIFY_TASK = "relay.identify"
TRACK_TASK = "relay.track"
ALIAS_TASK = "relay.alias"
TASK_FOR_TYPE = {"identify": IDENTIFY_TASK, "track": TRACK_TASK, "alias": ALIAS_TASK}
# A message's first task id is its ref; the n-th queued again is '<ref>|<n>'. A messageId never holds
# '|' (ingest refuses it), so no requeue id can equal another message's first id.
TASK_ID_SEPARATOR = "|"

# Slots, in the order ``string.format`` fills them (JSON strings arrive already encoded).
_SLOTS = ("BODY", "TASK", "ID", "QUEUE")


def _slot(name: str) -> str:
    return f"\x00{name}\x00"


def _skeleton() -> dict[str, Any]:
    """Only what the worker needs: Celery reads every other header and property with a default.

    A queued message is most of what a backlog costs in Redis, so it carries nothing else: the task
    name and id, the ref as its only argument (what Flower shows: never the event's content), and
    kombu's delivery tag and routing.
    """
    return {
        "body": _slot("BODY"),
        # kombu reads a missing content-encoding as utf-8.
        "content-type": "application/json",
        "headers": {"task": _slot("TASK"), "id": _slot("ID")},
        "properties": {
            "delivery_tag": _slot("ID"),
            "delivery_info": {"exchange": "", "routing_key": _slot("QUEUE")},
        },
    }


def template() -> str:
    """The envelope as a Lua ``string.format`` pattern, ``%s`` per slot in ``_SLOTS`` order (the id twice)."""
    text = json.dumps(_skeleton(), separators=(",", ":")).replace("%", "%%")
    for name in _SLOTS:
        text = text.replace(json.dumps(_slot(name)), "%s")
    return text


TEMPLATE = template()
BODY_SUFFIX = ",{},{}]"


def render(ref: str, kind: str, queue: str, task_id: str) -> str:
    """The same message in Python (tests, and the contract test against ``send_task``)."""
    body = "[" + json.dumps([ref]) + BODY_SUFFIX
    values = (json.dumps(body), json.dumps(TASK_FOR_TYPE[kind]), json.dumps(task_id), json.dumps(task_id),
              json.dumps(queue))  # fmt: skip
    return TEMPLATE % values


def ref_of(message: str) -> str:
    """The ref a queued task message carries."""
    ref: str = json.loads(json.loads(message)["body"])[0][0]
    return ref
