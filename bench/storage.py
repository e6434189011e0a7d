"""The storage ceiling, from its own process: ``python -m bench.storage REDIS_URL QUEUE MODE SECONDS``.

Modes, all with the task messages ingest would queue for the same identify/track payloads:

* ``lpush``: raw pipelined ``LPUSH`` of 100 prebuilt messages per round trip (what Redis can take);
* ``accept100``: ``Ledger.accept`` with 100 admissions per call (our one Lua script per batch request);
* ``accept1``: ``Ledger.accept`` with one admission per call, one connection (the per-event script cost).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid

import redis

from app.schemas import load_message, to_event
from worker import broker
from worker.events import Event
from worker.ledger import Admission, Ledger


def sample_events(count: int, salt: str) -> list[Event]:
    """Identify/track pairs shaped exactly as ingest normalizes the load generator's bodies."""
    events = []
    common = {"context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}
    for i in range(count // 2):
        user = f"{salt}-{i}"
        traits = {"email": f"u{i}.{salt}@example.com", "name": "Ada Lovelace", "plan": "pro"}
        identify = {**common, "messageId": f"{user}-i", "userId": user, "traits": traits}
        events.append(to_event(load_message(identify, "identify")))
        properties = {"plan": "pro", "total": 42.5, "items": 3}
        track = {**common, "messageId": f"{user}-t", "userId": user, "event": "NPS Survey"}
        events.append(to_event(load_message({**track, "properties": properties}, "track")))
    return events


def main() -> None:
    url, queue, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = redis.Redis.from_url(url, decode_responses=True)
    salt = uuid.uuid4().hex[:8]
    events = sample_events(200, salt)
    messages = [broker.envelope(event, queue) for event in events]
    ledger = Ledger(client, 900, queue)
    per_call = 1 if mode == "accept1" else 100
    # Fresh message ids are prepared before the clock starts, so the loop measures Redis, not Python.
    fresh = (
        Admission({**event, "messageId": f"{event['messageId']}-{n}"}, "received", "", message)
        for n in itertools.count()
        for event, message in zip(events, messages, strict=True)
    )
    prepared = [list(itertools.islice(fresh, per_call)) for _ in range(int(100_000 / per_call))]
    done, started = 0, time.perf_counter()
    deadline = started + seconds
    for batch in prepared:
        if time.perf_counter() > deadline:
            break
        if mode == "lpush":
            client.lpush(queue, *(item.message or "" for item in batch))
        else:
            ledger.accept(batch)
        done += len(batch)
    elapsed = time.perf_counter() - started
    client.delete(queue)
    print("BENCH-RESULT " + json.dumps({"events": done, "seconds": elapsed, "events_per_s": done / elapsed}))


if __name__ == "__main__":
    main()
