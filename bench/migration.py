"""How long the migration from ece91c4's layout takes, and what it costs Redis: ``python -m bench.migration``.

It starts its own redis-server, writes N people directly in schema 1 (ece91c4's layout, as
``tests/upgrade/snapshot-ece91c4.json`` shows it: a person hash with 3 contact fields and 10 attributes,
each with its version, what Promoter has and the fingerprint; an ids set with a userId and an
anonymousId and both links; every fourth person one order), through pipelines rather than the old
scripts (the old code is not importable beside the new), then times ``worker.migrate.migrate`` and
reads Redis' memory before, at its peak and after. Prints one ``BENCH-RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from app.devtools.processes import EmbeddedRedis
from worker import migrate
from worker.settings import load

YEAR = 365 * 86400
ATTRIBUTES = 10


def load_v1(client: redis.Redis, people: int, batch: int = 2000) -> None:
    """``people`` persons as ece91c4 stored them (see the module docstring)."""
    now = 1_800_000_000
    pipe = client.pipeline(transaction=False)
    for n in range(1, people + 1):
        person = f"relay:person:{{{n}}}"
        version = f"{(now - n) * 1000:015d}|k1a2b3c4d:m-{n}"
        email = f"user{n}@example.com"
        fields: dict[Any, Any] = {
            "rev": 1, "created": now, "synced_rev": 1, "synced_fp": f"{n:040x}",
            "synced_by": f"k1a2b3c4d:m-{n}", "contact_id": n, "s:email": email,
            "s:first_name": "Ada", "s:last_name": "Lovelace",
        }  # fmt: skip
        for name, value in (
            ("email", f"user{n}@example.com"),
            ("first_name", "Ada"),
            ("last_name", "Lovelace"),
        ):
            fields[f"f:{name}"], fields[f"v:{name}"] = value, version
        for a in range(ATTRIBUTES):
            fields[f"f:a:attribute_{a}"], fields[f"v:a:attribute_{a}"] = f"value {a} of {n}", version
        if n % 4 == 0:
            order = f"o-{n}"
            pipe.hset(
                f"{person}:orders",
                order,
                f"{(now - n) * 1000}|EUR|1250|k1a2b3c4d:m-o{n}|2027-01-01T00:00:00.000Z",
            )
            pipe.expire(f"{person}:orders", YEAR)
            fields |= {"o:order_count": "1", "o:last_order_id": order, "o:last_order_total": "12.50",
                       "o:last_order_currency": "EUR", "o:last_order_date": "2027-01-01T00:00:00.000Z",
                       "o:lifetime_revenue_eur": "12.50"}  # fmt: skip
        pipe.hset(person, mapping=fields)
        pipe.expire(person, YEAR)
        pipe.sadd(f"{person}:ids", f"u:user{n}", f"a:anon{n}")
        pipe.expire(f"{person}:ids", YEAR)
        pipe.set(f"relay:id:{{u:user{n}}}", n, ex=YEAR)
        pipe.set(f"relay:id:{{a:anon{n}}}", n, ex=86400)
        if n % batch == 0:
            pipe.execute()
    pipe.set("relay:person-seq", people)
    pipe.execute()


def used(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    return {"used": int(info["used_memory"]), "peak": int(info["used_memory_peak"])}


def measure(people: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedRedis(Path(folder)).start()
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            started = time.monotonic()
            load_v1(client, people)
            loaded_seconds = time.monotonic() - started
            client.config_resetstat()
            before = used(client)
            client.memory_purge()
            started = time.monotonic()
            report = migrate.migrate(client, load({}, redis_url=server.url, environment="bench"))
            seconds = time.monotonic() - started
            after = used(client)
            keys_after = client.dbsize()
        finally:
            server.stop()
    return {
        "people": people,
        "load_seconds": round(loaded_seconds, 1),
        "migration_seconds": round(seconds, 1),
        "people_per_second": round(people / seconds),
        "redis_bytes_before": before["used"],
        "redis_bytes_peak": after["peak"],
        "redis_bytes_after": after["used"],
        "keys_after": keys_after,
        "migrator_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "counts": report.steps.get(2, {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100_000)
    result = measure(parser.parse_args().people)
    print("BENCH-RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
