"""Model inputs (x, t_x, T, m_x) from purchases, exactly as DOMAIN.md section 3 defines them.

A purchase belongs to its UTC calendar day; all purchases of one day form one transaction
valued at their sum. x counts the distinct purchase days after the first, t_x is the time
from the first to the last purchase day, T the time from the first purchase day to the day of
`as_of`, all measured in whole days and then expressed in the configured unit (a week is 7
days, so weekly times are multiples of 1/7). Purchases at `as_of` itself are included, later
ones excluded. m_x is the mean value of the repeat transactions (the first day excluded).
Day granularity is the one the lifetimes package uses; it keeps t_x and T integers of days,
so many customers share a row and the fits compress them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from services.scoring.domain._arrays import BoolArray, FloatArray, IntArray, same_length

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimeUnit(StrEnum):
    """Unit of the model's time axis, stated with the fitted parameters."""

    DAY = "day"
    WEEK = "week"

    @property
    def days(self) -> float:
        return 1.0 if self is TimeUnit.DAY else 7.0


def day_number(moment: datetime) -> int:
    """Days since 1970-01-01 of the UTC calendar day of `moment` (naive means UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware.astimezone(UTC) - _EPOCH).days


@dataclass(frozen=True, slots=True)
class CalibrationData:
    """Per-customer BG/NBD and Gamma-Gamma inputs; customers without a purchase are zeros."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    m_x: FloatArray
    has_purchase: BoolArray
    unit: TimeUnit

    def __len__(self) -> int:
        return len(self.x)


def calibration_from_aggregates(
    *,
    first_purchase_day: ArrayLike,
    last_purchase_day: ArrayLike,
    purchase_days: ArrayLike,
    repeat_value: ArrayLike,
    as_of_day: ArrayLike,
    unit: TimeUnit,
) -> CalibrationData:
    """(x, t_x, T, m_x) from per-customer aggregates of purchases up to `as_of_day`.

    Days are day numbers (see `day_number`); `as_of_day` is one for all or one per customer;
    `purchase_days` counts distinct purchase days (0 = no purchase, then the other inputs are
    ignored) and `repeat_value` sums the value of every purchase day after the first.
    """
    first = np.asarray(first_purchase_day, dtype=np.float64)
    last = np.asarray(last_purchase_day, dtype=np.float64)
    days = np.asarray(purchase_days, dtype=np.float64)
    value = np.asarray(repeat_value, dtype=np.float64)
    same_length(first=first, last=last, days=days, value=value)
    end = np.broadcast_to(np.asarray(as_of_day, dtype=np.float64), first.shape)
    has_purchase = days > 0
    if np.any(days < 0):
        raise ValueError("purchase_days must not be negative")
    bought = has_purchase
    if np.any(last[bought] < first[bought]):
        raise ValueError("purchase days must satisfy first <= last")
    if np.any(last[bought] > end[bought]):
        raise ValueError("purchases after as_of must be excluded before calibration")
    x = np.where(bought, days - 1.0, 0.0)
    if np.any((x[bought] > 0) != (last[bought] > first[bought])):
        raise ValueError("customers with repeat purchases must have last > first day")
    t_x = np.where(bought, (last - first) / unit.days, 0.0)
    age = np.where(bought, (end - first) / unit.days, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m_x = np.where(x > 0, value / np.where(x > 0, x, 1.0), 0.0)
    return CalibrationData(x=x, t_x=t_x, T=age, m_x=m_x, has_purchase=has_purchase, unit=unit)


def summarise_purchases(
    *,
    customer_index: ArrayLike,
    purchased_at: NDArray[np.datetime64],
    amount: ArrayLike,
    n_customers: int,
    as_of: datetime,
    unit: TimeUnit,
) -> CalibrationData:
    """Calibration data from raw purchases (UTC datetime64 times), one row per customer index."""
    customers: IntArray = np.asarray(customer_index, dtype=np.int64)
    values = np.asarray(amount, dtype=np.float64)
    times = np.asarray(purchased_at).astype("datetime64[us]")
    same_length(customers=customers, values=values, times=times)
    if np.any((customers < 0) | (customers >= n_customers)):
        raise ValueError("customer_index must lie in [0, n_customers)")
    as_of_utc = as_of.astimezone(UTC).replace(tzinfo=None) if as_of.tzinfo else as_of
    cutoff = np.datetime64(as_of_utc, "us")
    kept = times <= cutoff
    customers, values = customers[kept], values[kept]
    days = times[kept].astype("datetime64[D]").astype(np.int64)

    order = np.lexsort((days, customers))
    customers, days, values = customers[order], days[order], values[order]
    new_day = np.ones(len(days), dtype=np.bool_)
    new_day[1:] = (customers[1:] != customers[:-1]) | (days[1:] != days[:-1])
    day_starts = np.flatnonzero(new_day)
    day_customer = customers[day_starts]
    day_of = days[day_starts]
    day_value = np.add.reduceat(values, day_starts) if len(day_starts) else values[:0]

    first_of_customer = np.ones(len(day_customer), dtype=np.bool_)
    first_of_customer[1:] = day_customer[1:] != day_customer[:-1]
    purchase_days = np.bincount(day_customer, minlength=n_customers).astype(np.float64)
    repeat_value = np.bincount(
        day_customer, weights=np.where(first_of_customer, 0.0, day_value), minlength=n_customers
    )
    first_day = np.zeros(n_customers, dtype=np.float64)
    last_day = np.zeros(n_customers, dtype=np.float64)
    last_of_customer = np.ones(len(day_customer), dtype=np.bool_)
    last_of_customer[:-1] = first_of_customer[1:]
    first_day[day_customer[first_of_customer]] = day_of[first_of_customer]
    last_day[day_customer[last_of_customer]] = day_of[last_of_customer]
    return calibration_from_aggregates(
        first_purchase_day=first_day,
        last_purchase_day=last_day,
        purchase_days=purchase_days,
        repeat_value=repeat_value,
        as_of_day=day_number(as_of),
        unit=unit,
    )
