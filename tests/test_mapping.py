"""Segment traits/properties -> Promoter bodies: names, flattening, contact and survey bodies, orders."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.mapping import (
    MAX_VALUE_LENGTH,
    attribute_name,
    contact_body,
    flatten,
    last_order_fields,
    order_amount,
    order_attributes,
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
    assert not name.startswith("_") and not name.endswith("_") and "__" not in name
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
        assert name and LEGAL_NAME.fullmatch(name)
        assert isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH


def test_contact_body_puts_reserved_traits_at_top_level_only() -> None:
    traits = {
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
    body = contact_body(traits, [3, 4], {"order_count": "2"})
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


def test_contact_body_omits_empty_names_and_lists() -> None:
    body = contact_body({"email": "a@b.co", "firstName": "", "lastName": None}, [])
    assert body == {"email": "a@b.co", "attributes": {}}
    with pytest.raises(ValueError, match="email"):
        contact_body({"firstName": "Ada"}, [])


def test_survey_body() -> None:
    contact = {"email": "ada@example.com", "first_name": "Ada", "last_name": ""}
    properties = {"plan": "pro", "event": "spoofed", "cart": {"size": 2}, "skip": None}
    assert survey_body(7, contact, properties, "NPS Due") == {
        "campaign_id": 7,
        "contact": {"email": "ada@example.com", "first_name": "Ada", "attributes": {}},
        "attributes": {"plan": "pro", "event": "NPS Due", "cart_size": "2"},
    }


@pytest.mark.parametrize(
    ("properties", "amount"),
    [
        ({"total": 30, "revenue": 25}, "30.00"),
        ({"revenue": "25.5"}, "25.50"),
        ({"total": 0.1}, "0.10"),
        ({"total": True, "revenue": 3}, "3.00"),
        ({"products": [{"price": 2.5, "quantity": 2}, {"price": "1"}, {"name": "free"}]}, "6.00"),
        ({"total": "n/a", "products": "oops"}, "0.00"),
        ({}, "0.00"),
        ({"total": 1e40}, "0.00"),
    ],
)
def test_order_amount(properties: dict[str, Any], amount: str) -> None:
    assert str(order_amount(properties)) == amount


def test_last_order_fields_are_always_complete() -> None:
    assert last_order_fields({"orderId": 42, "total": 9.99, "currency": "eur"}, "2024-05-01T00:00:00Z") == {
        "last_order_id": "42",
        "last_order_total": "9.99",
        "last_order_currency": "EUR",
        "last_order_date": "2024-05-01T00:00:00Z",
    }
    assert last_order_fields({}, None) == {
        "last_order_id": "",
        "last_order_total": "",
        "last_order_currency": "USD",
        "last_order_date": "",
    }


def test_order_attributes_from_the_redis_hash_hides_float_noise() -> None:
    stored = {"order_count": "3", "lifetime_revenue": "0.30000000000000004", "last_order_id": "o3"}
    attributes = order_attributes(stored)
    assert attributes["order_count"] == "3"
    assert attributes["lifetime_revenue"] == "0.30"
    assert attributes["last_order_id"] == "o3"
    assert order_attributes({"order_count": "x"})["order_count"] == "0"
