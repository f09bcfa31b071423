"""The value events a recompute writes straight to the outbox are the contract's events.

`values.value_events` fills byte templates instead of building Pydantic models (a million
customers, two events each, at a first recompute); here every event it makes must parse as
the contract's CloudEvent and carry exactly what the models built the slow way carry.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pytest

from services.scoring.domain.composite import Dimension
from services.scoring.domain.policy import ValueModelPolicy
from services.scoring.domain.valuation import CustomerFacts, value_population
from services.scoring.facts import micros
from services.scoring.values import SOURCE, Scored, uuid_strings, value_events
from shared.events import new_event, parse
from shared.events import payloads as p
from shared.events import registry as ev
from shared.money import in_minor_units, minor_units

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)


def _scored(n: int, seed: int) -> Scored:
    rng = np.random.default_rng(seed)
    days = np.where(rng.random(n) < 0.2, 0, 1 + rng.poisson(2, n))
    bought = days > 0
    gross = np.where(bought, np.round(rng.lognormal(4, 1, n) * days, 2), 0.0)
    facts = CustomerFacts.of(
        purchase_days=days,
        recency_days=np.where(bought, rng.integers(0, 300, n), 0),
        tenure_days=np.where(bought, rng.integers(300, 900, n), 0),
        net_revenue=gross,
        net_revenue_365d=gross / 2,
        revenue_last_180d=gross / 3,
        revenue_prior_180d=gross / 4,
        gross_revenue=gross,
        refunded_revenue=np.zeros(n),
        chargebacks=np.zeros(n),
        categories=np.where(bought, rng.integers(1, 6, n), 0),
        referrals=rng.poisson(0.3, n),
        clv=np.where(bought, rng.lognormal(4, 1.3, n), 0.0),
        csat_sum=(counts := rng.poisson(0.5, n)) * rng.integers(1, 6, n),
        csat_count=counts,
        open_complaints=rng.poisson(0.2, n),
    )
    valuation, _ = value_population(facts, policy=ValueModelPolicy(), as_of=AS_OF)
    # Probabilities slightly outside [0, 1] and a negative CLV are clamped in events.
    p_alive = np.where(bought, rng.uniform(-0.01, 1.01, n), np.nan)
    clv = np.where(bought, rng.lognormal(4, 1.3, n) * rng.choice([1, -1], n, p=[0.9, 0.1]), 0.0)
    return Scored(valuation, p_alive, np.full(n, np.nan), np.full(n, np.nan), clv, has_clv=True)


def _expected(
    customer_id: uuid.UUID,
    at: datetime,
    scored: Scored,
    row: int,
    previous_tier: str | None,
    tier_moved: bool,
    model_version: str,
    currency: str,
) -> list[Any]:
    """The events as the Pydantic models make them (what the service did one by one)."""
    value = scored.valuation.row(row)
    assert value.score is not None and value.dimensions is not None
    clv_value = float(scored.clv[row]) if scored.has_clv else math.nan
    clv = (
        None
        if not math.isfinite(clv_value)
        else in_minor_units(max(Decimal(f"{clv_value:.2f}"), Decimal(0)), currency)
    )
    p_alive = float(scored.p_alive[row])
    score = min(100.0, max(0.0, value.score))
    dimensions = value.dimensions
    events = [
        new_event(
            type=ev.VALUE_SCORED,
            source=SOURCE,
            subject=customer_id,
            time=at,
            data=p.ValueScored(
                customer_id=customer_id,
                score=score,
                dimensions=p.ValueDimensions(
                    current=dimensions[Dimension.CURRENT_CONTRIBUTION],
                    future=dimensions[Dimension.FUTURE_CONTRIBUTION],
                    credit=dimensions[Dimension.CREDIT],
                    loyalty=dimensions[Dimension.LOYALTY],
                    growth=dimensions[Dimension.GROWTH_POTENTIAL],
                ),
                tier=value.tier,
                rfm=p.RfmScore(
                    recency=value.rfm_recency,
                    frequency=value.rfm_frequency,
                    monetary=value.rfm_monetary,
                    segment=value.rfm_segment,
                )
                if value.rfm_segment is not None
                else None,
                loyalty=p.LoyaltyScore(
                    index=value.loyalty_index,
                    behavioural=value.behavioural_loyalty,
                    attitudinal=value.attitudinal_loyalty,
                    dick_basu=value.dick_basu,
                    jones_sasser=value.jones_sasser,
                ),
                p_alive=None if math.isnan(p_alive) else min(1.0, max(0.0, p_alive)),
                clv=clv,
                currency=currency if clv is not None else None,
                model_version=model_version,
            ),
        )
    ]
    if tier_moved:
        events.append(
            new_event(
                type=ev.TIER_CHANGED,
                source=SOURCE,
                subject=customer_id,
                time=at,
                data=p.TierChanged(
                    customer_id=customer_id,
                    from_tier=previous_tier,
                    to_tier=value.tier,
                    score=score,
                    model_version=model_version,
                ),
            )
        )
    return events


def _without_id(event: Any) -> dict[str, Any]:
    """The event's fields (money as Decimal: "0.00" and "0" are the same amount)."""
    document = dict(event.model_dump())
    document.pop("id")
    return document


@pytest.mark.parametrize(
    ("has_clv", "currency"), [(True, "USD"), (False, "USD"), (True, "JPY"), (True, "KWD")]
)
def test_value_events_are_the_contract_events_the_models_make(has_clv: bool, currency: str) -> None:
    n = 400
    scored = _scored(n, seed=7)
    scored.has_clv = has_clv
    rows = np.flatnonzero(~np.isnan(scored.valuation.score))[::3]
    ids = np.frombuffer(np.random.default_rng(1).bytes(16 * len(rows)), dtype="V16")
    customers = [uuid.UUID(s) for s in uuid_strings(ids)]
    # Two business times (handlers score at each customer's own), one with microseconds.
    times = [AS_OF, AS_OF + timedelta(hours=3, microseconds=250)]
    at = [times[k % 2] for k in range(len(rows))]
    previous = np.array([None, "key", "small", "major"] * len(rows), dtype=object)[: len(rows)]
    moved = np.arange(len(rows)) % 3 != 0

    events = value_events(
        ids,
        np.array([micros(t) for t in at]),
        scored,
        rows,
        previous_tier=previous,
        tier_moved=moved,
        model_version="v7",
        currency=currency,
    )

    expected = [
        event
        for k, row in enumerate(rows.tolist())
        for event in _expected(
            customers[k], at[k], scored, row, previous[k], moved[k], "v7", currency
        )
    ]
    assert len(events) == len(expected) == len(rows) + int(moved.sum())
    assert len({e.event_id for e in events}) == len(events)
    for made, model in zip(events, expected, strict=True):
        contract = parse(made.payload)  # what a consumer does with the bytes
        assert (made.type, made.subject, str(contract.id)) == (
            model.type,
            model.subject,
            made.event_id,
        )
        assert uuid.UUID(made.event_id).version == 7
        assert _without_id(contract) == _without_id(model)
    clv_present = [
        e for e in events if e.type == ev.VALUE_SCORED and b'"clv":null' not in e.payload
    ]
    assert bool(clv_present) is has_clv
    # Money in the currency's minor units, as every service writes it ("390" JPY, not "389.70").
    places = minor_units(currency)
    for event in clv_present:
        clv = orjson.loads(event.payload)["data"]["clv"]
        assert len(clv.partition(".")[2]) == places, clv
