"""Per-customer facts from ledger rows (`domain.ledger`): against a plain per-customer
definition on random ledgers, and the boundaries by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.scoring.domain.ledger import (
    MICROS_PER_DAY,
    NEVER,
    CategoryRows,
    ComplaintRows,
    LedgerFacts,
    PurchaseRows,
    ReferralRows,
    RefundRows,
    advance,
    empty_summary,
    facts_of,
    ledger_facts,
)
from services.scoring.facts import micros

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
DAY = MICROS_PER_DAY


Rows = Sequence[tuple[int, ...]]


def _columns(rows: Rows, width: int) -> list[np.ndarray]:
    table = np.array(rows, dtype=np.int64).reshape(-1, width)
    return [table[:, k] for k in range(width)]


def _split(
    customer: np.ndarray,
    at: np.ndarray,
    amount: np.ndarray,
    refunded: np.ndarray,
    chargebacks: np.ndarray,
) -> tuple[PurchaseRows, RefundRows]:
    """Purchases, and a refund row for each purchase with something refunded or charged back."""
    has = (refunded > 0) | (chargebacks > 0)
    return PurchaseRows(customer, at, amount), RefundRows(
        customer[has], at[has], refunded[has], chargebacks[has]
    )


def _facts(
    as_of: list[int],
    purchases: Rows = (),
    categories: Rows = (),
    complaints: Rows = (),
    referrals: Rows = (),
) -> LedgerFacts:
    """Purchase rows here are (customer, purchased_at, amount, refunded, chargebacks)."""
    bought, refunds = _split(*_columns(purchases, 5))
    return ledger_facts(
        as_of=np.array(as_of, dtype=np.int64),
        purchases=bought,
        refunds=refunds,
        categories=CategoryRows(*_columns(categories, 3)),
        complaints=ComplaintRows(*_columns(complaints, 4)),
        referrals=ReferralRows(*_columns(referrals, 2)),
    )


def test_money_days_and_windows_of_one_customer() -> None:
    end = micros(AS_OF)
    day_start = end - 12 * 3600 * 1_000_000  # midnight UTC of as_of's day
    purchases = [
        # customer, purchased_at, amount, refunded, chargebacks (money in ten-thousandths)
        (0, day_start - 400 * DAY, 100_0000, 0, 0),  # outside every window
        (0, day_start - 400 * DAY + 3_600_000_000, 50_0000, 10_0000, 1),  # same first day
        (0, end - 360 * DAY, 7_0000, 0, 0),  # exactly 360 days: outside the prior window
        (0, end - 180 * DAY, 20_0000, 0, 0),  # exactly 180 days: prior window
        (0, end - 180 * DAY + 1, 30_0000, 5_0000, 0),  # just inside the last 180 days
        (0, end, 40_0000, 0, 0),  # at as_of: counts
        (0, end + 1, 999_0000, 0, 0),  # after as_of: ignored
    ]
    facts = _facts([end], purchases)
    assert facts.orders[0] == 6
    assert facts.gross[0] == (100 + 50 + 7 + 20 + 30 + 40) * 10_000
    assert facts.refunded[0] == 15 * 10_000
    assert facts.chargebacks[0] == 1
    assert facts.net_365d[0] == (7 + 20 + 25 + 40) * 10_000
    assert facts.last_180d[0] == (25 + 40) * 10_000
    assert facts.prior_180d[0] == 20 * 10_000
    assert facts.first_purchase_at[0] == day_start - 400 * DAY
    assert facts.last_purchase_at[0] == end
    # Four distinct UTC days: the first day's two purchases are one transaction (140 net), and
    # so are the two around the 180-day boundary (same day).
    assert facts.purchase_days[0] == 4
    assert facts.first_day[0] == (day_start - 400 * DAY) // DAY
    assert facts.last_day[0] == facts.as_of_day[0] == end // DAY
    assert facts.repeat_value[0] == (7 + 20 + 25 + 40) * 10_000


def test_customers_without_rows_and_each_customer_at_its_own_as_of() -> None:
    early, late = micros(AS_OF - timedelta(days=30)), micros(AS_OF)
    purchase_at = micros(AS_OF - timedelta(days=10))
    facts = _facts(
        [late, early, late],
        purchases=[(0, purchase_at, 10_0000, 0, 0), (1, purchase_at, 10_0000, 0, 0)],
        categories=[(0, purchase_at, 7), (0, purchase_at, 7), (0, purchase_at, -3)],
        complaints=[
            # customer, opened_at, closed_at (NEVER while open), satisfaction (0 = none)
            (0, late - 5 * DAY, NEVER, 0),  # open
            (0, late - 9 * DAY, late - 2 * DAY, 2),  # closed with CSAT 2
            (0, late - 9 * DAY, late - 1 * DAY, 0),  # closed without CSAT
            (0, late - 9 * DAY, late + 1, 5),  # closed after as_of: still open then
            (0, late + 1, NEVER, 0),  # opened after as_of: ignored
        ],
        referrals=[(0, late - DAY), (0, late), (0, late + 1), (2, early)],
    )
    assert facts.orders.tolist() == [1, 0, 0]  # customer 1 bought after its as_of
    assert facts.purchase_days.tolist() == [1, 0, 0]
    assert facts.first_purchase_at.tolist() == [purchase_at, 0, 0]
    assert facts.first_day.tolist() == [purchase_at // DAY, 0, 0]
    assert facts.categories.tolist() == [2, 0, 0]
    assert facts.open_complaints.tolist() == [2, 0, 0]
    assert facts.csat_count.tolist() == [1, 0, 0]
    assert facts.csat_sum.tolist() == [2, 0, 0]
    assert facts.referrals.tolist() == [2, 0, 1]
    assert facts.as_of_day.tolist() == [late // DAY, early // DAY, late // DAY]


def _reference(
    as_of: np.ndarray,
    p: tuple[np.ndarray, ...],
    c: CategoryRows,
    k: ComplaintRows,
    r: ReferralRows,
) -> dict[str, list[int]]:
    """The definitions customer by customer, in plain Python (the old SQL's semantics), from
    purchase rows (customer, purchased_at, amount, refunded, chargebacks)."""
    out: dict[str, list[int]] = {name: [] for name in LedgerFacts.__dataclass_fields__}
    for customer, end in enumerate(as_of.tolist()):
        mine = [
            (t, a, f, cb)
            for who, t, a, f, cb in zip(*(column.tolist() for column in p), strict=True)
            if who == customer and t <= end
        ]
        value_of_day: dict[int, int] = {}
        for t, a, f, _ in mine:
            value_of_day[t // DAY] = value_of_day.get(t // DAY, 0) + a - f
        days = sorted(value_of_day)
        out["as_of_day"].append(end // DAY)
        out["orders"].append(len(mine))
        out["first_purchase_at"].append(min((t for t, *_ in mine), default=0))
        out["last_purchase_at"].append(max((t for t, *_ in mine), default=0))
        out["gross"].append(sum(a for _, a, _, _ in mine))
        out["refunded"].append(sum(f for _, _, f, _ in mine))
        out["net_365d"].append(sum(a - f for t, a, f, _ in mine if t > end - 365 * DAY))
        out["last_180d"].append(sum(a - f for t, a, f, _ in mine if t > end - 180 * DAY))
        out["prior_180d"].append(
            sum(a - f for t, a, f, _ in mine if end - 360 * DAY < t <= end - 180 * DAY)
        )
        out["chargebacks"].append(sum(cb for *_, cb in mine))
        out["purchase_days"].append(len(days))
        out["first_day"].append(days[0] if days else 0)
        out["last_day"].append(days[-1] if days else 0)
        out["repeat_value"].append(sum(value_of_day[d] for d in days[1:]))
        out["categories"].append(
            len(
                {
                    name
                    for who, t, name in zip(
                        c.customer.tolist(),
                        c.purchased_at.tolist(),
                        c.category.tolist(),
                        strict=True,
                    )
                    if who == customer and t <= end
                }
            )
        )
        out["referrals"].append(
            sum(
                1
                for who, t in zip(r.referrer.tolist(), r.registered_at.tolist(), strict=True)
                if who == customer and t <= end
            )
        )
        complaints = [
            (o, cl, s)
            for who, o, cl, s in zip(
                k.customer.tolist(),
                k.opened_at.tolist(),
                k.closed_at.tolist(),
                k.satisfaction.tolist(),
                strict=True,
            )
            if who == customer
        ]
        out["open_complaints"].append(sum(1 for o, cl, _ in complaints if o <= end < cl))
        out["csat_count"].append(sum(1 for _, cl, s in complaints if cl <= end and s > 0))
        out["csat_sum"].append(sum(s for _, cl, s in complaints if cl <= end))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_ledgers_match_the_per_customer_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = 60, 500
    base = micros(AS_OF)
    as_of = base - rng.integers(0, 40, n) * DAY - rng.integers(0, DAY, n)
    when = base - rng.integers(0, 800 * DAY, m)
    amount = rng.integers(1, 10_000_000, m)
    purchases = (
        rng.integers(0, n - 5, m),  # the last five customers never buy
        when,
        amount,
        np.where(rng.random(m) < 0.2, amount // rng.integers(1, 5, m), 0),
        (rng.random(m) < 0.05).astype(np.int64),
    )
    bought, refunds = _split(*purchases)
    categories = CategoryRows(
        customer=bought.customer[np.arange(m) % 2 == 0],
        purchased_at=when[np.arange(m) % 2 == 0],
        category=rng.integers(-(2**31), 2**31 - 1, m // 2) % 7 - 3,
    )
    opened = base - rng.integers(0, 100 * DAY, 80)
    closed = np.where(rng.random(80) < 0.6, opened + rng.integers(0, 60 * DAY, 80), NEVER)
    complaints = ComplaintRows(
        customer=rng.integers(0, n, 80),
        opened_at=opened,
        closed_at=closed,
        satisfaction=np.where(
            (closed != NEVER) & (rng.random(80) < 0.7), rng.integers(1, 6, 80), 0
        ),
    )
    referrals = ReferralRows(
        referrer=rng.integers(0, n, 40), registered_at=base - rng.integers(-5 * DAY, 90 * DAY, 40)
    )

    facts = ledger_facts(
        as_of=as_of,
        purchases=bought,
        refunds=refunds,
        categories=categories,
        complaints=complaints,
        referrals=referrals,
    )

    expected = _reference(as_of, purchases, categories, complaints, referrals)
    for name, values in expected.items():
        assert getattr(facts, name).tolist() == values, name
    assert facts.orders[-5:].tolist() == [0] * 5


def _leaving(before: np.ndarray, after: np.ndarray, bought: PurchaseRows) -> dict[int, np.ndarray]:
    """What the database returns for `advance`: per customer, the amounts bought by the
    summary's as_of (`before`) in (before - L, min(before, after - L)]."""
    leaving = {}
    for days in (180, 360, 365):
        low, high = before - days * DAY, np.minimum(before, after - days * DAY)
        at, who = bought.purchased_at, bought.customer
        inside = (at > low[who]) & (at <= high[who])
        leaving[days] = np.bincount(who[inside], bought.amount[inside], minlength=len(before))
        leaving[days] = leaving[days].astype(np.int64)
    return leaving


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_a_summary_advanced_event_by_event_equals_one_from_the_whole_history(seed: int) -> None:
    """What the handlers rely on: facts from the stored summary plus what happened since are the
    facts from the whole history, at every step (windows' edges, days continued across steps,
    categories seen before, refunds of purchases inside and outside the windows)."""
    rng = np.random.default_rng(seed)
    n, m, steps = 40, 700, 8
    base = micros(AS_OF)
    # Each customer's as_of at every step, increasing (sometimes standing still).
    times = np.sort(base - rng.integers(0, 900 * DAY, (steps, n)), axis=0)
    times[3] = times[2]
    who = rng.integers(0, n - 3, m)  # the last three customers never buy
    when = base - rng.integers(0, 1000 * DAY, m)
    # Purchases right on the edges: at a step's as_of, and exactly L days before it.
    edge = rng.integers(0, steps, m // 5)
    shift = rng.choice([0, 180 * DAY, 360 * DAY, 365 * DAY], m // 5)
    when[: m // 5] = times[edge, who[: m // 5]] - shift
    # Several purchases on one day, over steps.
    when[m // 5 : m // 5 + 40] = times[5, who[m // 5 : m // 5 + 40]] - rng.integers(0, 3, 40)
    amount = rng.integers(1, 10_000_000, m)
    refunded = np.where(rng.random(m) < 0.2, amount // rng.integers(1, 5, m), 0)
    chargebacks = (rng.random(m) < 0.05).astype(np.int64)
    bought, refunds = _split(who, when, amount, refunded, chargebacks)
    every_other = np.arange(m) % 2 == 0
    categories = CategoryRows(
        customer=who[every_other],
        purchased_at=when[every_other],
        category=rng.integers(-(2**31), 2**31 - 1, every_other.sum()) % 9 - 4,
    )
    no_complaints = ComplaintRows(*(np.zeros(0, dtype=np.int64),) * 4)
    no_referrals = ReferralRows(*(np.zeros(0, dtype=np.int64),) * 2)

    summary = empty_summary(n)
    for step in range(steps):
        as_of = times[step]
        leaving = None if step == 0 else _leaving(summary.as_of, as_of, bought)
        summary = advance(
            summary, as_of=as_of, purchases=bought, categories=categories, leaving=leaving
        )
        whole = advance(empty_summary(n), as_of=as_of, purchases=bought, categories=categories)
        for field in fields(whole):
            assert getattr(summary, field.name).tolist() == getattr(whole, field.name).tolist(), (
                step,
                field.name,
            )
        facts = facts_of(summary, refunds=refunds, complaints=no_complaints, referrals=no_referrals)
        expected = _reference(
            as_of,
            (who, when, amount, refunded, chargebacks),
            categories,
            no_complaints,
            no_referrals,
        )
        for name, values in expected.items():
            assert getattr(facts, name).tolist() == values, (step, name)
    assert summary.orders[-3:].tolist() == [0] * 3


def test_a_summary_does_not_go_back_in_time() -> None:
    summary = empty_summary(2)
    later = advance(
        summary,
        as_of=np.array([10 * DAY, 10 * DAY]),
        purchases=PurchaseRows(*(np.zeros(0, dtype=np.int64),) * 3),
        categories=CategoryRows(*(np.zeros(0, dtype=np.int64),) * 3),
    )
    with pytest.raises(ValueError, match="forward"):
        advance(
            later,
            as_of=np.array([10 * DAY, 9 * DAY]),
            purchases=PurchaseRows(*(np.zeros(0, dtype=np.int64),) * 3),
            categories=CategoryRows(*(np.zeros(0, dtype=np.int64),) * 3),
        )


def test_rows_must_have_equal_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        ledger_facts(
            as_of=np.zeros(1, dtype=np.int64),
            purchases=PurchaseRows(
                *(np.zeros(2, dtype=np.int64),) * 2, np.zeros(1, dtype=np.int64)
            ),
            refunds=RefundRows(*(np.zeros(0, dtype=np.int64),) * 4),
            categories=CategoryRows(*(np.zeros(0, dtype=np.int64),) * 3),
            complaints=ComplaintRows(*(np.zeros(0, dtype=np.int64),) * 4),
            referrals=ReferralRows(*(np.zeros(0, dtype=np.int64),) * 2),
        )
