"""Purchases, refunds, interactions and the money rules under them."""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from services.profile.domain import (
    DEFAULT_MAX_CLOCK_SKEW,
    InteractionDirection,
    LineItem,
    Purchase,
    RefundExceedsPaid,
    RuleViolation,
    format_money,
    minor_units,
    money_problems,
    normalise_currency,
    validate_interaction,
    validate_purchase,
    validate_refund,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
D = Decimal


def purchase(**overrides: Any) -> Purchase:
    arguments: dict[str, Any] = {
        "order_id": "A-1001",
        "amount": D("59.80"),
        "currency": "USD",
        "occurred_at": NOW - timedelta(days=1),
        "items": [
            LineItem("TEE-1", "apparel", 2, D("19.90")),
            LineItem("MUG-7", "home", 1, D("20.00")),
        ],
        "base_currency": "USD",
        "now": NOW,
    }
    arguments.update(overrides)
    return validate_purchase(**arguments)


def problems_of(**overrides: Any) -> dict[tuple[str | int, ...], str]:
    with pytest.raises(RuleViolation) as caught:
        purchase(**overrides)
    return {problem.loc: problem.message for problem in caught.value.problems}


def test_valid_purchase_is_normalised() -> None:
    local_time = datetime(2024, 5, 31, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    recorded = purchase(
        order_id="  A-1001 ",
        amount=D("59.8"),
        currency="usd",
        occurred_at=local_time,
        channel="Web",
    )
    assert recorded.order_id == "A-1001"
    assert recorded.amount == D("59.80") and str(recorded.amount) == "59.80"
    assert recorded.currency == "USD"
    assert recorded.occurred_at == datetime(2024, 5, 31, 12, 0, tzinfo=UTC)
    assert recorded.occurred_at.tzinfo is UTC
    assert recorded.channel == "web"
    assert [item.line_total for item in recorded.items] == [D("39.80"), D("20.00")]


def test_free_order_is_a_purchase() -> None:
    free = purchase(amount=D("0"), items=[LineItem("SAMPLE", "promo", 3, D("0"))])
    assert free.amount == D("0.00")


def test_items_are_optional_for_history() -> None:
    assert purchase(items=[]).items == ()


def test_negative_amount_is_refused() -> None:
    assert problems_of(amount=D("-1.00"), items=[])[("amount",)] == "must not be negative"


def test_amount_with_more_places_than_the_currency_is_refused() -> None:
    assert (
        "too many decimal places: USD has 2"
        in problems_of(amount=D("59.801"), items=[])[("amount",)]
    )


def test_trailing_zeros_beyond_minor_units_are_not_extra_precision() -> None:
    assert purchase(amount=D("59.8000")).amount == D("59.80")


def test_minor_units_follow_iso_4217() -> None:
    assert (minor_units("USD"), minor_units("EUR"), minor_units("JPY"), minor_units("KWD")) == (
        2,
        2,
        0,
        3,
    )
    assert money_problems(D("1500"), "JPY", ("amount",)) == []
    assert "JPY has no minor unit" in money_problems(D("1500.5"), "JPY", ("amount",))[0].message
    assert money_problems(D("1.125"), "KWD", ("amount",)) == []
    assert format_money(D("1.5"), "KWD") == "1.500"
    assert format_money(D("-0"), "USD") == "0.00"


def test_base_currency_with_three_decimals_accepts_fils() -> None:
    recorded = purchase(amount=D("1.125"), currency="KWD", base_currency="KWD", items=[])
    assert str(recorded.amount) == "1.125"


def test_other_currency_is_refused_naming_the_expected_one() -> None:
    message = problems_of(currency="EUR")[("currency",)]
    assert message.startswith("must be USD, this deployment's base currency; got EUR")


def test_malformed_currency_code_is_refused() -> None:
    assert "not an ISO 4217 currency code" in problems_of(currency="US$")[("currency",)]
    with pytest.raises(RuleViolation):
        normalise_currency("EURO")


def test_non_finite_and_absurd_amounts_are_refused() -> None:
    assert problems_of(amount=D("NaN"), items=[])[("amount",)] == "must be a finite number"
    assert problems_of(amount=D("Infinity"), items=[])[("amount",)] == "must be a finite number"
    assert "must be less than" in problems_of(amount=D("1e15"), items=[])[("amount",)]


def test_items_must_add_up_to_the_amount_exactly() -> None:
    message = problems_of(amount=D("59.81"))[("items",)]
    assert message == "items add up to 59.80 USD but the amount is 59.81 USD"


def test_item_rules_are_located_per_item() -> None:
    problems = problems_of(
        amount=D("10.00"),
        items=[
            LineItem(" ", "apparel", 1, D("10.00")),
            LineItem("X", "c" * 101, 0, D("-1")),
            LineItem("Y", "home", 1, D("0.001")),
        ],
    )
    assert problems[("items", 0, "sku")] == "must not be empty"
    assert problems[("items", 1, "category")] == "must be at most 100 characters"
    assert problems[("items", 1, "quantity")].startswith("must be a whole number from 1")
    assert problems[("items", 1, "unit_price")] == "must not be negative"
    assert "too many decimal places" in problems[("items", 2, "unit_price")]
    # the sum is only compared once every item is itself valid
    assert ("items",) not in problems


def test_category_is_optional() -> None:
    recorded = purchase(amount=D("5.00"), items=[LineItem("X", " ", 1, D("5.00"))])
    assert recorded.items == (LineItem("X", None, 1, D("5.00")),)


def test_boolean_quantity_is_not_one_piece() -> None:
    problems = problems_of(amount=D("1.00"), items=[LineItem("X", "y", True, D("1.00"))])
    assert ("items", 0, "quantity") in problems


def test_naive_time_is_refused() -> None:
    message = problems_of(occurred_at=datetime(2024, 5, 1, 10, 0))[("occurred_at",)]
    assert message == "needs a UTC offset, e.g. 2024-05-01T10:00:00Z"


def test_future_time_is_accepted_up_to_the_skew_only() -> None:
    assert purchase(occurred_at=NOW + DEFAULT_MAX_CLOCK_SKEW).occurred_at == NOW + timedelta(
        minutes=5
    )
    message = problems_of(occurred_at=NOW + DEFAULT_MAX_CLOCK_SKEW + timedelta(seconds=1))[
        ("occurred_at",)
    ]
    assert "is in the future; at most 0:05:00 after the server's clock" in message


def test_skew_is_the_callers_choice() -> None:
    later = NOW + timedelta(hours=1)
    assert purchase(occurred_at=later, max_clock_skew=timedelta(hours=2)).occurred_at == later


def test_past_is_how_history_is_imported() -> None:
    long_ago = datetime(2009, 1, 3, tzinfo=UTC)
    assert purchase(occurred_at=long_ago).occurred_at == long_ago


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(order_id="", amount=D("-5"), currency="EUR", items=[], channel="a b")
    assert set(problems) == {("order_id",), ("amount",), ("currency",), ("channel",)}


def test_too_many_items_are_refused() -> None:
    items = [LineItem(f"S{n}", "c", 1, D("0")) for n in range(1001)]
    assert "at most 1000 items" in problems_of(amount=D("0"), items=items)[("items",)]


def refund(**overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "order_id": "A-1001",
        "amount": D("20.00"),
        "currency": "USD",
        "refunded_at": NOW,
        "paid": D("59.80"),
        "already_refunded": D("0"),
        "purchased_at": NOW - timedelta(days=1),
        "base_currency": "USD",
        "now": NOW,
    }
    arguments.update(overrides)
    return validate_refund(**arguments)


def test_refund_up_to_what_remains_is_accepted() -> None:
    accepted = refund(amount=D("39.8"), already_refunded=D("20.00"), reason="  damaged ")
    assert accepted.amount == D("39.80") and str(accepted.amount) == "39.80"
    assert accepted.reason == "damaged"


def test_refund_beyond_what_remains_names_the_numbers() -> None:
    with pytest.raises(RefundExceedsPaid) as caught:
        refund(amount=D("40.00"), already_refunded=D("20.00"))
    assert caught.value.refundable == D("39.80")
    assert str(caught.value) == (
        "amount: refund of 40.00 USD exceeds what is refundable on order 'A-1001': "
        "paid 59.80, already refunded 20.00, so at most 39.80 USD"
    )


def test_free_order_cannot_be_refunded() -> None:
    with pytest.raises(RefundExceedsPaid, match=r"at most 0\.00 USD"):
        refund(amount=D("0.01"), paid=D("0"))


def test_refund_must_be_positive_in_base_currency_and_after_the_purchase() -> None:
    with pytest.raises(RuleViolation, match="must be greater than 0"):
        refund(amount=D("0"))
    with pytest.raises(RuleViolation, match="must be USD"):
        refund(currency="GBP")
    with pytest.raises(RuleViolation, match="is before the purchase"):
        refund(refunded_at=NOW - timedelta(days=2))
    with pytest.raises(RuleViolation, match="in the future"):
        refund(refunded_at=NOW + timedelta(hours=1))


def test_interaction_is_normalised() -> None:
    interaction = validate_interaction(
        channel="Phone",
        direction=InteractionDirection.INBOUND,
        summary="  asked about delivery ",
        occurred_at=NOW - timedelta(minutes=3),
        now=NOW,
    )
    assert (interaction.channel, interaction.summary) == ("phone", "asked about delivery")


def test_interaction_without_summary_or_from_the_future_is_refused() -> None:
    with pytest.raises(RuleViolation) as caught:
        validate_interaction(
            channel="email",
            direction=InteractionDirection.OUTBOUND,
            summary=" ",
            occurred_at=NOW + timedelta(days=1),
            now=NOW,
        )
    assert {problem.loc for problem in caught.value.problems} == {("summary",), ("occurred_at",)}


def test_free_text_keeps_line_breaks_but_not_other_control_characters() -> None:
    """Summaries and reasons may run over lines; a NUL (which PostgreSQL cannot store) or
    another control character is refused on its field."""
    kept = validate_interaction(
        channel="phone",
        direction=InteractionDirection.INBOUND,
        summary="asked about delivery\r\n\tthen about returns",
        occurred_at=NOW,
        now=NOW,
    )
    assert kept.summary == "asked about delivery\r\n\tthen about returns"
    with pytest.raises(RuleViolation) as caught:
        validate_interaction(
            channel="phone",
            direction=InteractionDirection.INBOUND,
            summary="asked\x00",
            occurred_at=NOW,
            now=NOW,
        )
    assert [problem.loc for problem in caught.value.problems] == [("summary",)]
    with pytest.raises(RuleViolation) as refused:
        validate_refund(
            order_id="A-1",
            amount=D("1.00"),
            currency="USD",
            refunded_at=NOW,
            paid=D("10.00"),
            already_refunded=D(0),
            purchased_at=NOW - timedelta(days=1),
            reason="broken\x1b[31m",
            base_currency="USD",
            now=NOW,
        )
    assert [problem.loc for problem in refused.value.problems] == [("reason",)]


def test_a_time_outside_the_calendar_in_utc_is_refused_on_its_field() -> None:
    """Year 1 at +14:00 is year 0 in UTC: a 422 on occurred_at, not an OverflowError."""
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    assert "out of range" in problems_of(occurred_at=early)[("occurred_at",)]
