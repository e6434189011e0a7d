"""Segment traits/properties -> Promoter bodies: names, flattening, contact fields and bodies, survey
bodies, orders."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.mapping import (
    DEFAULT_CURRENCY,
    MAX_CENTS,
    MAX_VALUE_LENGTH,
    NO_FILTER,
    Order,
    TraitFilter,
    attribute_name,
    contact_body,
    contact_fields,
    flatten,
    is_sensitive,
    order_of,
    order_total,
    survey_body,
)

LEGAL_NAME = re.compile(r"[a-z0-9_]*")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("firstName", "first_name"),
        ("planName", "plan_name"),
        ("createdAt", "created_at"),
        ("plan_name", "plan_name"),
        ("Plan Name", "plan_name"),
        ("plan-name", "plan_name"),
        ("address.city", "address_city"),
        ("HTTPStatus", "http_status"),
        ("userID", "user_id"),
        ("utm2Source", "utm2_source"),
        ("__a..b--c__", "a_b_c"),
        ("prénom", "prenom"),
        ("名前", ""),
        ("", ""),
        ("...", ""),
        ("x" * 300, "x" * 100),
    ],
)
def test_attribute_name(key: str, expected: str) -> None:
    assert attribute_name(key) == expected


@given(st.text())
def test_attribute_name_is_always_legal_and_stable(key: str) -> None:
    name = attribute_name(key)
    assert LEGAL_NAME.fullmatch(name)
    assert not name.startswith("_")
    assert not name.endswith("_")
    assert "__" not in name
    assert attribute_name(name) == name


def test_flatten_values() -> None:
    data: dict[str, Any] = {
        "address": {"city": "Paris", "geo": {"lat": 48.85}, "street": None},
        "company": {"name": "Acme", "id": 7, "employee_count": 120.0},
        "tags": ["a", 1, None, True],
        "items": [{"sku": "x", "password": "p"}],
        "empty": [],
        "nothing": None,
        "active": True,
        "weight": 1e-7,
        "ratio": 0.5,
        "big": 10**20,
        "nan": float("nan"),
        "price": Decimal("12.50"),
        "createdAt": "2024-01-02T03:04:05Z",
        "seen": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "long": "y" * 5000,
        "password": "hunter2",
        "user": {"apiKey": "k", "refresh_token": "t", "name": "n"},
    }
    assert flatten(data) == {
        "address_city": "Paris",
        "address_geo_lat": "48.85",
        "company_name": "Acme",
        "company_id": "7",
        "company_employee_count": "120",
        "tags": "a, 1, true",
        "items": '[{"sku":"x"}]',
        "empty": "",
        "active": "true",
        "weight": "0.0000001",
        "ratio": "0.5",
        "big": "100000000000000000000",
        "price": "12.50",
        "created_at": "2024-01-02T03:04:05Z",
        "seen": "2024-01-02T03:04:05+00:00",
        "long": "y" * MAX_VALUE_LENGTH,
        "user_name": "n",
    }


def test_flatten_prefix_and_deep_nesting_becomes_json() -> None:
    assert flatten({"city": "X"}, prefix="address") == {"address_city": "X"}
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    assert flatten(deep) == {"a_b_c_d_e": '{"f":1}'}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_flatten_always_yields_legal_string_attributes(data: dict[str, Any]) -> None:
    for name, value in flatten(data).items():
        assert name
        assert LEGAL_NAME.fullmatch(name)
        assert isinstance(value, str)
        assert len(value) <= MAX_VALUE_LENGTH


# --- contact fields (the person record) and the contact body --------------------------------


def person(fields: dict[str, str], **orders: str) -> dict[str, str]:
    """A person record as the worker keeps it: contact fields under ``f:``, order attributes under
    ``o:``, and bookkeeping (versions, what Promoter has) that is no business of the body."""
    record = {f"f:{name}": value for name, value in fields.items()}
    record |= {f"o:{name}": value for name, value in orders.items()}
    record |= {"v:email": "000001|k1:m1", "s:email": "old@example.com", "contact_id": "5", "synced_rev": "3"}
    return record


def test_contact_fields_and_body_put_reserved_traits_at_top_level_only() -> None:
    traits = {  # as ingest normalizes them: email, firstName, lastName
        "email": " ada@example.com ",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "first_name": "dup",
        "createdAt": "2024-01-02T03:04:05Z",
        "company": {"name": "Acme", "plan": "pro"},
        "phone": "+33 1",
        "age": 36,
        "password": "secret!",
    }
    fields = contact_fields(traits)
    assert fields == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "a:created_at": "2024-01-02T03:04:05Z",
        "a:company_name": "Acme",
        "a:company_plan": "pro",
        "a:phone": "+33 1",
        "a:age": "36",
    }
    body = contact_body(person(fields, order_count="2"), [3, 4])
    assert body == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "contact_list": [3, 4],
        "attributes": {
            "created_at": "2024-01-02T03:04:05Z",
            "company_name": "Acme",
            "company_plan": "pro",
            "phone": "+33 1",
            "age": "36",
            "order_count": "2",
        },
    }


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"firstName": "Ada", "lastName": "Lovelace"}, {"first_name": "Ada", "last_name": "Lovelace"}),
        ({"first_name": "Ada", "last_name": "Lovelace"}, {"first_name": "Ada", "last_name": "Lovelace"}),
        ({"firstName": "", "first_name": "Ada"}, {"first_name": "Ada"}),
        ({"firstName": "  ", "lastName": None}, {}),
        ({"firstName": " Ada "}, {"first_name": "Ada"}),
        ({"email": "  "}, {}),
        ({"email": None, "firstName": 7}, {"first_name": "7"}),
        # The name split is ingest's job: here "name" is just another attribute.
        ({"name": "Ada Lovelace"}, {"a:name": "Ada Lovelace"}),
        ({"planName": "pro", "plan_tier": "gold"}, {"a:plan_name": "pro", "a:plan_tier": "gold"}),
        ({"Plan Name": "pro"}, {"a:plan_name": "pro"}),
        ({"address": {"city": "Paris", "zip": None}}, {"a:address_city": "Paris"}),
        ({"nothing": None, "empty": ""}, {"a:empty": ""}),
        ({}, {}),
    ],
)
def test_contact_fields(traits: dict[str, Any], expected: dict[str, str]) -> None:
    """A trait-only identify (no email) yields fields too; absent values never appear, so they never
    erase what the person already has."""
    assert contact_fields(traits) == expected


def test_contact_fields_do_not_repeat_contact_fields_as_attributes() -> None:
    fields = contact_fields({"email": "a@b.co", "Email": "b@c.co", "first_name": "x", "lastName": "L"})
    assert fields == {"email": "a@b.co", "first_name": "x", "last_name": "L"}


@pytest.mark.parametrize(
    ("allow", "deny", "kept"),
    [
        ((), (), {"a:plan", "a:plan_tier", "a:company_name", "a:company_size", "a:age"}),
        (("plan", "company_*"), (), {"a:plan", "a:company_name", "a:company_size"}),
        (("plan*",), (), {"a:plan", "a:plan_tier"}),
        ((), ("company_*",), {"a:plan", "a:plan_tier", "a:age"}),
        ((), ("plan", "a?e"), {"a:plan_tier", "a:company_name", "a:company_size"}),
        (("company_*", "plan"), ("*_size",), {"a:plan", "a:company_name"}),  # deny wins over allow
        (("Plan*",), (), set()),  # names as the relay writes them: lower snake_case
        (("nothing",), (), set()),
        ((), ("*",), set()),
    ],
)
def test_trait_filter_allow_and_deny(allow: tuple[str, ...], deny: tuple[str, ...], kept: set[str]) -> None:
    traits = {
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "plan": "pro",
        "planTier": "gold",
        "company": {"name": "Acme", "size": 12},
        "age": 36,
    }
    fields = contact_fields(traits, only=TraitFilter(allow, deny))
    # The filter is about attributes: who the contact is always goes through.
    assert {name: fields[name] for name in ("email", "first_name", "last_name")} == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert {name for name in fields if name.startswith("a:")} == kept


def test_trait_filter_keeps() -> None:
    assert NO_FILTER.keeps("anything")
    only = TraitFilter(allow=("plan_*",), deny=("plan_secret*",))
    assert only.keeps("plan_tier")
    assert not only.keeps("plan_secret_code")
    assert not only.keeps("plan")
    assert not TraitFilter(deny=("age",)).keeps("age")
    assert TraitFilter(deny=("age",)).keeps("agent")


CREDENTIAL_NAMES = [
    "token",
    "tokens",
    "session_token",
    "sessionToken",
    "id_token",
    "idToken",
    "refresh_token",
    "access_token",
    "token_count",  # a snake_case part is a credential word: dropped, even if harmless
    "jwt",
    "JWT",
    "bearer",
    "private_key",
    "privateKey",
    "signing_key",
    "authorization",
    "Authorization",
    "iban",
    "IBAN",
    "bic",
    "pin",
    "PIN",
    "userPIN",
    "card_pin_code",
    "api_key",
    "apiKey",
    "APIKey",
    "apikey",
    "password",
    "Password",
    "user_password_hash",
    "passwd",
    "passcode",
    "secret",
    "client_secrets",
    "credential",
    "credentials",
    "cookie",
    "cookies",
    "session_id",
    "sessionId",
    "otp",
    "totp",
    "mfa_code",
    "ssn",
    "social_security",
    "cvv",
    "cvc",
    "card_number",
    "credit_card",
    "routing_number",
    "account_number",
]


@pytest.mark.parametrize("key", CREDENTIAL_NAMES)
def test_credential_like_traits_are_dropped(key: str) -> None:
    assert is_sensitive(attribute_name(key))
    traits = {"email": "a@b.co", key: "s3cr3t", "nested": {key: "s3cr3t", "keep": "1"}}
    fields = contact_fields(traits)
    assert fields == {"email": "a@b.co", "a:nested_keep": "1"}
    assert "s3cr3t" not in flatten(traits).values()
    assert flatten({"list": [{key: "s3cr3t", "keep": 1}]}) == {"list": '[{"keep":1}]'}


@pytest.mark.parametrize(
    "key",
    [
        "pinterest_handle",
        "spin",
        "opinion",
        "tokenizer",
        "secretary",
        "author",
        "cookbook",
        "bicycle",
        "passport_country",
        "keynote",
        "key",
        "session",
        "id",
        "account",
    ],
)
def test_names_that_only_contain_a_credential_word_are_kept(key: str) -> None:
    """The deny list matches whole snake_case parts, not substrings."""
    assert not is_sensitive(attribute_name(key))
    assert contact_fields({key: "v"}) == {f"a:{attribute_name(key)}": "v"}


@pytest.mark.parametrize(
    "traits",
    [
        {"api": {"key": "s3cr3t"}},
        {"session": {"id": "s3cr3t"}},
        {"private": {"key": "s3cr3t"}},
        {"credit": {"card": "s3cr3t"}},
        {"user": {"session": {"token": "s3cr3t"}}},
    ],
)
def test_nested_keys_that_spell_a_credential_name_are_dropped(traits: dict[str, Any]) -> None:
    """Dropped at every nesting level: an attribute the relay writes never has a credential-like name,
    whether the sender nested it or spelled it ``api.key`` (which lands under the same name)."""
    fields = contact_fields(traits)
    assert not [name for name in fields if is_sensitive(name.removeprefix("a:"))], fields
    assert "s3cr3t" not in fields.values()


@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(max_size=8), max_size=6))
def test_contact_fields_are_always_legal(traits: dict[str, Any]) -> None:
    fields = contact_fields(traits)
    for name, value in fields.items():
        assert isinstance(value, str)
        if name in ("email", "first_name", "last_name"):
            assert value
            assert value == value.strip()
        else:
            assert name.startswith("a:")
            assert LEGAL_NAME.fullmatch(name[2:])
            assert name[2:]
            assert name[2:] not in ("email", "first_name", "last_name")
            assert not is_sensitive(name[2:])


def test_order_attributes_win_over_a_trait_of_the_same_name() -> None:
    record = person(
        {"email": "a@b.co", "a:order_count": "99", "a:plan": "pro"},
        order_count="2",
        lifetime_revenue_usd="12.50",
    )
    assert contact_body(record, [])["attributes"] == {
        "order_count": "2",
        "plan": "pro",
        "lifetime_revenue_usd": "12.50",
    }


def test_contact_body_omits_empty_names_and_lists() -> None:
    body = contact_body(person({"email": "a@b.co", "first_name": "", "last_name": ""}), [])
    assert body == {"email": "a@b.co", "attributes": {}}
    assert contact_body({"f:email": "a@b.co"}, ()) == {"email": "a@b.co", "attributes": {}}
    assert contact_body({"f:email": "a@b.co"}, (7, 3))["contact_list"] == [7, 3]
    # Unprefixed and bookkeeping fields are not contact data.
    assert contact_body({"f:email": "a@b.co", "email": "x@y.co", "s:first_name": "Old"}, []) == {
        "email": "a@b.co",
        "attributes": {},
    }
    with pytest.raises(ValueError, match="email"):
        contact_body(person({"first_name": "Ada"}), [])
    with pytest.raises(ValueError, match="email"):
        contact_body({"f:email": "", "f:first_name": "Ada"}, [])


def test_survey_body() -> None:
    contact = {"email": "ada@example.com", "first_name": "Ada", "last_name": ""}
    properties = {"plan": "pro", "event": "spoofed", "cart": {"size": 2}, "skip": None}
    assert survey_body(7, contact, properties, "NPS Due") == {
        "campaign_id": 7,
        "contact": {"email": "ada@example.com", "first_name": "Ada", "attributes": {}},
        "attributes": {"plan": "pro", "event": "NPS Due", "cart_size": "2"},
    }


# --- orders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "amount"),
    [
        ({"total": 30, "revenue": 25}, "30.00"),
        ({"total": 0, "revenue": 25}, "0.00"),
        ({"revenue": "25.5"}, "25.50"),
        ({"revenue": " 25.5 ", "products": [{"price": 1}]}, "25.50"),
        ({"total": 0.1}, "0.10"),
        ({"total": True, "revenue": 3}, "3.00"),
        ({"total": None, "revenue": None, "products": [{"price": 4}]}, "4.00"),
        ({"products": [{"price": 2.5, "quantity": 2}, {"price": "1"}, {"name": "free"}]}, "6.00"),
        ({"products": [{"price": "1.10", "quantity": 3}, "junk", None]}, "3.30"),
        ({"revenue": -5}, "-5.00"),
        ({"total": "2.675"}, "2.68"),
        ({"total": 2.675}, "2.68"),  # the float as written, not its binary approximation
        ({"total": "0.005"}, "0.01"),
        ({"total": "-0.005"}, "-0.01"),
        ({"total": "1.994"}, "1.99"),
        ({"total": "n/a", "products": "oops"}, None),
        ({"products": [{"name": "free"}]}, None),
        ({"products": []}, None),
        ({}, None),
        ({"total": 1e40}, None),
        ({"total": "nan"}, None),
        ({"total": "Infinity", "revenue": 3}, "3.00"),
    ],
)
def test_order_total(properties: dict[str, Any], amount: str | None) -> None:
    """``total``, else ``revenue``, else the products' price x quantity, in cents rounded half-up."""
    total = order_total(properties)
    assert (None if total is None else str(total)) == amount


@pytest.mark.parametrize(
    ("properties", "order_id", "cents", "currency"),
    [
        ({"order_id": "A-1", "total": 9.99, "currency": "eur"}, "A-1", 999, "EUR"),
        ({"orderId": 42, "revenue": "12.5"}, "42", 1250, DEFAULT_CURRENCY),
        ({"order_id": "snake", "orderId": "camel"}, "snake", 0, "USD"),
        ({"order_id": "", "orderId": "camel"}, "camel", 0, "USD"),
        ({"order_id": "  ", "total": "0.125"}, "msg-1", 13, "USD"),
        ({"order_id": None, "total": "2.675"}, "msg-1", 268, "USD"),
        ({"total": "-0.125"}, "msg-1", -13, "USD"),
        ({}, "msg-1", 0, "USD"),
        ({"currency": " e-ur "}, "msg-1", 0, "EUR"),
        ({"currency": "usd$"}, "msg-1", 0, "USD"),
        ({"currency": "€"}, "msg-1", 0, "USD"),
        ({"currency": ""}, "msg-1", 0, "USD"),
        ({"currency": None}, "msg-1", 0, "USD"),
        ({"currency": "abcdefghijklmnop"}, "msg-1", 0, "ABCDEFGHIJ"),
        ({"currency": "x-b.t_c1"}, "msg-1", 0, "XBTC1"),
        ({"total": 1e40}, "msg-1", 0, "USD"),
        ({"total": f"{MAX_CENTS / 100:.2f}"}, "msg-1", MAX_CENTS, "USD"),
        ({"total": f"{(MAX_CENTS + 1) / 100:.2f}"}, "msg-1", 0, "USD"),
        ({"total": f"-{(MAX_CENTS + 1) / 100:.2f}"}, "msg-1", 0, "USD"),
    ],
)
def test_order_of(properties: dict[str, Any], order_id: str, cents: int, currency: str) -> None:
    """The order id is ``order_id`` (Segment's spec), else ``orderId``, else the message id; the currency
    is upper-cased and kept to letters and digits (it becomes part of an attribute name), default USD."""
    order = order_of(properties, "msg-1", "2024-05-01T00:00:00.000Z")
    assert order == Order(order_id, cents, currency, "2024-05-01T00:00:00.000Z")
    assert type(order.cents) is int


def test_order_id_is_bounded_and_order_as_json() -> None:
    assert order_of({"order_id": "x" * 500}, "m", "t").order_id == "x" * 200
    order = order_of({"order_id": "o3", "total": 0.1, "currency": "gbp"}, "m", "2024-05-01T00:00:00.000Z")
    assert order.as_json("0lvmn3eo0abcdef") == {
        "id": "o3",
        "version": "0lvmn3eo0abcdef",
        "currency": "GBP",
        "cents": 10,
        "date": "2024-05-01T00:00:00.000Z",
    }


def test_cents_add_up_without_float_noise() -> None:
    """Totals kept as integer cents: 0.1 + 0.2 is 30 cents, not 0.30000000000000004."""
    orders = [order_of({"total": amount}, f"m{i}", "t") for i, amount in enumerate((0.1, 0.2))]
    assert sum(order.cents for order in orders) == 30


@given(st.one_of(st.integers(-(10**12), 10**12), st.decimals(-(10**9), 10**9, places=3)))
def test_order_cents_round_half_up(amount: int | Decimal) -> None:
    cents = order_of({"total": str(amount)}, "m", "t").cents
    exact = Decimal(str(amount)) * 100
    expected = int(exact.to_integral_value(rounding="ROUND_HALF_UP"))
    assert cents == (expected if abs(expected) <= MAX_CENTS else 0)
