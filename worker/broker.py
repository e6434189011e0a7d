"""Celery task messages built by hand, so that they can be pushed from inside Lua scripts.

Celery's own ``send_task`` costs one Redis round trip per message and cannot be combined with other
writes. Ingest must store the status record, the dedup marker and the task message in one atomic
step (an event answered 200 must be queued, a duplicate must not be), and releasing held tracks must
move them into the queue in the same step that marks the user known. Both need the message as a
string that a script can ``LPUSH``. The format is Celery's task protocol 2 inside kombu's Redis
transport envelope; ``tests/test_broker.py`` checks it against what ``send_task`` produces, and the
integration tests prove that a real worker executes it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

from worker.events import Event

IDENTIFY_TASK = "relay.identify"
TRACK_TASK = "relay.track"

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_for(event: Event) -> str:
    return IDENTIFY_TASK if event["type"] == "identify" else TRACK_TASK


def envelope(
    event: Event, queue: str, *, task: str | None = None, retries: int = 0, task_id: str | None = None
) -> str:
    """Serialize one delivery task for ``event`` as the exact string kombu's Redis transport reads."""
    task_id = task_id or str(uuid.uuid4())
    name = task or task_for(event)
    body = json.dumps([[event], {}, _EMBED], separators=(",", ":"), ensure_ascii=False)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        # Flower shows argsrepr; the message id is what an operator searches for, and the
        # event itself (emails, traits) has no business in a task list.
        "argsrepr": f"('{event['type']}', '{event['messageId']}')",
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    message = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": None,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
