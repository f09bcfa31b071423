"""Model inputs from purchases: one transaction per day, repeat days, times in the unit, as_of."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.scoring.domain.calibration import (
    TimeUnit,
    calibration_from_aggregates,
    day_number,
    summarise_purchases,
)

AS_OF = datetime(2024, 3, 31, 18, 0, tzinfo=UTC)


def _purchases(*rows: tuple[int, str, float]) -> dict[str, object]:
    customers, times, amounts = zip(*rows, strict=True)
    return {
        "customer_index": np.array(customers),
        "purchased_at": np.array(times, dtype="datetime64[us]"),
        "amount": np.array(amounts),
    }


def test_purchases_on_one_day_are_one_transaction_valued_at_their_sum() -> None:
    data = summarise_purchases(
        **_purchases(
            (0, "2024-03-01T09:00", 10.0),
            (0, "2024-03-01T17:30", 5.0),  # same day as the first: part of the first transaction
            (0, "2024-03-08T10:00", 20.0),
            (0, "2024-03-08T11:00", 4.0),
            (0, "2024-03-15T12:00", 30.0),
        ),
        n_customers=1,
        as_of=AS_OF,
        unit=TimeUnit.DAY,
    )
    assert data.x.tolist() == [2.0]  # repeat purchase days after the first
    assert data.t_x.tolist() == [14.0]
    assert data.T.tolist() == [30.0]
    # The first day is excluded from the mean: (24 + 30) / 2.
    assert data.m_x.tolist() == [27.0]


def test_purchases_at_as_of_count_and_later_ones_do_not() -> None:
    data = summarise_purchases(
        **_purchases(
            (0, "2024-03-01T09:00", 10.0),
            (0, "2024-03-31T18:00", 7.0),  # exactly at as_of
            (0, "2024-03-31T18:00:01", 99.0),  # one second later, same day: excluded
            (1, "2024-04-02T09:00", 50.0),  # only purchase after as_of
        ),
        n_customers=2,
        as_of=AS_OF,
        unit=TimeUnit.DAY,
    )
    assert data.has_purchase.tolist() == [True, False]
    assert data.x.tolist() == [1.0, 0.0]
    assert data.t_x.tolist() == [30.0, 0.0]
    assert data.T.tolist() == [30.0, 0.0]
    assert data.m_x.tolist() == [7.0, 0.0]


def test_weekly_unit_divides_day_counts_by_seven() -> None:
    rows = _purchases(
        (0, "2024-03-03T09:00", 1.0), (0, "2024-03-17T09:00", 1.0), (1, "2024-03-31T01:00", 2.0)
    )
    days = summarise_purchases(**rows, n_customers=2, as_of=AS_OF, unit=TimeUnit.DAY)
    weeks = summarise_purchases(**rows, n_customers=2, as_of=AS_OF, unit=TimeUnit.WEEK)
    assert weeks.t_x.tolist() == pytest.approx([2.0, 0.0])
    assert weeks.T.tolist() == pytest.approx([4.0, 0.0])
    assert np.allclose(weeks.T * 7, days.T)
    # A first purchase on the as_of day: T = 0 and nothing to repeat yet.
    assert weeks.has_purchase.tolist() == [True, True]
    assert weeks.x.tolist() == [1.0, 0.0]


def test_unordered_input_and_many_customers_match_aggregates() -> None:
    rng = np.random.default_rng(1)
    n = 300
    customers = rng.integers(0, n, 3000)
    times = np.datetime64("2023-01-01T00:00", "us") + rng.integers(0, 500 * 86_400, 3000).astype(
        "timedelta64[s]"
    )
    amounts = rng.uniform(1, 100, 3000)
    as_of = datetime(2024, 3, 1, tzinfo=UTC)
    data = summarise_purchases(
        customer_index=customers,
        purchased_at=times,
        amount=amounts,
        n_customers=n,
        as_of=as_of,
        unit=TimeUnit.DAY,
    )
    # Recompute one customer by hand with Python sets and dicts.
    for customer in (0, 17, 123):
        mine = (customers == customer) & (times <= np.datetime64("2024-03-01T00:00", "us"))
        by_day: dict[int, float] = {}
        for time, amount in zip(times[mine], amounts[mine], strict=True):
            day = int(time.astype("datetime64[D]").astype(int))
            by_day[day] = by_day.get(day, 0.0) + float(amount)
        if not by_day:
            assert not data.has_purchase[customer]
            continue
        first, last = min(by_day), max(by_day)
        repeat_days = sorted(by_day)[1:]
        assert data.x[customer] == len(repeat_days)
        assert data.t_x[customer] == last - first
        assert data.T[customer] == day_number(as_of) - first
        if repeat_days:
            expected = sum(by_day[d] for d in repeat_days) / len(repeat_days)
            assert data.m_x[customer] == pytest.approx(expected)


def test_aggregates_that_contradict_themselves_are_rejected() -> None:
    with pytest.raises(ValueError, match="after as_of"):
        calibration_from_aggregates(
            first_purchase_day=[10],
            last_purchase_day=[30],
            purchase_days=[2],
            repeat_value=[5.0],
            as_of_day=20,
            unit=TimeUnit.DAY,
        )
    with pytest.raises(ValueError, match="last > first"):
        calibration_from_aggregates(
            first_purchase_day=[10],
            last_purchase_day=[10],
            purchase_days=[3],
            repeat_value=[5.0],
            as_of_day=20,
            unit=TimeUnit.DAY,
        )


def test_day_number_uses_the_utc_calendar_day() -> None:
    late_evening_in_new_york = datetime.fromisoformat("2024-03-01T22:00:00-05:00")
    assert day_number(late_evening_in_new_york) == day_number(datetime(2024, 3, 2, tzinfo=UTC))
    assert day_number(datetime(1970, 1, 2)) == 1
