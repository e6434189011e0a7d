"""Reading request bodies within Segment's limits, before any JSON parser sees them.

The limits are enforced on the bytes actually read (never trusting Content-Length alone) and on the
decompressed size of gzip bodies, so a small gzip bomb cannot make the process allocate gigabytes.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any

from flask import Request

MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 2500
MAX_DEPTH = 64


class PayloadError(Exception):
    """The body cannot be used; ``status`` is the 4xx to answer and ``errors`` the field errors."""

    def __init__(self, status: int, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


def read_body(request: Request) -> bytes:
    declared = request.content_length
    if declared is not None and declared > MAX_REQUEST_BYTES:
        raise PayloadError(413, {"_request": [f"Request body exceeds {MAX_REQUEST_BYTES} bytes."]})
    raw = request.stream.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise PayloadError(413, {"_request": [f"Request body exceeds {MAX_REQUEST_BYTES} bytes."]})
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise PayloadError(415, {"_request": [f"Unsupported Content-Encoding {encoding!r}."]})
    return _gunzip(raw)


def _gunzip(raw: bytes) -> bytes:
    """Every member of a gzip body (gzip allows several, one after another), within the size limit;
    bytes after the last member that are not gzip are refused rather than silently dropped."""
    body = b""
    rest = raw
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body += inflater.decompress(rest, MAX_REQUEST_BYTES + 1 - len(body))
        except zlib.error:
            raise PayloadError(400, {"_request": ["Body is not valid gzip."]}) from None
        if len(body) > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
            raise PayloadError(413, {"_request": [f"Decompressed body exceeds {MAX_REQUEST_BYTES} bytes."]})
        if not inflater.eof:
            raise PayloadError(400, {"_request": ["Body is not valid gzip."]})
        rest = inflater.unused_data
    return body


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise ValueError(f"number {token[:40]} is out of range")
    return value


def _encodable(document: Any) -> bool:
    """Escaped surrogate halves (``"\\ud800"``) parse, but cannot be stored or sent as UTF-8."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, bounded nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(400, {"_request": ["Body is not valid UTF-8."]}) from None
    if not text.strip():
        raise PayloadError(400, {"_request": ["Body is empty."]})
    try:
        document = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        # Nesting needs one bracket per level: a body with few of them cannot be too deep.
        too_deep = text.count("{") + text.count("[") > MAX_DEPTH and _depth(document) > MAX_DEPTH
    except RecursionError:
        too_deep = True
    except ValueError as error:
        raise PayloadError(400, {"_request": [f"Invalid JSON: {str(error)[:200]}"]}) from None
    if too_deep:
        raise PayloadError(400, {"_request": [f"JSON nests deeper than {MAX_DEPTH} levels."]})
    if _SURROGATE_ESCAPE.search(text) and not _encodable(document):
        raise PayloadError(
            400, {"_request": ["JSON contains an unpaired surrogate escape (not valid Unicode)."]}
        )
    return document


def _depth(value: Any) -> int:
    """Nesting depth, walked iteratively so that a hostile document cannot exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in node if isinstance(child, dict | list))
    return deepest


def event_size(item: Any) -> int:
    return len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def first_element_bytes(text: str) -> bytes:
    """The raw bytes of the first element of a JSON array, exactly as the sender serialized them.

    Segment signs a batch by the first element's own serialization; re-serializing it would turn
    ``1e-7`` into ``1e-07`` and break the signature.
    """
    start = text.index("[") + 1
    while text[start] in " \t\r\n":
        start += 1
    _, end = json.JSONDecoder().raw_decode(text, start)
    return text[start:end].encode("utf-8")
