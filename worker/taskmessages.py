"""Celery task messages built inside Lua scripts, from one template made here.

Celery's own ``send_task`` costs a Redis round trip per message and cannot be combined with other
writes. Ingest must store the status record, the dedup marker and the task message in one atomic
step (an event answered 200 must be queued, a duplicate must not be); releasing held tracks, retries
coming due, replays and the reconciler must likewise queue messages inside the script that decides
to. So every enqueue goes through one Lua helper (``enqueue`` in ``lua/prelude.lua``) that fills this
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
ORIGIN = "promoter-relay"

# Slots, in the order ``string.format`` fills them (JSON strings arrive already encoded).
_SLOTS = ("BODY", "TASK", "ID", "RETRIES", "ROOT", "ARGSREPR", "CORRELATION", "QUEUE", "TAG")


def _slot(name: str) -> str:
    return f"\x00{name}\x00"


def _skeleton() -> dict[str, Any]:
    headers: dict[str, Any] = {
        "lang": "py",
        "task": _slot("TASK"),
        "id": _slot("ID"),
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": _slot("RETRIES"),
        "timelimit": [None, None],
        "root_id": _slot("ROOT"),
        "parent_id": None,
        # Flower shows argsrepr: the message type and ref are what an operator searches for, and
        # the event itself (emails, traits) has no business in a task list.
        "argsrepr": _slot("ARGSREPR"),
        "kwargsrepr": "{}",
        "origin": ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    return {
        "body": _slot("BODY"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": _slot("CORRELATION"),
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": _slot("QUEUE")},
            "priority": 0,
            "body_encoding": None,
            "delivery_tag": _slot("TAG"),
        },
    }


def template() -> str:
    """The envelope as a Lua ``string.format`` pattern: ``%s`` for string slots, ``%d`` for retries."""
    text = json.dumps(_skeleton(), separators=(",", ":")).replace("%", "%%")
    for name in _SLOTS:
        text = text.replace(json.dumps(_slot(name)), "%d" if name == "RETRIES" else "%s")
    return text


TEMPLATE = template()
BODY_SUFFIX = ',{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'


def render(ref: str, kind: str, queue: str, task_id: str, retries: int = 0) -> str:
    """The same message in Python (tests, and the contract test against ``send_task``)."""
    body = "[" + json.dumps([ref]) + BODY_SUFFIX
    task = TASK_FOR_TYPE[kind]
    values: list[Any] = [
        json.dumps(body),
        json.dumps(task),
        json.dumps(task_id),
        retries,
        json.dumps(task_id),
        json.dumps(f"('{kind}', '{ref}')"),
        json.dumps(task_id),
        json.dumps(queue),
        json.dumps(task_id),
    ]
    return TEMPLATE % tuple(values)


def ref_of(message: str) -> str:
    """The ref a queued task message carries."""
    ref: str = json.loads(json.loads(message)["body"])[0][0]
    return ref
