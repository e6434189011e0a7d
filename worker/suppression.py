"""Suppression markers: what a forget leaves of a person, so their later events are dropped.

A marker names one identity of a forgotten person (``u:<userId>``, ``a:<anonymousId>``, ``u:<alias
id>`` or ``e:<email>``, the email ASCII-lowercased as the scripts lowercase it) by its HMAC-SHA256
under ``SUPPRESSION_KEY``, never the identity itself: whoever reads Redis cannot tell whom it names,
nor try guesses without the key. Ingest computes the markers of each message and the accept script
drops a message any of whose markers exists, in the same atomic step that would have stored it.

Without a key (or with ``SUPPRESSION_DAYS=0``) no marker is written or looked for: nothing is derived
from another secret behind the operator's back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from worker.events import Event, anonymous_identity, user_identity

EMAIL_PREFIX = "e:"


def email_identity(address: str) -> str:
    return EMAIL_PREFIX + address.strip().encode().lower().decode()


def marker(key: str, identity: str) -> str:
    """The key part of ``keys.suppressed`` for one identity: 32 hex of HMAC-SHA256."""
    return hmac.new(key.encode(), identity.encode(), hashlib.sha256).hexdigest()[:32]


def markers(key: str, identities: Iterable[str]) -> list[str]:
    return sorted({marker(key, identity) for identity in identities}) if key else []


def named_by(event: Event) -> list[str]:
    """The identities that say whose a message is: its userId, alias previousId and email trait, and
    its anonymousId only when it has no userId. A device is shared (a family laptop): an event that
    names a userId is that user's, whoever was forgotten on the same device, as the identity rules have
    it (DESIGN.md)."""
    found = []
    if event.get("userId"):
        found.append(user_identity(str(event["userId"])))
    elif event.get("anonymousId"):
        found.append(anonymous_identity(str(event["anonymousId"])))
    if event.get("previousId"):
        found.append(user_identity(str(event["previousId"])))
        found.append(anonymous_identity(str(event["previousId"])))
    email = (event.get("traits") or {}).get("email")
    if isinstance(email, str) and email.strip():
        found.append(email_identity(email))
    return found
