"""A local stand-in for Segment's tracking API, to see what the relay sends back (NPS responses).

It speaks what ``segment-analytics-python`` speaks: ``POST /v1/batch`` (also ``/v1/track`` and
``/v1/identify``), the write key as HTTP Basic user or as ``writeKey`` in the body, gzip bodies, and the
answers Segment gives (200 ``{"success": true}``; a JSON ``{"code", "message"}`` otherwise). Like Segment
it drops a message whose messageId it already has; unlike Segment it keeps every message it received,
marked ``duplicate``, so tests can see resends. ``fail_next`` makes the next requests fail (429 with
``Retry-After``, 5xx) to exercise the client's retries. Control routes live under ``/_receiver/``.
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

JSON = dict[str, Any]
CONTROL_PREFIX = "/_receiver"
MAX_BODY = 500 * 1024


@dataclass
class ReceiverState:
    """Received messages and injected failures, shared by request threads under one lock."""

    write_key: str = field(default="", repr=False)
    fail_next: list[int] = field(default_factory=list)
    retry_after: int = 1
    on_message: Callable[[JSON], None] | None = None
    _messages: list[JSON] = field(default_factory=list, init=False, repr=False)
    _ids: set[str] = field(default_factory=set, init=False, repr=False)
    _requests: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def take_failure(self) -> int | None:
        with self._lock:
            self._requests += 1
            return self.fail_next.pop(0) if self.fail_next else None

    def receive(self, batch: list[JSON]) -> None:
        with self._lock:
            for message in batch:
                message_id = str(message.get("messageId") or "")
                duplicate = bool(message_id) and message_id in self._ids
                self._ids.add(message_id)
                self._messages.append({**message, "duplicate": duplicate, "receivedAt": time.time()})
        if self.on_message is not None:
            for message in batch:
                self.on_message(message)

    def messages(self, unique: bool = False) -> list[JSON]:
        with self._lock:
            return [dict(m) for m in self._messages if not (unique and m["duplicate"])]

    def requests(self) -> int:
        with self._lock:
            return self._requests

    def configure(self, fields: Mapping[str, Any]) -> None:
        fail_next, retry_after = fields.get("fail_next", []), fields.get("retry_after", self.retry_after)
        if not isinstance(fail_next, list) or not all(
            isinstance(s, int) and 400 <= s <= 599 for s in fail_next
        ):
            raise ValueError("fail_next must be a list of HTTP status codes from 400 to 599")
        if not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError("retry_after must be an integer >= 0")
        with self._lock:
            self.fail_next, self.retry_after = list(fail_next), retry_after

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._ids.clear()


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = flask.jsonify(code=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _state() -> ReceiverState:
    state: ReceiverState = flask.current_app.extensions["segment_receiver"]
    return state


def _body() -> tuple[Any, flask.Response | None]:
    raw = flask.request.get_data()
    if flask.request.headers.get("Content-Encoding", "").lower() == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return None, _error(400, "invalid_request", "body is not valid gzip")
    if len(raw) > MAX_BODY:
        return None, _error(413, "request_too_large", "batch larger than 500 KB")
    try:
        return json.loads(raw), None
    except ValueError:
        return None, _error(400, "invalid_request", "body is not JSON")


def _key_of(body: Mapping[str, Any]) -> str:
    header = flask.request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            return base64.b64decode(header[6:]).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return ""
    return str(body.get("writeKey") or "")


api = flask.Blueprint("segment_api", __name__)
control = flask.Blueprint("receiver_control", __name__, url_prefix=CONTROL_PREFIX)


@api.post("/v1/batch")
@api.post("/v1/track")
@api.post("/v1/identify")
def receive() -> flask.Response:
    state = _state()
    failure = state.take_failure()
    if failure is not None:
        headers = {"Retry-After": str(state.retry_after)} if failure == 429 else None
        return _error(failure, "injected", f"injected failure {failure}", headers)
    body, problem = _body()
    if problem is not None:
        return problem
    if not isinstance(body, dict):
        return _error(400, "invalid_request", "expected a JSON object")
    if state.write_key and not hmac.compare_digest(_key_of(body).encode(), state.write_key.encode()):
        return _error(401, "unauthorized", "invalid write key")
    kind = flask.request.path.rsplit("/", 1)[-1]
    batch = body.get("batch") if kind == "batch" else [{"type": kind, **body}]
    if not isinstance(batch, list) or not all(isinstance(m, dict) for m in batch):
        return _error(400, "invalid_request", "batch must be a list of objects")
    state.receive([{k: v for k, v in m.items() if k != "writeKey"} for m in batch])
    return flask.jsonify(success=True)


@control.get("/messages")
def list_messages() -> JSON:
    unique = flask.request.args.get("unique", "") not in ("", "0", "false")
    return {"messages": _state().messages(unique)}


@control.delete("/messages")
def reset_messages() -> JSON:
    _state().reset()
    return {"messages": []}


@control.post("/config")
def set_config() -> flask.Response | JSON:
    fields = flask.request.get_json(silent=True)
    try:
        _state().configure(fields if isinstance(fields, dict) else {})
    except ValueError as exc:
        return _error(400, "invalid_request", str(exc))
    return {"fail_next": _state().fail_next, "retry_after": _state().retry_after}


def create_receiver(state: ReceiverState | None = None) -> flask.Flask:
    app = flask.Flask(__name__)
    app.extensions["segment_receiver"] = ReceiverState() if state is None else state
    app.register_blueprint(api)
    app.register_blueprint(control)
    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access line per batch; ``on_message`` says what arrived, if anyone asked."""


class ReceiverServer:
    """The receiver on a real socket in a daemon thread (tests; ``promoter-relay dev``)."""

    def __init__(self, state: ReceiverState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = ReceiverState() if state is None else state
        self.host, self.port = host, port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("ReceiverServer is not started")
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> Self:
        if self._server is None:
            app = create_receiver(self.state)
            self._server = make_server(
                self.host, self.port, app, threaded=True, request_handler=_QuietHandler
            )
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="segment-receiver", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def describe(message: Mapping[str, Any]) -> str:
    """One line for a terminal: who and what, never the email a stranger's identify carries."""
    who = (
        f"userId={message['userId']}"
        if message.get("userId")
        else f"anonymousId={message.get('anonymousId')}"
    )
    if message.get("type") == "track":
        props = message.get("properties") or {}
        what = f'track "{message.get("event")}" score={props.get("score")} ({props.get("category")})'
    else:
        traits = message.get("traits") or {}
        what = f"{message.get('type')} nps_score={traits.get('nps_score')} ({traits.get('nps_category')})"
    return f"segment receiver: {what} {who}"
