"""Segment data -> Promoter.io request bodies, as pure functions.

Promoter's v1 attributes are a flat ``{name: string}`` map whose names may hold only letters, digits,
underscore and space; dicts and lists are silently not stored. Segment traits and properties are
arbitrary nested JSON. Everything here exists to bridge the two deterministically, so that the same
trait always lands in the same attribute whichever SDK or casing sent it, and so that a body built
today from a dead letter equals the one built when the message first arrived.

Choices (the API documents none of them):

* Names are lower snake_case: ``planName``, ``plan-name``, ``Plan Name`` and ``plan.name`` all become
  ``plan_name``. Spaces are legal at Promoter but are folded too, so one trait never splits in two.
  Accents are stripped (``prénom`` -> ``prenom``); other non-ASCII characters act as separators.
* Numbers render like JSON without a type: ``3.0`` -> ``"3"`` (JavaScript senders cannot tell 3 from
  3.0), other floats in plain positional notation (``1e-7`` -> ``"0.0000001"``), never exponent form,
  so Promoter's filters compare what people typed. NaN and infinities are dropped.
* Keys that look like credentials (``password``, ``secret``, ``token``, ``jwt``, ``api_key``,
  ``private_key``, ``authorization``, ``cookie``, card numbers, ``iban``, ``pin`` ...) are dropped at
  every nesting level: an NPS tool has no use for them, and a third-party copy of a secret is a leak.
  ``TRAITS_DENY`` adds names or patterns; ``TRAITS_ALLOW``, when set, forwards only the names it lists.
* Money is ``Decimal``, rendered with two decimals (``"12.50"``); the default currency is ``USD``
  (Segment's own default for e-commerce events).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any

MAX_VALUE_LENGTH = 1000
MAX_NAME_LENGTH = 100
# Deeper than this, a dict is kept as one JSON attribute rather than a swarm of long names.
MAX_DEPTH = 4
DEFAULT_CURRENCY = "USD"
CONTACT_FIELDS: frozenset[str] = frozenset({"email", "first_name", "last_name"})

_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_SENSITIVE = re.compile(
    r"(^|_)(password|passwd|passphrase|pwd|secret|secrets|token|tokens|jwt|bearer|api_?key|apikey"
    r"|private_?key|privkey|signing_?key|authorization|credentials?|cookie|cookies|session_?id"
    r"|otp|totp|mfa_code|passcode|pin|ssn|social_security|cvv|cvc|card_number|credit_card|iban|bic"
    r"|routing_number|account_number)(_|$)"
)
_CENT = Decimal("0.01")


def attribute_name(key: str) -> str:
    """A legal Promoter attribute name for ``key``, or "" when nothing usable is left (callers drop it)."""
    decomposed = unicodedata.normalize("NFKD", key)
    text = "".join(char for char in decomposed if not unicodedata.combining(char))
    text = _CAMEL.sub(r"\1_\2", _ACRONYM.sub(r"\1_\2", text))
    return _SEPARATORS.sub("_", text).strip("_").lower()[:MAX_NAME_LENGTH].rstrip("_")


def is_sensitive(name: str) -> bool:
    """Whether an (already normalized) attribute name looks like a credential we must not forward."""
    return bool(_SENSITIVE.search(name))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested JSON as Promoter's flat string attributes; later keys win when two names collide."""
    out: dict[str, str] = {}
    _flatten_into(out, data, attribute_name(prefix) if prefix else "", 0)
    return out


def _flatten_into(out: dict[str, str], data: Mapping[str, Any], prefix: str, depth: int) -> None:
    for key, value in data.items():
        name = attribute_name(str(key))
        if not name or is_sensitive(name):
            continue
        full = f"{prefix}_{name}"[:MAX_NAME_LENGTH].rstrip("_") if prefix else name
        # {"api": {"key": ...}} would otherwise arrive as api_key.
        if is_sensitive(full):
            continue
        if isinstance(value, Mapping) and depth < MAX_DEPTH:
            _flatten_into(out, value, full, depth + 1)
        elif (text := render(value)) is not None:
            out[full] = text


def render(value: Any) -> str | None:
    """One JSON value as an attribute string, or None when there is nothing worth storing."""
    if value is None:
        return None
    for kind, how in _RENDERERS:
        if isinstance(value, kind):
            text = how(value)
            return None if text is None else _clip(text)
    return _clip(str(value))


def _render_float(value: float) -> str | None:
    return _plain(Decimal(repr(value))) if math.isfinite(value) else None


def _render_list(value: list[Any] | tuple[Any, ...]) -> str:
    if any(isinstance(item, Mapping | list | tuple) for item in value):
        return _json(value)
    return ", ".join(text for item in value if (text := render(item)) is not None)


# bool before int: a bool is an int.
_RENDERERS: tuple[tuple[Any, Any], ...] = (
    (bool, lambda v: "true" if v else "false"),
    (int, str),
    (float, _render_float),
    (Decimal, lambda v: _plain(v) if v.is_finite() else None),
    (str, lambda v: v),
    (datetime | date | time, lambda v: v.isoformat()),
    (list | tuple, _render_list),
    (Mapping, lambda v: _json(v)),
)


def _plain(number: Decimal) -> str:
    """Positional notation, and integral values without a fractional part (``3.0`` -> ``3``)."""
    if number == number.to_integral_value():
        number = number.quantize(Decimal(1)) if number.adjusted() < 28 else number
    text = format(number, "f")
    return "0" if text == "-0" else text


def _json(value: Any) -> str:
    return json.dumps(_scrub(value), default=str, ensure_ascii=False, separators=(",", ":"))


def _scrub(value: Any) -> Any:
    """Drop credential-like keys and nulls inside values we keep as JSON text."""
    if isinstance(value, Mapping):
        return {
            key: _scrub(item)
            for key, item in value.items()
            if item is not None and not is_sensitive(attribute_name(str(key)))
        }
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def _clip(text: str) -> str:
    return text[:MAX_VALUE_LENGTH]


def _text(value: Any) -> str:
    rendered = render(value)
    return rendered.strip() if rendered is not None else ""


def _names(source: Mapping[str, Any], *keys: str) -> str:
    return next((text for key in keys if (text := _text(source.get(key)))), "")


@dataclass(frozen=True)
class TraitFilter:
    """``TRAITS_ALLOW`` / ``TRAITS_DENY``: patterns over attribute names as the relay writes them."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def keeps(self, name: str) -> bool:
        if any(fnmatchcase(name, pattern) for pattern in self.deny):
            return False
        return not self.allow or any(fnmatchcase(name, pattern) for pattern in self.allow)


NO_FILTER = TraitFilter()


def contact_fields(traits: Mapping[str, Any], only: TraitFilter = NO_FILTER) -> dict[str, str]:
    """An identify's traits as the person record's fields: ``email``, ``first_name``, ``last_name``
    and ``a:<attribute>``. Absent or empty values are left out, so they never erase a known one.
    """
    fields = contact_identity(traits)
    for name, value in flatten(traits).items():
        if name not in CONTACT_FIELDS and only.keeps(name):
            fields[f"a:{name}"] = value
    return fields


def contact_identity(traits: Mapping[str, Any]) -> dict[str, str]:
    """Just the contact fields an identify carries (email and names): what decides at ingest whether
    it may change who the contact is."""
    fields: dict[str, str] = {}
    if email := _text(traits.get("email")):
        fields["email"] = email
    if first := _names(traits, "firstName", "first_name"):
        fields["first_name"] = first
    if last := _names(traits, "lastName", "last_name"):
        fields["last_name"] = last
    return fields


def contact_body(fields: Mapping[str, str], contact_list_ids: Sequence[int]) -> dict[str, Any]:
    """The ``POST /contacts/`` body for a person's fields (``f:`` contact fields and attributes,
    ``o:`` order attributes, which win over a trait of the same name).

    Empty names are left out rather than sent as "", because an upsert would then erase the name
    Promoter already has.
    """
    email = fields.get("f:email", "")
    if not email:
        raise ValueError("a Promoter contact needs an email")
    body: dict[str, Any] = {"email": email}
    if first := fields.get("f:first_name"):
        body["first_name"] = first
    if last := fields.get("f:last_name"):
        body["last_name"] = last
    if contact_list_ids:
        body["contact_list"] = [int(list_id) for list_id in contact_list_ids]
    attributes = {name[4:]: value for name, value in fields.items() if name.startswith("f:a:")}
    attributes.update({name[2:]: value for name, value in fields.items() if name.startswith("o:")})
    body["attributes"] = attributes
    return body


def survey_body(
    campaign_id: int, contact: Mapping[str, Any], properties: Mapping[str, Any], event_name: str
) -> dict[str, Any]:
    """The ``POST /v2/survey/`` body: the known contact plus the track's properties as survey attributes.

    ``event`` is added last so the survey always says which event triggered it, even when a property
    of the same name exists.
    """
    person: dict[str, Any] = {"email": _text(contact.get("email"))}
    if first := _names(contact, "first_name", "firstName"):
        person["first_name"] = first
    if last := _names(contact, "last_name", "lastName"):
        person["last_name"] = last
    person["attributes"] = {}
    attributes = flatten(properties)
    if event_name:
        attributes["event"] = _clip(event_name)
    return {"campaign_id": int(campaign_id), "contact": person, "attributes": attributes}


# --- orders -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """One order as the person record keeps it: counted once per ``order_id``, money in cents."""

    order_id: str
    cents: int
    currency: str
    timestamp: str

    def as_json(self, version: str) -> dict[str, Any]:
        """As the track script reads it; ``version`` is its report's (``events.version``)."""
        return {"id": self.order_id, "version": version, "currency": self.currency, "cents": self.cents,
                "date": self.timestamp}  # fmt: skip


def _money(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _cents(number: Decimal) -> Decimal | None:
    try:
        return number.quantize(_CENT, rounding=ROUND_HALF_UP)
    except ArithmeticError:  # more digits than the context holds: not a real amount
        return None


def order_total(properties: Mapping[str, Any]) -> Decimal | None:
    """What the customer paid: Segment's ``total`` (revenue plus tax and shipping, less discounts),
    else ``revenue``, else the sum of the products' ``price`` x ``quantity``."""
    for key in ("total", "revenue"):
        if (amount := _money(properties.get(key))) is not None:
            return _cents(amount)
    products = properties.get("products")
    if not isinstance(products, list):
        return None
    priced = [
        (price, _money(product.get("quantity")))
        for product in products
        if isinstance(product, Mapping) and (price := _money(product.get("price"))) is not None
    ]
    if not priced:
        return None
    try:
        total = sum((price * (1 if qty is None else qty) for price, qty in priced), Decimal(0))
    except ArithmeticError:  # 1e500000 x 1e500000 overflows Decimal: no real amount, left out
        return None
    return _cents(total)


_CURRENCY = re.compile(r"[^A-Z0-9]")
MAX_CENTS = 2**53 // 1000


def order_of(properties: Mapping[str, Any], message_id: str, timestamp: str) -> Order:
    """The order an "Order Completed" describes; its id is ``order_id`` (Segment's e-commerce spec),
    else the message id. A currency is kept as a legal attribute-name part (``EUR``), default USD."""
    order_id = _names(properties, "order_id", "orderId") or message_id
    total = order_total(properties) or Decimal(0)
    cents = int(total * 100)
    if abs(cents) > MAX_CENTS:
        cents = 0
    currency = _CURRENCY.sub("", _text(properties.get("currency")).upper())[:10] or DEFAULT_CURRENCY
    return Order(order_id[:200], cents, currency, timestamp)
