"""CLV: expected purchases x expected spend x margin, discounted monthly at the annual rate."""

from __future__ import annotations

import numpy as np
import pytest

from services.scoring.domain import clv
from services.scoring.domain.bgnbd import BgNbdParameters, expected_purchases, probability_alive
from services.scoring.domain.calibration import TimeUnit
from services.scoring.domain.clv import customer_lifetime_value, discounted_purchases, month_ends
from services.scoring.domain.gamma_gamma import GammaGammaParameters, expected_spend

BGNBD_WEEKS = BgNbdParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)
SPEND = GammaGammaParameters(p=6.25, q=3.74, gamma=15.44)
X = np.array([0.0, 1.0, 3.0, 3.0, 10.0])
T_X = np.array([0.0, 5.0, 20.0, 20.0, 36.0])
T = np.array([10.0, 30.0, 38.0, 38.0, 38.0])
M_X = np.array([0.0, 20.0, 35.0, 35.0, 50.0])


def test_52_weeks_are_twelve_months_the_last_one_partial() -> None:
    ends = month_ends(52)
    assert len(ends) == 12
    assert ends[0] == pytest.approx(365.25 / 12)
    assert ends[-1] == 364.0
    assert np.all(np.diff(ends) > 0)


def test_without_discounting_clv_is_purchases_times_spend_times_margin() -> None:
    value = customer_lifetime_value(
        BGNBD_WEEKS, SPEND, X, T_X, T, M_X, unit=TimeUnit.WEEK, annual_discount_rate=0.0, margin=0.3
    )
    purchases = expected_purchases(BGNBD_WEEKS, X, T_X, T, 52.0)
    spend = expected_spend(SPEND, X, M_X)
    assert value.expected_purchases == pytest.approx(purchases, rel=1e-12)
    assert value.expected_spend == pytest.approx(spend)
    assert value.clv == pytest.approx(0.3 * purchases * spend, rel=1e-12)
    assert value.probability_alive == pytest.approx(probability_alive(BGNBD_WEEKS, X, T_X, T))


def test_each_month_is_discounted_at_its_end() -> None:
    _, discounted = discounted_purchases(
        BGNBD_WEEKS, X, T_X, T, unit=TimeUnit.WEEK, horizon_weeks=52, annual_discount_rate=0.10
    )
    ends_in_weeks = [365.25 / 12 * m / 7 for m in range(1, 12)] + [52.0]
    cumulative = [np.zeros(len(X))] + [
        expected_purchases(BGNBD_WEEKS, X, T_X, T, t) for t in ends_in_weeks
    ]
    by_hand = sum((cumulative[m] - cumulative[m - 1]) / 1.10 ** (m / 12) for m in range(1, 13))
    assert discounted == pytest.approx(by_hand, rel=1e-12)


def test_months_in_one_call_or_a_call_a_month_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # A handler's batch takes every month in one call; a recompute's millions a call a month.
    rng = np.random.default_rng(3)
    x = rng.poisson(3, 2_000).astype(float)
    age = rng.uniform(1, 120, 2_000)
    last = age * rng.uniform(0, 1, 2_000) * (x > 0)

    def discounted() -> tuple[np.ndarray, np.ndarray]:
        return discounted_purchases(
            BGNBD_WEEKS, x, last, age, unit=TimeUnit.WEEK, annual_discount_rate=0.1
        )

    whole = discounted()
    monkeypatch.setattr(clv, "_ROWS_PER_CALL", 7)
    by_month = discounted()
    assert np.array_equal(by_month[0], whole[0]) and np.array_equal(by_month[1], whole[1])
    assert whole[0] == pytest.approx(expected_purchases(BGNBD_WEEKS, x, last, age, 52.0), 1e-12)


def test_discounting_lowers_value_and_a_higher_rate_lowers_it_more() -> None:
    values = [
        customer_lifetime_value(
            BGNBD_WEEKS, SPEND, X, T_X, T, M_X, unit=TimeUnit.WEEK, annual_discount_rate=rate
        ).clv
        for rate in (0.0, 0.1, 0.3)
    ]
    assert np.all(values[0] > values[1]) and np.all(values[1] > values[2])
    # A year at 10% costs less than 10%: purchases arrive during the year.
    assert np.all(values[1] / values[0] > 1 / 1.1)


def test_the_time_unit_only_changes_how_the_horizon_is_expressed() -> None:
    in_weeks = customer_lifetime_value(BGNBD_WEEKS, SPEND, X, T_X, T, M_X, unit=TimeUnit.WEEK)
    bgnbd_days = BgNbdParameters(
        r=BGNBD_WEEKS.r, alpha=BGNBD_WEEKS.alpha * 7, a=BGNBD_WEEKS.a, b=BGNBD_WEEKS.b
    )
    in_days = customer_lifetime_value(bgnbd_days, SPEND, X, T_X * 7, T * 7, M_X, unit=TimeUnit.DAY)
    assert in_days.clv == pytest.approx(in_weeks.clv, rel=1e-10)


def test_identical_customers_get_identical_values() -> None:
    value = customer_lifetime_value(BGNBD_WEEKS, SPEND, X, T_X, T, M_X, unit=TimeUnit.WEEK)
    assert value.clv[2] == value.clv[3]
    alone = customer_lifetime_value(
        BGNBD_WEEKS, SPEND, X[4:], T_X[4:], T[4:], M_X[4:], unit=TimeUnit.WEEK
    )
    assert alone.clv[0] == pytest.approx(value.clv[4], rel=1e-12)
