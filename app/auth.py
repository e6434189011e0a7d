"""Who may send events and who may look inside: write keys, webhook signatures, the admin token.

Every comparison is constant-time and every configured key is compared (no early exit on the first
match), so response timing says nothing about how much of a guess was right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from flask import Request


def basic_username(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        # A header value is latin-1 text; b64decode refuses anything but ASCII with a bare ValueError.
        decoded = base64.b64decode(value.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError):
        return None
    return decoded.partition(":")[0] or None


def header_write_key(request: Request) -> str | None:
    """A write key sent in a header: the HTTP Basic username, else ``X-Write-Key``."""
    return basic_username(request) or (request.headers.get("X-Write-Key") or "").strip() or None


def key_matches(candidate: str | None, allowed: Iterable[str]) -> bool:
    if not candidate:
        return False
    supplied = candidate.encode("utf-8")
    matched = False
    for key in allowed:
        matched |= hmac.compare_digest(supplied, key.encode("utf-8"))
    return matched


def signature_matches(secret: str, signed: bytes, signature: str | None) -> bool:
    """Segment's webhook signature: hex HMAC-SHA1 of the exact bytes it sent."""
    if not signature:
        return False
    expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8", "replace"))


def bearer_matches(request: Request, token: str) -> bool:
    if not token:
        return False
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "replace"), token.encode("utf-8"))
