"""Bench-only comparison servers.

* ``bare_app()``: the ceiling of the stack, a Flask endpoint that reads the body and answers 200.
* ``durable_app()``: the honest reference for ingest: a Flask endpoint that parses the JSON body and
  stores it with one ``LPUSH`` before answering 200 (durable, but no validation, dedup or status).
* ``deduplicating_app()``: the durable endpoint plus the least of the relay's guarantees, that a
  message sent twice is queued once: one script per request sets a marker per messageId and pushes
  only the new messages (no validation, status, routing or counters).
* ``naive_app()``: what the relay avoids, a handler that calls Promoter inline (one contact upsert per
  request, synchronously) and answers only after Promoter did.
* ``python -m bench.apps PORT LATENCY_MS``: the sandbox on werkzeug's threaded server, as the tests and
  ``promoter-relay dev`` run it, for the sandbox-ceiling comparison.
"""

from __future__ import annotations

import json
import os
import sys
import time

import flask
import redis
import requests
from requests.adapters import HTTPAdapter

from bench.infra import SANDBOX_KEY


def bare_app() -> flask.Flask:
    app = flask.Flask("bench-bare")

    @app.post("/v1/<kind>")
    def ingest(kind: str) -> flask.Response:  # noqa: ARG001 - Flask passes the path variable
        flask.request.get_data()
        return flask.jsonify(success=True)

    return app


def durable_app() -> flask.Flask:
    app = flask.Flask("bench-durable")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    queue = os.environ.get("RELAY_QUEUE", "bench") + ".durable"

    @app.post("/v1/<kind>")
    def ingest(kind: str) -> flask.Response:  # noqa: ARG001 - Flask passes the path variable
        document = json.loads(flask.request.get_data())
        client.lpush(queue, json.dumps(document))
        return flask.jsonify(success=True)

    return app


# KEYS: one marker per message; ARGV[1]: the queue, ARGV[2..]: the messages. Returns how many were new.
_DEDUP_PUSH = """
local new = {}
for i, marker in ipairs(KEYS) do
  if redis.call('SET', marker, '1', 'NX', 'EX', 900) then new[#new + 1] = ARGV[i + 1] end
end
if #new > 0 then redis.call('LPUSH', ARGV[1], unpack(new)) end
return #new
"""


def deduplicating_app() -> flask.Flask:
    app = flask.Flask("bench-dedup")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    queue = os.environ.get("RELAY_QUEUE", "bench") + ".dedup"
    push = client.register_script(_DEDUP_PUSH)

    @app.post("/v1/<kind>")
    def ingest(kind: str) -> flask.Response:
        document = json.loads(flask.request.get_data())
        messages = document["batch"] if kind == "batch" else [document]
        markers = [f"{queue}:seen:{message['messageId']}" for message in messages]
        push(keys=markers, args=[queue, *(json.dumps(message) for message in messages)])
        return flask.jsonify(success=True)

    return app


def naive_app() -> flask.Flask:
    app = flask.Flask("bench-naive")
    url = os.environ["PROMOTER_API_URL"].rstrip("/") + "/contacts/"
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=16, max_retries=0))
    headers = {"Authorization": f"Token {SANDBOX_KEY}"}

    @app.post("/v1/<kind>")
    def ingest(kind: str) -> tuple[flask.Response, int]:  # noqa: ARG001 - Flask passes the path variable
        message = flask.request.get_json(force=True)
        traits = message.get("traits") or {}
        email = traits.get("email") or f"{message.get('userId')}@example.com"
        try:
            answer = session.post(url, json={"email": email}, headers=headers, timeout=10)
        except requests.RequestException:
            return flask.jsonify(success=False), 502
        return flask.jsonify(success=answer.ok), 200 if answer.ok else 502

    return app


def main() -> None:
    from app.devtools.sandbox import SandboxServer, SandboxState

    port, latency_ms = int(sys.argv[1]), float(sys.argv[2])
    with SandboxServer(SandboxState(api_key=SANDBOX_KEY, latency_ms=latency_ms), port=port):
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
