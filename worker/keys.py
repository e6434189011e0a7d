"""Redis key names, in one place: Python formats them here and the scripts' generated head holds them.

Per-message, per-identity and per-person keys carry a hash tag (``relay:msg:{k1f2e3d4:abc}``). The
scripts still compute keys from what they read (a released track's status, a person's identities)
and touch the global structures below in the same atomic step, and Celery's Redis transport does not
support Cluster either: the relay needs one Redis (with a replica for failover).

Every key either expires or is one of the bounded global structures in ``BOUNDED`` (checked by
``tests/test_key_audit.py``).
"""

from __future__ import annotations

import hashlib

PREFIX = "relay"

STATS = f"{PREFIX}:stats"
STATS_MINUTE = f"{PREFIX}:stats:m:"
# Each minute's counts are kept six hours: the dashboard's chart of the last hours reads them.
MINUTE_TTL = 6 * 3600 + 300
SCHEDULE = f"{PREFIX}:schedule"
PENDING = f"{PREFIX}:pending"
HOLDS_USERS = f"{PREFIX}:holds:u"
HOLDS_ANONYMOUS = f"{PREFIX}:holds:a"
HELD_COUNT = f"{PREFIX}:held-count"
DEAD = f"{PREFIX}:dead"
DEAD_INDEX = f"{PREFIX}:dead:index"
RECENT = f"{PREFIX}:recent"
PAUSE = f"{PREFIX}:pause-until"
RATE = f"{PREFIX}:rate"
LATENCY = f"{PREFIX}:latency"
BUDGET_DAY = f"{PREFIX}:budget:"
HEARTBEAT = f"{PREFIX}:heartbeat:"
# '<next probe ms>|<since>|<why>' while Promoter refuses the account (401/403/404/405); with a TTL.
ACCOUNT = f"{PREFIX}:account"
# The version of the stored data's layout, and the lock of a migration to it (worker/migrate.py).
SCHEMA = f"{PREFIX}:schema"
MIGRATION_LOCK = f"{PREFIX}:migration-lock"
# Attribute name <-> number, so person records carry a number per attribute (worker/lua/lib/persons.lua).
NAMES = f"{PREFIX}:names"
FEEDBACK_CURSOR = f"{PREFIX}:feedback:cursor"
FEEDBACK_LOCK = f"{PREFIX}:feedback:lock"
NPS_DAY = f"{PREFIX}:nps:day:"
NPS_LATEST = f"{PREFIX}:nps:latest"

# Global keys without a TTL, and why each stays bounded.
BOUNDED: dict[str, str] = {
    STATS: "one counter per type, state and reason",
    SCHEDULE: "one entry per message waiting for a retry (each has a status record with a TTL)",
    PENDING: "one entry per message that should be moving; final and held ones leave it",
    HOLDS_USERS: "one entry per identity with held messages; expiry empties it",
    HOLDS_ANONYMOUS: "one entry per anonymous identity with held messages; expiry empties it",
    HELD_COUNT: "a counter",
    DEAD: "dead letters, pruned after DEAD_LETTER_TTL_SECONDS and capped at DEAD_LETTER_MAX",
    DEAD_INDEX: "the dead letters' index, pruned with them",
    RECENT: "the last 200 message refs",
    LATENCY: "one field per endpoint, bucket and status",
    SCHEMA: "one number",
    NAMES: "two fields per attribute name, at most MAX_NAMES names (worker/scripts.py)",
    FEEDBACK_CURSOR: "one small hash: where the feedback poll stands",
}


class KeyFormat(str):
    """The key of one message, identity or person: call it with the ref, identity or person id."""

    __slots__ = ()

    def __call__(self, part: str) -> str:
        return self % part


message = KeyFormat(PREFIX + ":msg:{%s}")
event = KeyFormat(message + ":event")
history = KeyFormat(message + ":log")
# relay:id:{a:<anonymousId>} names the person the anonymousId belongs to (for ANONYMOUS_ID_TTL_SECONDS).
identity = KeyFormat(PREFIX + ":id:{%s}")
held = KeyFormat(identity + ":held")
barrier = KeyFormat(identity + ":barrier")
repeats = KeyFormat(identity + ":repeats")
# The messages accepted naming this identity (refs scored by when), so a forget finds them all in one
# atomic step; kept as long as the longest-kept status record (a dead letter's).
messages = KeyFormat(identity + ":msgs")
# The anonymousIds a userId was seen with (scored by when, the last few), however long ago their links
# expired: a forget of the userId erases and suppresses what was sent under them too. An anonymousId's
# holds the other way, the userIds it was seen with, whose indexes its records keep alive.
devices = KeyFormat(identity + ":devices")
# A person, named after its userId or, never identified, its anonymousId: relay:person:{u:42}.
person = KeyFormat(PREFIX + ":person:{%s}")
person_waiting = KeyFormat(person + ":waiting")
# A person's anonymousIds and when each was last seen; expires with the newest (worker/lua/lib/persons.lua).
person_anonymous = KeyFormat(person + ":anon")
surveyed = KeyFormat(PREFIX + ":surveyed:{%s}")
budget = KeyFormat(BUDGET_DAY + "%s")
# The person whose contact Promoter accepted with this email (the key part is ``email_digest``), as
# schema 2 wrote it; schema 3 writes ``email_index`` instead, and these expire within PERSON_TTL_SECONDS.
email = KeyFormat(PREFIX + ":email:{%s}")
# A forgotten person's identity (userId, anonymousId, alias id or email) as a keyed hash
# (worker/suppression.py): later events naming it are acknowledged and dropped while it lasts.
suppressed = KeyFormat(PREFIX + ":suppressed:{%s}")
# One forget's progress (worker/forget.py): counts and outcomes only, never whom it forgot (but the
# emails still to remove at Promoter, while that removal is pending).
forget_job = KeyFormat(PREFIX + ":forget:job:{%s}")
# The same index in 65,536 small hashes (``email_slot``): a key per person costs more than its entry.
emails = KeyFormat(PREFIX + ":emails:{%s}")
# What was last sent to Segment for one Promoter feedback id (worker/feedback.py).
feedback_seen = KeyFormat(PREFIX + ":feedback:seen:{%s}")

# What the Lua scripts get as key_<name>(x) functions.
FORMATS: dict[str, KeyFormat] = {
    "message": message,
    "event": event,
    "history": history,
    "identity": identity,
    "held": held,
    "barrier": barrier,
    "repeats": repeats,
    "messages": messages,
    "devices": devices,
    "person": person,
    "person_waiting": person_waiting,
    "person_anonymous": person_anonymous,
    "surveyed": surveyed,
    "email": email,
    "suppressed": suppressed,
    "feedback_seen": feedback_seen,
    "emails": emails,
}


def minute(number: int) -> str:
    return f"{STATS_MINUTE}{number}"


def email_digest(address: str) -> str:
    """The key part of ``email``: 16 hex of SHA-1 over the ASCII-lowercased address.

    SHA-1 because it is the only digest Redis gives its scripts (``redis.sha1hex``), and
    ``bytes.lower`` because it lowercases exactly what Lua's ``string.lower`` does (ASCII only), so the
    script that writes the key and the Python that reads it always agree.
    """
    return hashlib.sha1(address.encode().lower(), usedforsecurity=False).hexdigest()[:16]


EMAIL_BUCKET_DIGITS = 4


def email_slot(address: str) -> tuple[str, str]:
    """Where the email index keeps ``address``: its bucket's key and its field there.

    The first ``EMAIL_BUCKET_DIGITS`` hex digits of ``email_digest`` name the bucket, the rest is the
    field; the value is '<person ref> <day it was written>' (the day lets a bucket drop entries a
    year old, worker/lua/lib/persons.lua ``index_email``).
    """
    digest = email_digest(address)
    return emails(digest[:EMAIL_BUCKET_DIGITS]), digest[EMAIL_BUCKET_DIGITS:]
