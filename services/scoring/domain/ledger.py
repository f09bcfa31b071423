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
    for rows in (purchases, categories):
        same_length(**{f.name: getattr(rows, f.name) for f in fields(rows)})
    summary = advance(
        empty_summary(len(as_of)), as_of=as_of, purchases=purchases, categories=categories
    )
    return facts_of(summary, refunds=refunds, complaints=complaints, referrals=referrals)


# The purchase windows a summary keeps, in days: amounts bought within the last L days.
WINDOW_DAYS = (180, 360, 365)
_BEFORE_EVERYTHING = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class PurchaseSummary:
    """What customers' purchases add up to at their `as_of`, refunds aside.

    Stored with the customer, it makes the next facts cost what happened since instead of the
    whole history (`advance`): purchases after `as_of` are added; of those before, only the ones
    leaving a window are read again, as sums. Refunds (few) are applied by `facts_of` each time.
    A customer without a summary has one at the beginning of time (`empty_summary`).
    """

    as_of: IntArray
    orders: IntArray
    first_purchase_at: IntArray
    last_purchase_at: IntArray
    gross: IntArray
    within_180d: IntArray  # amounts bought in (as_of - 180 d, as_of]
    within_360d: IntArray
    within_365d: IntArray
    purchase_days: IntArray
    first_day: IntArray
    last_day: IntArray
    repeat_gross: IntArray  # amounts bought after the first purchase day
    # The distinct categories bought: one row each, customers in ascending order.
    category_customer: IntArray
    category: IntArray

    def __len__(self) -> int:
        return len(self.as_of)

    def within(self, days: int) -> IntArray:
        return {180: self.within_180d, 360: self.within_360d, 365: self.within_365d}[days]


def empty_summary(n: int) -> PurchaseSummary:
    def zeros(size: int = n) -> IntArray:
        return np.zeros(size, dtype=np.int64)

    return PurchaseSummary(
        as_of=np.full(n, _BEFORE_EVERYTHING, dtype=np.int64),
        orders=zeros(),
        first_purchase_at=zeros(),
        last_purchase_at=zeros(),
        gross=zeros(),
        within_180d=zeros(),
        within_360d=zeros(),
        within_365d=zeros(),
        purchase_days=zeros(),
        first_day=zeros(),
        last_day=zeros(),
        repeat_gross=zeros(),
        category_customer=zeros(0),
        category=zeros(0),
    )


def advance(
    summary: PurchaseSummary,
    *,
    as_of: IntArray,
    purchases: PurchaseRows,
    categories: CategoryRows,
    leaving: dict[int, IntArray] | None = None,
) -> PurchaseSummary:
    """The summary at a later `as_of`: the purchases (and their categories) made after the
    summary's as_of and by the new one are added (others given are ignored); `leaving[L]` is
    what was bought by the summary's as_of in (summary as_of - L, new as_of - L], which leaves
    the L-day window (0 for all when None: right for an empty summary only)."""
    n = len(summary)
    as_of = np.asarray(as_of, dtype=np.int64)
    same_length(as_of=as_of, summary=summary.as_of)
    if np.any(as_of < summary.as_of):
        raise ValueError("a purchase summary only moves forward in time")
    kept = (purchases.purchased_at > summary.as_of[purchases.customer]) & (
        purchases.purchased_at <= as_of[purchases.customer]
    )
    customer, at, amount = (
        purchases.customer[kept],
        purchases.purchased_at[kept],
        purchases.amount[kept],
    )
    day = at // MICROS_PER_DAY
    had = summary.orders > 0
    added = _count(customer, n)
    bought = added > 0
    first_added, last_added = _first_and_last(customer, at, bought)
    first_added_day, last_added_day = _first_and_last(customer, day, bought)
    first_day = np.where(had, summary.first_day, first_added_day)
    # Added purchases are after the summary's last one: only their first day may be its last.
    continued = had & bought & (first_added_day == summary.last_day)
    windows = {
        days: summary.within(days)
        - (leaving[days] if leaving is not None else 0)
        + _sum(customer, np.where(at > as_of[customer] - days * MICROS_PER_DAY, amount, 0), n)
        for days in WINDOW_DAYS
    }
    kept_categories = (categories.purchased_at > summary.as_of[categories.customer]) & (
        categories.purchased_at <= as_of[categories.customer]
    )
    category_customer, category = _distinct_pairs(
        np.concatenate([summary.category_customer, categories.customer[kept_categories]]),
        np.concatenate([summary.category, categories.category[kept_categories]]),
    )
    return PurchaseSummary(
        as_of=as_of,
        orders=summary.orders + added,
        first_purchase_at=np.where(had, summary.first_purchase_at, first_added),
        last_purchase_at=np.where(bought, last_added, summary.last_purchase_at),
        gross=summary.gross + _sum(customer, amount, n),
        within_180d=windows[180],
        within_360d=windows[360],
        within_365d=windows[365],
        purchase_days=summary.purchase_days + _count_distinct(customer, day, n) - continued,
        first_day=first_day,
        last_day=np.where(bought, last_added_day, summary.last_day),
        repeat_gross=summary.repeat_gross
        + _sum(customer, np.where(day != first_day[customer], amount, 0), n),
        category_customer=category_customer,
        category=category,
    )


def facts_of(
    summary: PurchaseSummary,
    *,
    refunds: RefundRows,
    complaints: ComplaintRows,
    referrals: ReferralRows,
) -> LedgerFacts:
    """The facts at the summary's as_of: its purchases less the refunds, each refund at the time
    of its purchase; complaints and referrals."""
    n = len(summary)
    as_of = summary.as_of
    for rows in (refunds, complaints, referrals):
        same_length(**{f.name: getattr(rows, f.name) for f in fields(rows)})
    kept = refunds.purchased_at <= as_of[refunds.customer]
    customer, at, refunded = (
        refunds.customer[kept],
        refunds.purchased_at[kept],
        refunds.refunded[kept],
    )
    age = as_of[customer] - at

    def refunded_within(days: int) -> IntArray:
        return _sum(customer, np.where(age < days * MICROS_PER_DAY, refunded, 0), n)

    last_180d = summary.within_180d - refunded_within(180)
    return LedgerFacts(
        as_of_day=as_of // MICROS_PER_DAY,
        orders=summary.orders,
        first_purchase_at=summary.first_purchase_at,
        last_purchase_at=summary.last_purchase_at,
        gross=summary.gross,
        refunded=_sum(customer, refunded, n),
        net_365d=summary.within_365d - refunded_within(365),
        last_180d=last_180d,
        prior_180d=summary.within_360d - refunded_within(360) - last_180d,
        chargebacks=_sum(customer, refunds.chargebacks[kept], n),
        purchase_days=summary.purchase_days,
        first_day=summary.first_day,
        last_day=summary.last_day,
        repeat_value=summary.repeat_gross
        - _sum(
            customer, np.where(at // MICROS_PER_DAY != summary.first_day[customer], refunded, 0), n
        ),
        categories=_count(summary.category_customer, n),
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


def _distinct_pairs(customer: IntArray, key: IntArray) -> tuple[IntArray, IntArray]:
    """The distinct (customer, key) pairs of int32-range keys, by customer then key."""
    packed = np.unique((customer.astype(np.int64) << 32) | (key.astype(np.int64) & 0xFFFFFFFF))
    low = packed & 0xFFFFFFFF
    return packed >> 32, np.where(low >= 2**31, low - 2**32, low)
