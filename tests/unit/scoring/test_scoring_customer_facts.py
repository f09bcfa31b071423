"""The facts the value model scores (`service.customer_facts`) from the ledger's exact money."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from services.scoring.domain import ValueModelPolicy
from services.scoring.domain.calibration import day_number
from services.scoring.domain.ledger import (
    MICROS_PER_DAY,
    CategoryRows,
    ComplaintRows,
    PurchaseRows,
    ReferralRows,
    RefundRows,
    ledger_facts,
)
from services.scoring.domain.valuation import value_customers, value_population
from services.scoring.facts import Facts, micros
from services.scoring.service import customer_facts

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
EMPTY = np.zeros(0, dtype=np.int64)


def _facts(gross: list[int], refunded: list[int]) -> Facts:
    """One purchase a customer, ten days before as_of (money in ten-thousandths)."""
    n = len(gross)
    end = micros(AS_OF)
    customers = np.arange(n, dtype=np.int64)
    at = np.full(n, end - 10 * MICROS_PER_DAY, dtype=np.int64)
    has = np.array(refunded) > 0
    ledger = ledger_facts(
        as_of=np.full(n, end, dtype=np.int64),
        purchases=PurchaseRows(customers, at, np.array(gross, dtype=np.int64)),
        refunds=RefundRows(
            customers[has],
            at[has],
            np.array(refunded, dtype=np.int64)[has],
            np.zeros(int(has.sum()), dtype=np.int64),
        ),
        categories=CategoryRows(EMPTY, EMPTY, EMPTY),
        complaints=ComplaintRows(EMPTY, EMPTY, EMPTY, EMPTY),
        referrals=ReferralRows(EMPTY, EMPTY),
    )
    zeros = np.zeros(n, dtype=np.int64)
    return Facts(customers, zeros, np.full(n, end, dtype=np.int64), zeros, ledger)


def test_equal_net_revenues_are_equal_whatever_was_refunded() -> None:
    # 100.00 bought; 128.20 bought and 28.20 refunded: both net 100.00 (128.2 - 28.2 in floats
    # is 99.99999999999999).
    facts = _facts(gross=[100_0000, 128_2000], refunded=[0, 28_2000])
    net = customer_facts(facts, np.zeros(2)).net_revenue
    assert net.tolist() == [100.0, 100.0]


def test_customers_tied_on_net_revenue_get_monetary_scores_by_position() -> None:
    # Tied on monetary (net 100.00 each): ties go by position, so the first scores lower.
    facts = _facts(gross=[100_0000, 128_2000], refunded=[0, 28_2000])
    valuation, reference = value_population(
        customer_facts(facts, np.zeros(2)), policy=ValueModelPolicy(), as_of=AS_OF
    )
    assert valuation.rfm.monetary.tolist() == [1, 3]
    # The second scored alone against that population: a value tied across a boundary gets
    # the upper score there.
    alone = value_customers(
        customer_facts(facts.take(np.array([1])), np.zeros(1)),
        policy=ValueModelPolicy(),
        reference=reference,
        as_of_day=day_number(AS_OF),
    )
    assert alone.rfm.monetary.tolist() == [3]
