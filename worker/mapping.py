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
* Keys that look like credentials (``password``, ``secret``, ``api_key``, ``access_token``, card
  numbers ...) are dropped at every nesting level: an NPS tool has no use for them, and a
  third-party copy of a secret is a leak.
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
    r"(^|_)(password|passwd|pwd|secret|api_?key|access_token|refresh_token|auth_token|ssn|cvv|cvc"
    r"|card_number|credit_card)(_|$)"
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
        if isinstance(value, Mapping) and depth < MAX_DEPTH:
            _flatten_into(out, value, full, depth + 1)
        elif (text := render(value)) is not None:
            out[full] = text


def render(value: Any) -> str | None:
    """One JSON value as an attribute string, or None when there is nothing worth storing."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _clip(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _clip(_plain(Decimal(repr(value))))
    if isinstance(value, Decimal):
        return _clip(_plain(value)) if value.is_finite() else None
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, datetime | date | time):
        return _clip(value.isoformat())
    if isinstance(value, list | tuple):
        if any(isinstance(item, Mapping | list | tuple) for item in value):
            return _clip(_json(value))
        return _clip(", ".join(text for item in value if (text := render(item)) is not None))
    if isinstance(value, Mapping):
        return _clip(_json(value))
    return _clip(str(value))


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


def contact_body(
    traits: Mapping[str, Any],
    contact_list_ids: Sequence[int],
    extra_attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``POST /contacts/`` body for an identify's traits.

    Empty names are left out rather than sent as "", because an upsert would then erase the name
    Promoter already has. ``email``/``first_name``/``last_name`` are contact fields, so they are not
    repeated among the attributes.
    """
    email = _text(traits.get("email"))
    if not email:
        raise ValueError("a Promoter contact needs an email")
    body: dict[str, Any] = {"email": email}
    if first := _names(traits, "firstName", "first_name"):
        body["first_name"] = first
    if last := _names(traits, "lastName", "last_name"):
        body["last_name"] = last
    if contact_list_ids:
        body["contact_list"] = [int(list_id) for list_id in contact_list_ids]
    attributes = {name: value for name, value in flatten(traits).items() if name not in CONTACT_FIELDS}
    for key, value in (extra_attributes or {}).items():
        if name := attribute_name(key):
            attributes[name] = _clip(value)
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
class OrderTotals:
    """A user's order history as Promoter attributes see it; ``last_order_*`` are rendered strings."""

    count: int = 0
    revenue: Decimal = Decimal("0.00")
    last_order_id: str = ""
    last_order_total: str = ""
    last_order_currency: str = ""
    last_order_date: str = ""

    @classmethod
    def from_hash(cls, fields: Mapping[str, str]) -> OrderTotals:
        """Read the Redis hash kept by ``worker.orders`` (HINCRBYFLOAT may leave float noise in it)."""
        try:
            count = int(fields.get("order_count") or 0)
        except ValueError:
            count = 0
        return cls(
            count=count,
            revenue=_money(fields.get("lifetime_revenue")) or Decimal(0),
            last_order_id=fields.get("last_order_id", ""),
            last_order_total=fields.get("last_order_total", ""),
            last_order_currency=fields.get("last_order_currency", ""),
            last_order_date=fields.get("last_order_date", ""),
        )


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
    except InvalidOperation:  # more digits than the context holds: not a real amount
        return None


def _order_total(properties: Mapping[str, Any]) -> Decimal | None:
    """Segment's ``total`` (with tax and shipping), else ``revenue``, else the products' sum."""
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
    return _cents(sum((price * (1 if qty is None else qty) for price, qty in priced), Decimal(0)))


def order_amount(properties: Mapping[str, Any]) -> Decimal:
    """What one order adds to ``lifetime_revenue``: zero when the event names no amount at all."""
    return _order_total(properties) or Decimal("0.00")


def last_order_fields(properties: Mapping[str, Any], timestamp: str | None) -> dict[str, str]:
    """The ``last_order_*`` attributes, all four always present.

    An unknown value is "" rather than absent, so it overwrites what the previous order left instead
    of mixing two orders' details in one contact.
    """
    total = _order_total(properties)
    return {
        "last_order_id": _names(properties, "order_id", "orderId"),
        "last_order_total": format(total, "f") if total is not None else "",
        "last_order_currency": (_text(properties.get("currency"))[:10].upper() or DEFAULT_CURRENCY),
        "last_order_date": timestamp or "",
    }


def order_attributes(totals: OrderTotals | Mapping[str, str]) -> dict[str, str]:
    """Order totals as contact attributes; accepts ``OrderTotals`` or the raw Redis hash."""
    if not isinstance(totals, OrderTotals):
        totals = OrderTotals.from_hash(totals)
    revenue = _cents(totals.revenue)
    return {
        "order_count": str(totals.count),
        "lifetime_revenue": format(revenue if revenue is not None else totals.revenue, "f"),
        "last_order_id": totals.last_order_id,
        "last_order_total": totals.last_order_total,
        "last_order_currency": totals.last_order_currency,
        "last_order_date": totals.last_order_date,
    }
