"""Orders from other systems (crm.ingest.orders.v1): payload validation and who they belong to."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.profile.domain import (
    ExistingCustomer,
    IngestOrder,
    LineItem,
    NewCustomer,
    RuleViolation,
    UnresolvedCustomer,
    parse_ingest_order,
    resolve_order_customer,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def payload(**overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "order_id": "A-1001",
        "external_ref": "shop-42",
        "amount": "59.80",
        "currency": "USD",
        "occurred_at": "2024-05-01T10:00:00Z",
        "items": [
            {"sku": "TEE-1", "category": "apparel", "quantity": 2, "unit_price": "19.90"},
            {"sku": "MUG-7", "category": "home", "quantity": 1, "unit_price": "20.00"},
        ],
        "channel": "web",
    }
    order.update(overrides)
    return {key: value for key, value in order.items() if value is not None}


def ingest(order: dict[str, Any]) -> tuple[IngestOrder, Any]:
    return parse_ingest_order(json.dumps(order).encode(), base_currency="USD", now=NOW)


def problems(order: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    with pytest.raises(RuleViolation) as caught:
        ingest(order)
    return {problem.loc: problem.message for problem in caught.value.problems}


def test_valid_order_becomes_the_same_purchase_as_over_http() -> None:
    order, purchase = ingest(payload(email="  Jane@Example.COM "))
    assert order.external_ref == "shop-42"
    assert order.email == "jane@example.com"
    assert purchase.order_id == "A-1001"
    assert purchase.amount == Decimal("59.80")
    assert purchase.occurred_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert purchase.items[0] == LineItem("TEE-1", "apparel", 2, Decimal("19.90"))
    assert purchase.channel == "web"


def test_json_numbers_are_accepted_as_amounts() -> None:
    _, purchase = ingest(payload(amount=12.5, items=[]))
    assert str(purchase.amount) == "12.50"


def test_unknown_fields_are_ignored() -> None:
    order, _ = ingest(payload(warehouse="north", items=[]))
    assert "warehouse" not in order.model_dump()


def test_an_order_must_name_a_customer() -> None:
    found = problems(payload(external_ref=None, email="  "))
    assert found == {(): "give at least one of customer_id, external_ref or email"}


def test_shape_errors_are_located_and_readable() -> None:
    found = problems(
        payload(
            order_id="",
            amount="-1",
            occurred_at="2024-05-01T10:00:00",
            email="not-an-email",
            items=[{"sku": "X", "category": "c", "quantity": 0, "unit_price": "1"}],
            customer_id="nope",
        )
    )
    assert set(found) == {
        ("order_id",),
        ("amount",),
        ("occurred_at",),
        ("email",),
        ("items", 0, "quantity"),
        ("customer_id",),
    }
    assert found[("email",)].startswith("'not-an-email' is not a valid e-mail address")
    assert "timezone" in found[("occurred_at",)]


def test_quantity_must_be_an_integer_not_a_string_or_fraction() -> None:
    for quantity in ("2", 1.5, True):
        item = {"sku": "X", "category": "c", "quantity": quantity, "unit_price": "1.00"}
        assert ("items", 0, "quantity") in problems(payload(amount="1.00", items=[item]))


def test_malformed_json_is_a_rule_violation_not_a_crash() -> None:
    with pytest.raises(RuleViolation, match="Invalid JSON"):
        parse_ingest_order(b"{not json", base_currency="USD", now=NOW)


def test_business_rules_apply_after_the_shape() -> None:
    assert "must be USD" in problems(payload(currency="EUR"))[("currency",)]
    assert problems(payload(amount="59.81"))[("items",)] == (
        "items add up to 59.80 USD but the amount is 59.81 USD"
    )
    future = (NOW + timedelta(hours=1)).isoformat()
    assert "in the future" in problems(payload(occurred_at=future))[("occurred_at",)]


def test_a_time_whose_utc_form_leaves_the_calendar_is_a_rule_violation() -> None:
    """00:00 of year 1 at +14:00 is in year 0 in UTC: a reason for the DLQ, not a crash."""
    assert (
        "out of range"
        in problems(payload(occurred_at="0001-01-01T00:00:00+14:00"))[("occurred_at",)]
    )


def test_external_ref_with_control_characters_is_a_rule_violation() -> None:
    """A NUL cannot be stored: refused with the reason, not a database error on every retry."""
    assert "control characters" in problems(payload(external_ref="shop\x0042"))[("external_ref",)]


def test_rule_violation_message_is_the_dlq_reason() -> None:
    with pytest.raises(RuleViolation) as caught:
        ingest(payload(currency="EUR", amount="1.001", items=[]))
    assert str(caught.value) == (
        "currency: must be USD, this deployment's base currency; got EUR "
        "(convert the amount before sending it); "
        "amount: 1.001 has too many decimal places: USD has 2 decimal places"
    )


KNOWN, OTHER = UUID(int=1), UUID(int=2)


def resolve(**overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "customer_id": None,
        "external_ref": None,
        "email": None,
        "found_by_id": None,
        "found_by_external_ref": None,
        "found_by_email": None,
    }
    arguments.update(overrides)
    return resolve_order_customer(**arguments)


def test_known_customer_id_resolves() -> None:
    assert resolve(customer_id=KNOWN, found_by_id=KNOWN) == ExistingCustomer(KNOWN)


def test_external_ref_or_email_match_resolves_even_when_others_do_not() -> None:
    found = resolve(external_ref="shop-42", email="j@example.com", found_by_email=KNOWN)
    assert found == ExistingCustomer(KNOWN)


def test_identifiers_naming_different_customers_are_unresolved() -> None:
    found = resolve(
        customer_id=KNOWN, external_ref="shop-42", found_by_id=KNOWN, found_by_external_ref=OTHER
    )
    assert isinstance(found, UnresolvedCustomer)
    assert "identifiers name different customers" in found.reason
    assert str(KNOWN) in found.reason and str(OTHER) in found.reason


def test_unknown_customer_with_external_ref_or_email_is_created() -> None:
    assert resolve(external_ref="shop-42", email="j@example.com") == NewCustomer(
        external_ref="shop-42", email="j@example.com"
    )
    assert resolve(customer_id=uuid4(), email="j@example.com") == NewCustomer(
        external_ref=None, email="j@example.com"
    )


def test_unknown_customer_id_alone_is_unresolved() -> None:
    unknown = uuid4()
    found = resolve(customer_id=unknown)
    assert found == UnresolvedCustomer(
        f"unknown customer_id {unknown} and no external_ref or email to create one"
    )
