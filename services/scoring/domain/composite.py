"""The weighted customer value model: five percentile dimensions, the score, pyramid tiers.

Percentiles are read off quantile breakpoints of the population (`resolution` + 1 of them,
linear interpolation between breakpoints, the middle of a run of equal breakpoints for a
value sitting on it), so the batch and the one-customer path are the same function and agree
exactly; with fewer customers than breakpoints it is the rank percentile r / (n - 1).

Tiers by descending score: with 1-based rank k among n purchasers, `key` when
k <= 0.05 n, `major` when k <= 0.20 n, `ordinary` when k <= 0.50 n, `small` otherwise;
customers tied with the last member of a tier join that tier, so the tier is a pure function
of the score and the cut-off scores of the last recompute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike

from services.scoring.domain._arrays import (
    FloatArray,
    ObjectArray,
    as_float_array,
    clip,
    same_length,
)
from services.scoring.domain.policy import (
    CreditSettings,
    DimensionWeights,
    GrowthSettings,
    TierCutoffs,
)

# Guards float error in cut-off * n (e.g. 0.05 * 100 = 5.000000000000001).
_RANK_EPSILON = 1e-9


class Dimension(StrEnum):
    CURRENT_CONTRIBUTION = "current_contribution"
    FUTURE_CONTRIBUTION = "future_contribution"
    CREDIT = "credit"
    LOYALTY = "loyalty"
    GROWTH_POTENTIAL = "growth_potential"


class Tier(StrEnum):
    KEY = "key"
    MAJOR = "major"
    ORDINARY = "ordinary"
    SMALL = "small"


@dataclass(frozen=True, slots=True)
class TierThresholds:
    """Lowest score in each upper tier at the last recompute; None when the tier was empty."""

    key: float | None
    major: float | None
    ordinary: float | None


def quantile_breakpoints(values: ArrayLike, *, resolution: int) -> FloatArray:
    """`resolution` + 1 quantiles at 0, 1/resolution, ..., 1 (empty for no values)."""
    measure = as_float_array(values, name="values")
    if len(measure) == 0:
        return np.empty(0, dtype=np.float64)
    return np.asarray(np.quantile(measure, np.linspace(0.0, 1.0, resolution + 1)), dtype=np.float64)


def percentile_against(breakpoints: ArrayLike, values: ArrayLike) -> FloatArray:
    """Percentile 0-100 of each value among the population summarised by its breakpoints.

    With no breakpoints (no population) every value is at 50.
    """
    points = np.asarray(breakpoints, dtype=np.float64)
    measure = as_float_array(values, name="values")
    if len(points) == 0:
        return np.full_like(measure, 50.0)
    last = len(points) - 1
    if last == 0:
        return np.where(measure < points[0], 0.0, np.where(measure > points[0], 100.0, 50.0))
    low = np.searchsorted(points, measure, side="left")
    high = np.searchsorted(points, measure, side="right")
    # Strictly between breakpoints left and left + 1: linear interpolation (their span is
    # positive: equal ones would hold the value). Below the first or above the last breakpoint
    # (left == right, a span of 0 divided by 1) the position is set below.
    left = clip(low - 1, 0, last)
    right = clip(low, 0, last)
    span = points[right] - points[left]
    position = left + (measure - points[left]) / np.where(span > 0, span, 1.0)
    # On a run of equal breakpoints [low, high): its middle.
    position = np.where(high > low, (low + high - 1) / 2, position)
    position = np.where(high == 0, 0.0, position)
    position = np.where(low > last, float(last), position)
    return np.asarray(100.0 * position / last, dtype=np.float64)


def credit_ratio(
    *,
    gross_revenue: ArrayLike,
    refunded_revenue: ArrayLike,
    chargebacks: ArrayLike,
    settings: CreditSettings,
) -> FloatArray:
    """1 - refunded share of gross revenue, less a penalty per chargeback, in [0, 1]."""
    gross = as_float_array(gross_revenue, name="gross_revenue")
    refunded = as_float_array(refunded_revenue, name="refunded_revenue")
    disputes = as_float_array(chargebacks, name="chargebacks")
    same_length(gross=gross, refunded=refunded, disputes=disputes)
    refunded_share = np.where(gross > 0, clip(refunded / np.where(gross > 0, gross, 1), 0, 1), 0.0)
    return clip(1.0 - refunded_share - settings.chargeback_penalty * disputes, 0.0, 1.0)


def spend_trend(*, revenue_last_180d: ArrayLike, revenue_prior_180d: ArrayLike) -> FloatArray:
    """(last - prior) / (last + prior) in [-1, 1]; 0 without spend in either window."""
    recent = np.maximum(as_float_array(revenue_last_180d, name="revenue_last_180d"), 0.0)
    prior = np.maximum(as_float_array(revenue_prior_180d, name="revenue_prior_180d"), 0.0)
    same_length(recent=recent, prior=prior)
    total = recent + prior
    return np.where(total > 0, (recent - prior) / np.where(total > 0, total, 1), 0.0)


def growth_potential(
    *,
    revenue_last_180d: ArrayLike,
    revenue_prior_180d: ArrayLike,
    categories: ArrayLike,
    settings: GrowthSettings,
) -> FloatArray:
    """Trend mapped to [0, 1] and category breadth (capped), weighted: in [0, 1]."""
    trend = spend_trend(revenue_last_180d=revenue_last_180d, revenue_prior_180d=revenue_prior_180d)
    breadth = clip(
        as_float_array(categories, name="categories") / settings.category_saturation, 0, 1
    )
    same_length(trend=trend, breadth=breadth)
    weight = settings.trend_weight
    return weight * (trend + 1) / 2 + (1 - weight) * breadth


def composite_score(
    dimensions: Mapping[Dimension, FloatArray], weights: DimensionWeights
) -> FloatArray:
    """score = sum of weight_i * dimension_i (each 0-100)."""
    weight_of = weights.model_dump()
    return np.asarray(
        sum(weight_of[dimension.value] * dimensions[dimension] for dimension in Dimension),
        dtype=np.float64,
    )


def tier_thresholds(scores: ArrayLike, cutoffs: TierCutoffs) -> TierThresholds:
    """Cut-off scores from the ranking of a population's scores."""
    ranked = np.sort(as_float_array(scores, name="scores"))[::-1]
    n = len(ranked)

    def lowest_within(share: float) -> float | None:
        members = int(np.floor(share * n + _RANK_EPSILON))
        return float(ranked[members - 1]) if members >= 1 else None

    return TierThresholds(
        key=lowest_within(cutoffs.key),
        major=lowest_within(cutoffs.major),
        ordinary=lowest_within(cutoffs.ordinary),
    )


def tiers_against(thresholds: TierThresholds, scores: ArrayLike) -> ObjectArray:
    """The highest tier whose cut-off score each score reaches; `small` below all."""
    score = as_float_array(scores, name="scores")
    tiers = np.empty(len(score), dtype=object)
    # fill, not np.full: np.full turns the enum member into a plain str.
    tiers.fill(Tier.SMALL)
    placed = np.zeros(len(score), dtype=np.bool_)
    for tier, cut in (
        (Tier.KEY, thresholds.key),
        (Tier.MAJOR, thresholds.major),
        (Tier.ORDINARY, thresholds.ordinary),
    ):
        if cut is None:
            continue
        reaches = ~placed & (score >= cut)
        tiers[reaches] = tier
        placed |= reaches
    return tiers
