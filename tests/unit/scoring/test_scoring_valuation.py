"""Valuation of a population, and of one customer against the stored reference: they agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.scoring.domain.calibration import day_number
from services.scoring.domain.composite import Dimension, Tier
from services.scoring.domain.policy import ValueModelPolicy
from services.scoring.domain.rfm import RfmSegment
from services.scoring.domain.valuation import (
    CustomerFacts,
    PopulationReference,
    value_customers,
    value_population,
)

AS_OF = datetime(2024, 6, 30, tzinfo=UTC)
POLICY = ValueModelPolicy()


def _population(n: int, seed: int) -> CustomerFacts:
    rng = np.random.default_rng(seed)
    days = np.where(rng.random(n) < 0.15, 0, 1 + rng.poisson(3, n))
    bought = days > 0
    gross = np.where(bought, np.round(rng.lognormal(4, 1, n) * days, 2), 0.0)
    refunded = np.where(rng.random(n) < 0.1, np.round(gross * rng.random(n), 2), 0.0)
    tenure = np.where(bought, rng.integers(0, 1500, n), 0)
    return CustomerFacts.of(
        purchase_days=days,
        recency_days=np.where(bought, np.minimum(tenure, rng.integers(0, 700, n)), 0),
        tenure_days=tenure,
        net_revenue=gross - refunded,
        net_revenue_365d=np.round((gross - refunded) * rng.random(n), 2),
        revenue_last_180d=np.round(gross * rng.random(n) / 3, 2),
        revenue_prior_180d=np.round(gross * rng.random(n) / 3, 2),
        gross_revenue=gross,
        refunded_revenue=refunded,
        chargebacks=(rng.random(n) < 0.02).astype(int),
        categories=np.where(bought, rng.integers(1, 8, n), 0),
        referrals=rng.poisson(0.3, n),
        clv=np.where(bought, rng.lognormal(4, 1.3, n), 0.0),
        csat_sum=(counts := rng.poisson(0.4, n)) * rng.integers(1, 6, n),
        csat_count=counts,
        open_complaints=rng.poisson(0.1, n),
    )


def test_one_customer_against_the_stored_reference_gets_the_batch_result() -> None:
    facts = _population(2000, seed=1)
    batch, reference = value_population(facts, policy=POLICY, as_of=AS_OF)
    stored = PopulationReference.model_validate_json(reference.model_dump_json())

    # RFM alone differs only where a value is tied across a quintile boundary (see rfm.py).
    rfm_comparable = 0
    for customer in range(0, 2000, 7):
        alone = value_customers(
            facts.take([customer]), policy=POLICY, reference=stored, as_of_day=day_number(AS_OF)
        ).row(0)
        expected = batch.row(customer)
        assert alone.tier == expected.tier
        assert alone.dick_basu == expected.dick_basu
        assert alone.jones_sasser == expected.jones_sasser
        assert alone.loyalty_index == pytest.approx(expected.loyalty_index, abs=1e-9)
        if expected.score is None:
            assert alone.score is None and alone.dimensions is None
            continue
        assert alone.score == pytest.approx(expected.score, abs=1e-9)
        assert alone.dimensions == pytest.approx(expected.dimensions, abs=1e-9)
        monetary = facts.net_revenue[customer]
        if np.sum(facts.net_revenue[facts.purchase_days > 0] == monetary) == 1:
            assert alone.rfm_monetary == expected.rfm_monetary
            rfm_comparable += 1
    assert rfm_comparable > 200


def test_population_shape_tiers_and_customers_without_purchase() -> None:
    facts = _population(4000, seed=2)
    valuation, reference = value_population(facts, policy=POLICY, as_of=AS_OF)
    bought = facts.purchase_days > 0
    purchasers = int(bought.sum())
    assert reference.customers == purchasers
    assert all(tier is None for tier in valuation.tier[~bought])
    assert all(segment is None for segment in valuation.rfm.segment[~bought])
    assert np.all(np.isnan(valuation.score[~bought]))
    assert np.all((valuation.score[bought] >= 0) & (valuation.score[bought] <= 100))
    key = int(np.sum(valuation.tier == Tier.KEY))
    major = int(np.sum(valuation.tier == Tier.MAJOR))
    # Ties with the last member of a tier join it, so a tier can only be a little larger.
    assert 0 <= key - int(0.05 * purchasers) <= 3
    assert 0 <= key + major - int(0.20 * purchasers) <= 3
    # Every purchaser's dimension is a percentile among purchasers.
    for dimension in Dimension:
        values = valuation.dimensions[dimension][bought]
        assert values.min() >= 0 and values.max() <= 100
        assert 40 < np.median(values) < 60
    segments = set(valuation.rfm.segment[bought].tolist())
    assert RfmSegment.CHAMPIONS in segments and RfmSegment.HIBERNATING in segments


def test_a_customer_scored_later_is_not_penalised_for_the_whole_population_ageing() -> None:
    facts = _population(1000, seed=3)
    batch, reference = value_population(facts, policy=POLICY, as_of=AS_OF)
    customer = int(np.flatnonzero(facts.purchase_days > 0)[0])
    same = facts.take([customer])
    ten_days_later = CustomerFacts.of(
        **{
            name: getattr(same, name) + (10 if name in ("recency_days", "tenure_days") else 0)
            for name in CustomerFacts.__dataclass_fields__
        }
    )
    later = value_customers(
        ten_days_later,
        policy=POLICY,
        reference=reference,
        as_of_day=day_number(AS_OF + timedelta(days=10)),
    )
    assert later.rfm.recency[0] == batch.rfm.recency[customer]


def test_a_purchase_lifts_the_score_of_a_customer() -> None:
    facts = _population(1500, seed=4)
    _, reference = value_population(facts, policy=POLICY, as_of=AS_OF)
    customer = int(np.flatnonzero(facts.purchase_days > 0)[0])
    before = facts.take([customer])
    after = CustomerFacts.of(
        **{name: getattr(before, name) for name in CustomerFacts.__dataclass_fields__}
        | {
            "purchase_days": before.purchase_days + 1,
            "recency_days": np.zeros(1),
            "net_revenue": before.net_revenue + 500,
            "net_revenue_365d": before.net_revenue_365d + 500,
            "revenue_last_180d": before.revenue_last_180d + 500,
            "gross_revenue": before.gross_revenue + 500,
            "clv": before.clv * 1.5,
        }
    )
    score_before = value_customers(
        before, policy=POLICY, reference=reference, as_of_day=day_number(AS_OF)
    ).row(0)
    score_after = value_customers(
        after, policy=POLICY, reference=reference, as_of_day=day_number(AS_OF)
    ).row(0)
    assert score_before.score is not None and score_after.score is not None
    assert score_after.score > score_before.score
    assert score_after.rfm_recency == 5


def test_facts_must_be_complete_and_aligned() -> None:
    with pytest.raises(ValueError, match="missing"):
        CustomerFacts.of(purchase_days=[1])
    columns = {name: [0.0] for name in CustomerFacts.__dataclass_fields__}
    columns["clv"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="same length"):
        CustomerFacts.of(**columns)
