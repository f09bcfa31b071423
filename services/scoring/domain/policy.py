"""The value model's configuration: weights, tier cut-offs, CLV and loyalty settings.

Served and changed through `GET/PUT /v1/value/model`; every bad value is a validation error.
"""

from __future__ import annotations

import math
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services.scoring.domain.calibration import TimeUnit

_SUM_TOLERANCE = 1e-6


def _check_sums_to_one(model: BaseModel, what: str) -> None:
    total = math.fsum(float(value) for value in model.model_dump().values())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"{what} must sum to 1, they sum to {total:.6g}")


class _Settings(BaseModel):
    # No inf or NaN: a JSON body may carry them (Infinity, 1e999) and JSONB cannot store them.
    # Every number is `strict=True`: lax mode reads JSON `true` as 1. Field by field: a strict
    # config would refuse the time unit sent as text ("week") as well.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DimensionWeights(_Settings):
    """Weights of the five composite dimensions (DOMAIN.md defaults)."""

    current_contribution: float = Field(0.30, ge=0, le=1, strict=True)
    future_contribution: float = Field(0.30, ge=0, le=1, strict=True)
    credit: float = Field(0.10, ge=0, le=1, strict=True)
    loyalty: float = Field(0.20, ge=0, le=1, strict=True)
    growth_potential: float = Field(0.10, ge=0, le=1, strict=True)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        _check_sums_to_one(self, "dimension weights")
        return self


#: The cut-off each later one must exceed.
_EARLIER_CUTOFF = {"major": "key", "ordinary": "major"}


class TierCutoffs(_Settings):
    """Cumulative shares of customers, by descending score, that end each tier."""

    # Defaults validated too: a changed cut-off is checked against the one before it, sent or not.
    model_config = ConfigDict(validate_default=True)

    key: float = Field(0.05, gt=0, lt=1, strict=True)
    major: float = Field(0.20, gt=0, lt=1, strict=True)
    ordinary: float = Field(0.50, gt=0, lt=1, strict=True)

    @field_validator("major", "ordinary")
    @classmethod
    def _ordered(cls, cutoff: float, info: ValidationInfo) -> float:
        # Checked on the later cut-off of a pair (`info.data` holds the earlier) to name it.
        earlier = info.data.get(_EARLIER_CUTOFF[str(info.field_name)])
        if earlier is not None and not earlier < cutoff:  # None: the earlier one was refused
            raise ValueError("tier cut-offs must be ordered: key < major < ordinary")
        return cutoff


class ClvSettings(_Settings):
    time_unit: TimeUnit = TimeUnit.WEEK
    horizon_weeks: float = Field(52.0, gt=0, le=520, strict=True)
    annual_discount_rate: float = Field(0.10, ge=0, le=1, strict=True)
    margin: float = Field(1.0, gt=0, le=1, strict=True)
    # Fewer customers with a repeat purchase than this and no model is fitted.
    min_repeat_customers: int = Field(20, ge=2, strict=True)


class BehaviouralWeights(_Settings):
    """Sub-weights of behavioural loyalty; each component is scaled to [0, 1] first."""

    repeat_rate: float = Field(0.30, ge=0, le=1, strict=True)
    frequency: float = Field(0.30, ge=0, le=1, strict=True)
    tenure: float = Field(0.20, ge=0, le=1, strict=True)
    category_breadth: float = Field(0.10, ge=0, le=1, strict=True)
    referrals: float = Field(0.10, ge=0, le=1, strict=True)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        _check_sums_to_one(self, "behavioural loyalty weights")
        return self


class LoyaltySettings(_Settings):
    behavioural_weights: BehaviouralWeights = BehaviouralWeights()
    # Tenure, categories and referrals count fully at these values (linear below, capped above).
    tenure_saturation_days: float = Field(730.0, gt=0, strict=True)
    category_saturation: float = Field(5.0, gt=0, strict=True)
    referral_saturation: float = Field(3.0, gt=0, strict=True)
    open_complaint_penalty: float = Field(10.0, ge=0, le=100, strict=True)
    behavioural_share: float = Field(0.6, ge=0, le=1, strict=True)
    type_cut: float = Field(50.0, gt=0, lt=100, strict=True)


class CreditSettings(_Settings):
    # Each chargeback lowers the credit ratio (1 - refunded share) by this much.
    chargeback_penalty: float = Field(0.25, ge=0, le=1, strict=True)


class GrowthSettings(_Settings):
    # Growth potential = trend_weight * spend trend + (1 - trend_weight) * category breadth.
    trend_weight: float = Field(0.6, ge=0, le=1, strict=True)
    category_saturation: float = Field(5.0, gt=0, strict=True)


class ValueModelPolicy(_Settings):
    weights: DimensionWeights = DimensionWeights()
    tier_cutoffs: TierCutoffs = TierCutoffs()
    clv: ClvSettings = ClvSettings()
    loyalty: LoyaltySettings = LoyaltySettings()
    credit: CreditSettings = CreditSettings()
    growth: GrowthSettings = GrowthSettings()
    # Quantile breakpoints kept per dimension for scoring one customer between recomputes.
    percentile_resolution: int = Field(200, ge=10, le=10_000, strict=True)
    publish_min_score_change: float = Field(1.0, ge=0, le=100, strict=True)
