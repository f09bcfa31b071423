"""Money on the wire in the currency's minor units, the same in every service."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.money import in_minor_units, minor_units


@pytest.mark.parametrize(
    ("amount", "currency", "written"),
    [
        ("389.7000", "USD", "389.70"),  # a numeric(18, 4) column, as scoring wrote it
        ("12.5", "EUR", "12.50"),
        ("1200.0000", "JPY", "1200"),
        ("1.2500", "KWD", "1.250"),
        ("1234.5678", "USD", "1234.57"),  # a prediction (CLV) rounds
        ("0.125", "USD", "0.12"),  # half-even
        ("-0.0001", "USD", "0.00"),  # never -0
        ("0.0001", "CLF", "0.0001"),
    ],
)
def test_amounts_are_written_in_the_currencys_minor_units(
    amount: str, currency: str, written: str
) -> None:
    assert format(in_minor_units(Decimal(amount), currency), "f") == written


def test_minor_units_follow_iso_4217() -> None:
    assert [minor_units(c) for c in ("USD", "JPY", "KWD", "CLF", "XYZ")] == [2, 0, 3, 4, 2]
