"""The storage ceiling, from its own process: ``python -m bench.storage REDIS_URL QUEUE MODE SECONDS``.

Modes, all with the task messages ingest would queue for the same identify/track payloads:

* ``lpush``: raw pipelined ``LPUSH`` of 100 prebuilt messages per round trip (what Redis can take);
* ``accept100``: ``Messages.accept`` with 100 admissions per call (our one Lua script per batch request);
* ``accept1``: ``Messages.accept`` with one admission per call, one connection (the per-event script cost).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import redis

from app.admission import admission_of
from app.fastpath import load_message
from worker import taskmessages
from worker.events import Event, make_ref, source_of_key
from worker.messages import Admission
from worker.settings import load
from worker.stores import build_stores

SETTINGS = load({}, redis_url="redis://unused", environment="test", status_ttl_seconds=900)
SOURCE = source_of_key("bench-write-key")


def sample_events(count: int, salt: str) -> list[Event]:
    """Identify/track pairs shaped exactly as ingest normalizes the load generator's bodies."""
    events = []
    common = {"context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}
    for i in range(count // 2):
        user = f"{salt}-{i}"
        traits = {"email": f"u{i}.{salt}@example.com", "name": "Ada Lovelace", "plan": "pro"}
        identify = {**common, "messageId": f"{user}-i", "userId": user, "traits": traits}
        events.append(admit(identify, "identify").event)
        properties = {"plan": "pro", "total": 42.5, "items": 3}
        track = {**common, "messageId": f"{user}-t", "userId": user, "event": "NPS Survey"}
        events.append(admit({**track, "properties": properties}, "track").event)
    return events


def admit(raw: dict[str, Any], kind: str) -> Admission:
    """A body as ingest admits it: validated, reduced to an event, routed."""
    return admission_of(load_message(raw, kind), SOURCE, SETTINGS, webhook=False)


def renamed(admission: Admission, n: int) -> Admission:
    event = dict(admission.event)
    event["messageId"] = f"{event['messageId']}-{n}"
    event["ref"] = make_ref(SOURCE, str(event["messageId"]))
    return Admission(event, admission.state, admission.detail, admission.route, admission.compare)  # type: ignore[arg-type]


def main() -> None:
    url, queue, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = redis.Redis.from_url(url, decode_responses=True)
    salt = uuid.uuid4().hex[:8]
    bodies: list[tuple[str, dict[str, Any]]] = []
    for i in range(100):
        traits = {"email": f"u{i}.{salt}@example.com", "name": "Ada Lovelace", "plan": "pro"}
        bodies.append(("identify", {"messageId": f"{salt}-{i}-i", "userId": f"{salt}-{i}", "traits": traits}))
        properties = {"plan": "pro", "total": 42.5, "items": 3}
        track = {"messageId": f"{salt}-{i}-t", "userId": f"{salt}-{i}", "event": "NPS Survey"}
        bodies.append(("track", {**track, "properties": properties}))
    admissions = [admit(body, kind) for kind, body in bodies]
    messages = build_stores(replace(SETTINGS, queue_name=queue), client=client).messages
    per_call = 1 if mode == "accept1" else 100
    # Fresh message ids are prepared between calls, off the clock, so the time is Redis's, not Python's;
    # and only as many as the run takes (preparing 100,000 up front took longer than the run).
    fresh = (renamed(admission, n) for n in itertools.count() for admission in admissions)
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        batch = list(itertools.islice(fresh, per_call))
        rendered = [
            taskmessages.render(a.event["ref"], a.event["type"], queue, "t") for a in batch if mode == "lpush"
        ]
        started = time.perf_counter()
        if mode == "lpush":
            client.lpush(queue, *rendered)
        else:
            messages.accept(batch)
        elapsed += time.perf_counter() - started
        done += len(batch)
    client.delete(queue, f"{queue}.low")
    print("BENCH-RESULT " + json.dumps({"events": done, "seconds": elapsed, "events_per_s": done / elapsed}))


if __name__ == "__main__":
    main()
