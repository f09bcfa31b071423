"""Value of customers: RFM, loyalty, composite dimensions, score and tier in one pass.

`value_population` scores a whole population and returns the `PopulationReference` (quantile
breakpoints, RFM boundaries, tier cut-off scores; JSON, kept with the model version) that
`value_customers` uses to score one customer between recomputes. Both run the same code
against the same breakpoints, so a customer scored alone gets the batch result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Self

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict

from services.scoring.domain._arrays import (
    BoolArray,
    FloatArray,
    IntArray,
    ObjectArray,
    as_float_array,
    same_length,
)
from services.scoring.domain.calibration import day_number
from services.scoring.domain.composite import (
    Dimension,
    Tier,
    TierThresholds,
    composite_score,
    credit_ratio,
    growth_potential,
    percentile_against,
    quantile_breakpoints,
    tier_thresholds,
    tiers_against,
)
from services.scoring.domain.loyalty import DickBasuType, JonesSasserType, Loyalty, loyalty
from services.scoring.domain.policy import ValueModelPolicy
from services.scoring.domain.rfm import (
    RfmBoundaries,
    RfmScores,
    RfmSegment,
    rfm_scores,
    rfm_scores_against,
)


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """Per-customer aggregates at `as_of`, one array element per customer.

    Money is net of refunds unless named gross; recency and tenure are whole days since the
    last and first purchase; customers without a purchase have purchase_days = 0.
    """

    purchase_days: FloatArray
    recency_days: FloatArray
    tenure_days: FloatArray
    net_revenue: FloatArray
    net_revenue_365d: FloatArray
    revenue_last_180d: FloatArray
    revenue_prior_180d: FloatArray
    gross_revenue: FloatArray
    refunded_revenue: FloatArray
    chargebacks: FloatArray
    categories: FloatArray
    referrals: FloatArray
    clv: FloatArray
    csat_sum: FloatArray
    csat_count: FloatArray
    open_complaints: FloatArray

    @classmethod
    def of(cls, **columns: ArrayLike) -> Self:
        """Validated facts from array-likes (lists, arrays or scalars for one customer)."""
        names = {field.name for field in fields(cls)}
        if set(columns) != names:
            missing, extra = names - set(columns), set(columns) - names
            raise ValueError(
                f"customer facts: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        arrays = {name: as_float_array(value, name=name) for name, value in columns.items()}
        same_length(**arrays)
        return cls(**arrays)

    def __len__(self) -> int:
        return len(self.purchase_days)

    def take(self, customers: ArrayLike) -> CustomerFacts:
        """The facts of the customers at these positions (or boolean mask)."""
        index = np.asarray(customers)
        return CustomerFacts(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True, slots=True)
class CustomerValue:
    """One customer's value; None where the customer has no purchase."""

    score: float | None
    tier: Tier | None
    dimensions: dict[Dimension, float] | None
    rfm_recency: int | None
    rfm_frequency: int | None
    rfm_monetary: int | None
    rfm_segment: RfmSegment | None
    behavioural_loyalty: float
    attitudinal_loyalty: float
    satisfaction: float
    loyalty_index: float
    dick_basu: DickBasuType
    jones_sasser: JonesSasserType


@dataclass(frozen=True, slots=True)
class Valuation:
    """Value of a population; NaN / 0 / None where a customer has no purchase."""

    has_purchase: BoolArray
    rfm: RfmScores
    loyalty: Loyalty
    dimensions: dict[Dimension, FloatArray]
    score: FloatArray
    tier: ObjectArray

    def __len__(self) -> int:
        return len(self.has_purchase)

    def row(self, position: int) -> CustomerValue:
        bought = bool(self.has_purchase[position])
        return CustomerValue(
            score=float(self.score[position]) if bought else None,
            tier=self.tier[position],
            dimensions=(
                {d: float(values[position]) for d, values in self.dimensions.items()}
                if bought
                else None
            ),
            rfm_recency=int(self.rfm.recency[position]) if bought else None,
            rfm_frequency=int(self.rfm.frequency[position]) if bought else None,
            rfm_monetary=int(self.rfm.monetary[position]) if bought else None,
            rfm_segment=self.rfm.segment[position],
            behavioural_loyalty=float(self.loyalty.behavioural[position]),
            attitudinal_loyalty=float(self.loyalty.attitudinal[position]),
            satisfaction=float(self.loyalty.satisfaction[position]),
            loyalty_index=float(self.loyalty.index[position]),
            dick_basu=self.loyalty.dick_basu[position],
            jones_sasser=self.loyalty.jones_sasser[position],
        )


class PopulationReference(BaseModel):
    """What one customer is scored against between recomputes (JSON; None = unreachable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    as_of: datetime
    customers: int
    frequency_breakpoints: list[float]
    dimension_breakpoints: dict[Dimension, list[float]]
    rfm_recency: list[float | None]
    rfm_frequency: list[float | None]
    rfm_monetary: list[float | None]
    tier_min_score: dict[Tier, float | None]

    def rfm_boundaries(self) -> RfmBoundaries:
        def restore(values: list[float | None], unreachable: float) -> tuple[float, ...]:
            return tuple(unreachable if value is None else value for value in values)

        return RfmBoundaries(
            recency=restore(self.rfm_recency, -np.inf),
            frequency=restore(self.rfm_frequency, np.inf),
            monetary=restore(self.rfm_monetary, np.inf),
        )

    def tier_thresholds(self) -> TierThresholds:
        return TierThresholds(
            key=self.tier_min_score.get(Tier.KEY),
            major=self.tier_min_score.get(Tier.MAJOR),
            ordinary=self.tier_min_score.get(Tier.ORDINARY),
        )


def _finite_or_none(values: tuple[float, ...]) -> list[float | None]:
    return [float(value) if np.isfinite(value) else None for value in values]


@dataclass(frozen=True, slots=True)
class _Breakpoints:
    frequency: FloatArray
    dimensions: dict[Dimension, FloatArray]


def _loyalty_of(
    facts: CustomerFacts, frequency_breakpoints: FloatArray, policy: ValueModelPolicy
) -> Loyalty:
    return loyalty(
        purchase_days=facts.purchase_days,
        frequency_percentile=percentile_against(frequency_breakpoints, facts.purchase_days),
        tenure_days=facts.tenure_days,
        categories=facts.categories,
        referrals=facts.referrals,
        csat_sum=facts.csat_sum,
        csat_count=facts.csat_count,
        open_complaints=facts.open_complaints,
        settings=policy.loyalty,
    )


def _raw_dimensions(
    facts: CustomerFacts, customer_loyalty: Loyalty, policy: ValueModelPolicy
) -> dict[Dimension, FloatArray]:
    return {
        Dimension.CURRENT_CONTRIBUTION: facts.net_revenue_365d,
        Dimension.FUTURE_CONTRIBUTION: facts.clv,
        Dimension.CREDIT: credit_ratio(
            gross_revenue=facts.gross_revenue,
            refunded_revenue=facts.refunded_revenue,
            chargebacks=facts.chargebacks,
            settings=policy.credit,
        ),
        Dimension.LOYALTY: customer_loyalty.index,
        Dimension.GROWTH_POTENTIAL: growth_potential(
            revenue_last_180d=facts.revenue_last_180d,
            revenue_prior_180d=facts.revenue_prior_180d,
            categories=facts.categories,
            settings=policy.growth,
        ),
    }


def _value_against(
    facts: CustomerFacts,
    policy: ValueModelPolicy,
    breakpoints: _Breakpoints,
    rfm: RfmScores,
    thresholds: TierThresholds,
) -> Valuation:
    bought = facts.purchase_days > 0
    customer_loyalty = _loyalty_of(facts, breakpoints.frequency, policy)
    raw = _raw_dimensions(facts, customer_loyalty, policy)
    dimensions = {
        dimension: np.where(
            bought, percentile_against(breakpoints.dimensions[dimension], raw[dimension]), np.nan
        )
        for dimension in Dimension
    }
    score = composite_score(dimensions, policy.weights)
    tier = tiers_against(thresholds, np.nan_to_num(score))
    tier[~bought] = None
    return Valuation(
        has_purchase=bought,
        rfm=rfm,
        loyalty=customer_loyalty,
        dimensions=dimensions,
        score=score,
        tier=tier,
    )


def _full_length_rfm(bought: BoolArray, purchasers: RfmScores) -> RfmScores:
    def spread(scores: IntArray) -> IntArray:
        full = np.zeros(len(bought), dtype=np.int64)
        full[bought] = scores
        return full

    segment = np.full(len(bought), None, dtype=object)
    segment[bought] = purchasers.segment
    return RfmScores(
        recency=spread(purchasers.recency),
        frequency=spread(purchasers.frequency),
        monetary=spread(purchasers.monetary),
        segment=segment,
    )


def value_population(
    facts: CustomerFacts, *, policy: ValueModelPolicy, as_of: datetime
) -> tuple[Valuation, PopulationReference]:
    """Score everyone; percentiles, RFM quintiles and tiers are over customers with a purchase."""
    bought = facts.purchase_days > 0
    purchasers = facts.take(bought)
    resolution = policy.percentile_resolution
    frequency_breakpoints = quantile_breakpoints(purchasers.purchase_days, resolution=resolution)
    purchaser_loyalty = _loyalty_of(purchasers, frequency_breakpoints, policy)
    raw = _raw_dimensions(purchasers, purchaser_loyalty, policy)
    breakpoints = _Breakpoints(
        frequency=frequency_breakpoints,
        dimensions={d: quantile_breakpoints(raw[d], resolution=resolution) for d in Dimension},
    )
    purchaser_rfm, boundaries = rfm_scores(
        purchasers.recency_days, purchasers.purchase_days, purchasers.net_revenue
    )
    # Thresholds come from the purchasers' scores, computed by the very code used below.
    purchaser_dimensions = {
        d: percentile_against(breakpoints.dimensions[d], raw[d]) for d in Dimension
    }
    thresholds = tier_thresholds(
        composite_score(purchaser_dimensions, policy.weights), policy.tier_cutoffs
    )
    valuation = _value_against(
        facts, policy, breakpoints, _full_length_rfm(bought, purchaser_rfm), thresholds
    )
    reference = PopulationReference(
        as_of=as_of,
        customers=len(purchasers),
        frequency_breakpoints=frequency_breakpoints.tolist(),
        dimension_breakpoints={d: points.tolist() for d, points in breakpoints.dimensions.items()},
        rfm_recency=_finite_or_none(boundaries.recency),
        rfm_frequency=_finite_or_none(boundaries.frequency),
        rfm_monetary=_finite_or_none(boundaries.monetary),
        tier_min_score={
            Tier.KEY: thresholds.key,
            Tier.MAJOR: thresholds.major,
            Tier.ORDINARY: thresholds.ordinary,
        },
    )
    return valuation, reference


def value_customers(
    facts: CustomerFacts,
    *,
    policy: ValueModelPolicy,
    reference: PopulationReference,
    as_of_day: ArrayLike,
) -> Valuation:
    """Score customers (typically one) against the population of the last recompute.

    `as_of_day` (a day number, one for all or one per customer) is the day the facts describe.
    Recency is shifted back by the days elapsed since the reference, since the whole
    population has aged by as much; windowed revenues are taken as they are.
    """
    elapsed = np.broadcast_to(
        np.asarray(as_of_day, dtype=np.float64) - day_number(reference.as_of), (len(facts),)
    )
    bought = facts.purchase_days > 0
    purchasers = facts.take(bought)
    rfm = rfm_scores_against(
        reference.rfm_boundaries(),
        purchasers.recency_days - elapsed[bought],
        purchasers.purchase_days,
        purchasers.net_revenue,
    )
    breakpoints = _Breakpoints(
        frequency=np.asarray(reference.frequency_breakpoints, dtype=np.float64),
        dimensions={
            d: np.asarray(reference.dimension_breakpoints.get(d, []), dtype=np.float64)
            for d in Dimension
        },
    )
    return _value_against(
        facts, policy, breakpoints, _full_length_rfm(bought, rfm), reference.tier_thresholds()
    )


__all__ = [
    "CustomerFacts",
    "CustomerValue",
    "PopulationReference",
    "Valuation",
    "value_customers",
    "value_population",
]
