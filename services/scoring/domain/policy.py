"""The value model's configuration: weights, tier cut-offs, CLV and loyalty settings.

Served and changed through `GET/PUT /v1/value/model`; every bad value is a validation error.
"""

from __future__ import annotations

import math
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.scoring.domain.calibration import TimeUnit

_SUM_TOLERANCE = 1e-6


def _check_sums_to_one(model: BaseModel, what: str) -> None:
    total = math.fsum(float(value) for value in model.model_dump().values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"{what} must sum to 1, they sum to {total:.6g}")


class _Settings(BaseModel):
    # No inf or NaN: a JSON body may carry them (Infinity, 1e999) and JSONB cannot store them.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DimensionWeights(_Settings):
    """Weights of the five composite dimensions (DOMAIN.md defaults)."""

    current_contribution: float = Field(0.30, ge=0, le=1)
    future_contribution: float = Field(0.30, ge=0, le=1)
    credit: float = Field(0.10, ge=0, le=1)
    loyalty: float = Field(0.20, ge=0, le=1)
    growth_potential: float = Field(0.10, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        _check_sums_to_one(self, "dimension weights")
        return self


class TierCutoffs(_Settings):
    """Cumulative shares of customers, by descending score, that end each tier."""

    key: float = Field(0.05, gt=0, lt=1)
    major: float = Field(0.20, gt=0, lt=1)
    ordinary: float = Field(0.50, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.key < self.major < self.ordinary:
            raise ValueError("tier cut-offs must be ordered: key < major < ordinary")
        return self


class ClvSettings(_Settings):
    time_unit: TimeUnit = TimeUnit.WEEK
    horizon_weeks: float = Field(52.0, gt=0, le=520)
    annual_discount_rate: float = Field(0.10, ge=0, le=1)
    margin: float = Field(1.0, gt=0, le=1)
    # Fewer customers with a repeat purchase than this and no model is fitted.
    min_repeat_customers: int = Field(20, ge=2)


class BehaviouralWeights(_Settings):
    """Sub-weights of behavioural loyalty; each component is scaled to [0, 1] first."""

    repeat_rate: float = Field(0.30, ge=0, le=1)
    frequency: float = Field(0.30, ge=0, le=1)
    tenure: float = Field(0.20, ge=0, le=1)
    category_breadth: float = Field(0.10, ge=0, le=1)
    referrals: float = Field(0.10, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        _check_sums_to_one(self, "behavioural loyalty weights")
        return self


class LoyaltySettings(_Settings):
    behavioural_weights: BehaviouralWeights = BehaviouralWeights()
    # Tenure, categories and referrals count fully at these values (linear below, capped above).
    tenure_saturation_days: float = Field(730.0, gt=0)
    category_saturation: float = Field(5.0, gt=0)
    referral_saturation: float = Field(3.0, gt=0)
    open_complaint_penalty: float = Field(10.0, ge=0, le=100)
    behavioural_share: float = Field(0.6, ge=0, le=1)
    type_cut: float = Field(50.0, gt=0, lt=100)


class CreditSettings(_Settings):
    # Each chargeback lowers the credit ratio (1 - refunded share) by this much.
    chargeback_penalty: float = Field(0.25, ge=0, le=1)


class GrowthSettings(_Settings):
    # Growth potential = trend_weight * spend trend + (1 - trend_weight) * category breadth.
    trend_weight: float = Field(0.6, ge=0, le=1)
    category_saturation: float = Field(5.0, gt=0)


class ValueModelPolicy(_Settings):
    weights: DimensionWeights = DimensionWeights()
    tier_cutoffs: TierCutoffs = TierCutoffs()
    clv: ClvSettings = ClvSettings()
    loyalty: LoyaltySettings = LoyaltySettings()
    credit: CreditSettings = CreditSettings()
    growth: GrowthSettings = GrowthSettings()
    # Quantile breakpoints kept per dimension for scoring one customer between recomputes.
    percentile_resolution: int = Field(200, ge=10, le=10_000)
    publish_min_score_change: float = Field(1.0, ge=0, le=100)
