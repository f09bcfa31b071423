"""Per-customer facts from ledger rows at each customer's `as_of`, vectorised over customers.

Rows name their customer by position (0 .. n-1). Instants are microseconds since the Unix epoch
(UTC) and money is int64 ten-thousandths (the ledgers' numeric(18, 4)), so sums are exact. A
refund row is what was refunded of one purchase by the customer's `as_of` (at most its amount)
with its chargebacks, dated at the purchase: it counts against that purchase's day and windows.
The caller keeps only rows in the base currency; purchases (and their refunds and categories),
complaints and referrals after `as_of` are ignored here.

- orders, first and last purchase, gross, refunded; net revenue over the last 365 days, the last
  180 days and the 180 days before those (`as_of - 360 d < t <= as_of - 180 d`);
- purchase days (UTC calendar days with a purchase), the first and last of them, and the value of
  the days after the first (the Gamma-Gamma input);
- distinct categories bought; referrals made; complaints open at `as_of`; CSAT given by then.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from services.scoring.domain._arrays import BoolArray, IntArray, same_length

MONEY_SCALE = 10_000
MICROS_PER_DAY = 86_400_000_000
# A complaint not closed (yet) is closed "never".
NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class PurchaseRows:
    customer: IntArray
    purchased_at: IntArray
    amount: IntArray


@dataclass(frozen=True, slots=True)
class RefundRows:
    """Per refunded purchase: its customer and time, the amount refunded, the chargebacks."""

    customer: IntArray
    purchased_at: IntArray
    refunded: IntArray
    chargebacks: IntArray


@dataclass(frozen=True, slots=True)
class CategoryRows:
    """One row per category of a purchase; `category` is any integer naming it (e.g. a hash)."""

    customer: IntArray
    purchased_at: IntArray
    category: IntArray


@dataclass(frozen=True, slots=True)
class ComplaintRows:
    """`closed_at` is NEVER while open; `satisfaction` is the CSAT 1-5 given at closing, 0 = none."""

    customer: IntArray
    opened_at: IntArray
    closed_at: IntArray
    satisfaction: IntArray


@dataclass(frozen=True, slots=True)
class ReferralRows:
    referrer: IntArray
    registered_at: IntArray


@dataclass(frozen=True, slots=True)
class LedgerFacts:
    """Aggregates per customer; days are day numbers since 1970-01-01 (0 without a purchase),
    instants microseconds (0 without a purchase), money ten-thousandths."""

    as_of_day: IntArray
    orders: IntArray
    first_purchase_at: IntArray
    last_purchase_at: IntArray
    gross: IntArray
    refunded: IntArray
    net_365d: IntArray
    last_180d: IntArray
    prior_180d: IntArray
    chargebacks: IntArray
    purchase_days: IntArray
    first_day: IntArray
    last_day: IntArray
    repeat_value: IntArray
    categories: IntArray
    referrals: IntArray
    open_complaints: IntArray
    csat_count: IntArray
    csat_sum: IntArray

    def __len__(self) -> int:
        return len(self.as_of_day)


def _count(customer: IntArray, n: int, where: BoolArray | None = None) -> IntArray:
    chosen = customer if where is None else customer[where]
    return np.bincount(chosen, minlength=n).astype(np.int64)


def _sum(customer: IntArray, values: IntArray, n: int) -> IntArray:
    # Integer sums (np.add.at) stay exact where float weights could round.
    total = np.zeros(n, dtype=np.int64)
    np.add.at(total, customer, values)
    return total


def ledger_facts(
    *,
    as_of: IntArray,
    purchases: PurchaseRows,
    refunds: RefundRows,
    categories: CategoryRows,
    complaints: ComplaintRows,
    referrals: ReferralRows,
) -> LedgerFacts:
    """Facts of customers 0 .. len(as_of)-1, each at its own `as_of` (microseconds)."""
    n = len(as_of)
    as_of = np.asarray(as_of, dtype=np.int64)
    for rows in (purchases, refunds, categories, complaints, referrals):
        same_length(**{f.name: getattr(rows, f.name) for f in fields(rows)})

    kept = purchases.purchased_at <= as_of[purchases.customer]
    customer, at, amount = (
        purchases.customer[kept],
        purchases.purchased_at[kept],
        purchases.amount[kept],
    )
    refunded = refunds.purchased_at <= as_of[refunds.customer]
    # Money moves: purchases in, refunds out, each at the time of its purchase.
    mover = np.concatenate([customer, refunds.customer[refunded]])
    moved_at = np.concatenate([at, refunds.purchased_at[refunded]])
    value = np.concatenate([amount, -refunds.refunded[refunded]])
    age = as_of[mover] - moved_at
    last_180d = age < 180 * MICROS_PER_DAY

    orders = _count(customer, n)
    first_purchase_at, last_purchase_at = _first_and_last(customer, at, orders > 0)
    purchase_days = _count_distinct(customer, at // MICROS_PER_DAY, n)
    first_day, last_day = _first_and_last(customer, at // MICROS_PER_DAY, purchase_days > 0)
    repeat = moved_at // MICROS_PER_DAY != first_day[mover]
    return LedgerFacts(
        as_of_day=as_of // MICROS_PER_DAY,
        orders=orders,
        first_purchase_at=first_purchase_at,
        last_purchase_at=last_purchase_at,
        gross=_sum(customer, amount, n),
        refunded=_sum(refunds.customer[refunded], refunds.refunded[refunded], n),
        net_365d=_sum(mover, np.where(age < 365 * MICROS_PER_DAY, value, 0), n),
        last_180d=_sum(mover, np.where(last_180d, value, 0), n),
        prior_180d=_sum(mover, np.where(~last_180d & (age < 360 * MICROS_PER_DAY), value, 0), n),
        chargebacks=_sum(refunds.customer[refunded], refunds.chargebacks[refunded], n),
        purchase_days=purchase_days,
        first_day=first_day,
        last_day=last_day,
        repeat_value=_sum(mover[repeat], value[repeat], n),
        categories=_distinct_categories(categories, as_of, n),
        referrals=_count(
            referrals.referrer, n, referrals.registered_at <= as_of[referrals.referrer]
        ),
        open_complaints=_count(
            complaints.customer,
            n,
            (complaints.opened_at <= as_of[complaints.customer])
            & (complaints.closed_at > as_of[complaints.customer]),
        ),
        csat_count=_count(
            complaints.customer,
            n,
            (complaints.closed_at <= as_of[complaints.customer]) & (complaints.satisfaction > 0),
        ),
        csat_sum=_sum(
            complaints.customer,
            np.where(
                complaints.closed_at <= as_of[complaints.customer], complaints.satisfaction, 0
            ),
            n,
        ),
    )


def _first_and_last(
    customer: IntArray, values: IntArray, present: BoolArray
) -> tuple[IntArray, IntArray]:
    """Smallest and largest value per customer (0 for customers without a row)."""
    first = np.full(len(present), NEVER, dtype=np.int64)
    np.minimum.at(first, customer, values)
    last = np.full(len(present), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, customer, values)
    return np.where(present, first, 0), np.where(present, last, 0)


def _count_distinct(customer: IntArray, key: IntArray, n: int) -> IntArray:
    """How many distinct values of `key` (any int32-range integers) each customer has."""
    if len(customer) == 0:
        return np.zeros(n, dtype=np.int64)
    # One sort of (customer, key) packed in an int64 is much cheaper than a lexsort.
    packed = np.sort((customer << 32) | (key & 0xFFFFFFFF))
    first = np.ones(len(packed), dtype=np.bool_)
    first[1:] = packed[1:] != packed[:-1]
    return _count(packed[first] >> 32, n)


def _distinct_categories(rows: CategoryRows, as_of: IntArray, n: int) -> IntArray:
    kept = rows.purchased_at <= as_of[rows.customer]
    return _count_distinct(rows.customer[kept], rows.category[kept], n)
