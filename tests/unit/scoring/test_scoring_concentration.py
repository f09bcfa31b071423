"""The Pareto view's Lorenz curve: every point and the top-20% figure are one curve, linear
between whole customers, and agree with a direct computation over every customer."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scoring.domain.concentration import positions_needed, share_held


def ranks(revenues: list[Decimal]) -> tuple[dict[int, Decimal], dict[int, Decimal]]:
    best_first = sorted(revenues, reverse=True)
    revenue = {i + 1: r for i, r in enumerate(best_first)}
    cumulative = {i + 1: c for i, c in enumerate(accumulate(best_first))}
    return revenue, cumulative


def held(share: Fraction, revenues: list[Decimal]) -> float:
    revenue, cumulative = ranks(revenues)
    return share_held(share, customers=len(revenues), revenue=revenue, cumulative=cumulative)


def test_one_customer_holds_a_fifth_of_the_revenue_in_a_fifth_of_the_customers() -> None:
    """It said 0 on the curve at 20% and 1 as the top-20% share."""
    assert held(Fraction(1, 5), [Decimal("389.70")]) == pytest.approx(0.2)
    assert held(Fraction(1), [Decimal("389.70")]) == 1.0


def test_three_customers_are_read_between_whole_customers() -> None:
    revenues = [Decimal(60), Decimal(30), Decimal(10)]
    # The top 20% of 3 customers are 0.6 of the best one: 0.6 * 60 of 100.
    assert held(Fraction(1, 5), revenues) == pytest.approx(0.36)
    assert held(Fraction(1, 3), revenues) == pytest.approx(0.6)
    assert held(Fraction(1, 2), revenues) == pytest.approx(0.75)  # 60 + 0.5 * 30
    assert held(Fraction(0), revenues) == 0.0


def test_no_revenue_is_a_share_of_zero() -> None:
    assert held(Fraction(1, 5), []) == 0.0
    assert held(Fraction(1, 5), [Decimal(0), Decimal(0)]) == 0.0


def test_a_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="within"):
        held(Fraction(6, 5), [Decimal(1)])


@given(
    revenues=st.lists(
        st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False), max_size=60
    ),
    points=st.integers(min_value=1, max_value=100),
)
def test_the_ranks_it_reads_are_enough_and_the_curve_rises_to_one(
    revenues: list[Decimal], points: int
) -> None:
    shares = [Fraction(k, points) for k in range(1, points + 1)] + [Fraction(1, 5)]
    revenue, cumulative = ranks(revenues)
    needed = positions_needed(len(revenues), shares)
    # Only the ranks `positions_needed` names: a missing one would be a KeyError.
    revenue = {i: r for i, r in revenue.items() if i in needed}
    cumulative = {i: c for i, c in cumulative.items() if i in needed}
    curve = [
        share_held(s, customers=len(revenues), revenue=revenue, cumulative=cumulative)
        for s in shares[:-1]
    ]
    assert curve == sorted(curve)
    if sum(revenues) > 0:
        assert curve[-1] == pytest.approx(1.0)
        # Concentration: the top share holds at least its share of the revenue.
        assert all(c >= float(s) - 1e-9 for c, s in zip(curve, shares, strict=False))
    else:
        assert curve[-1] == 0.0
