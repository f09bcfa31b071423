"""Request and response models of the scoring API."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from services.scoring.domain import TimeUnit, ValueModelPolicy
from shared.events.payloads import Currency, Money, Tier
from shared.http.inputs import BusinessTime


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


#: Money summed over customers (a tier's, the base's revenue), written as Money is. Each
#: customer's sums are Money; the base's may pass its 18 digits (the pyramid and the Pareto
#: view answered 500 once they did).
MoneyTotal = Annotated[
    Decimal,
    PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["129.90"]}),
]


class DimensionsRead(_Read):
    """Percentiles 0-100 among customers with a purchase."""

    current_contribution: float
    future_contribution: float
    credit: float
    loyalty: float
    growth_potential: float


class RfmRead(_Read):
    recency: int = Field(ge=1, le=5)
    frequency: int = Field(ge=1, le=5)
    monetary: int = Field(ge=1, le=5)
    segment: str


class ClvRead(_Read):
    p_alive: float | None
    expected_purchases: float | None = Field(description="Over the horizon, undiscounted")
    expected_spend: Money | None = Field(description="Per purchase (Gamma-Gamma)")
    clv: Money | None = Field(description="Discounted, times the margin")
    horizon_weeks: float
    time_unit: TimeUnit


class LoyaltyRead(_Read):
    index: float
    behavioural: float
    attitudinal: float
    satisfaction: float
    dick_basu: str
    jones_sasser: str


class AggregatesRead(_Read):
    orders: int
    purchase_days: int
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    gross_revenue: Money
    refunded_revenue: Money
    net_revenue: Money
    net_revenue_365d: Money
    revenue_last_180d: Money
    revenue_prior_180d: Money
    chargebacks: int
    categories: int
    referrals: int
    open_complaints: int
    closed_complaints_with_csat: int
    mean_csat: float | None


class CauseRead(BaseModel):
    """An event (or a recompute run) that moved the value."""

    model_config = ConfigDict(extra="allow")

    type: str
    time: datetime
    event_id: uuid.UUID | None = None
    run_id: uuid.UUID | None = None


class ExplanationRead(BaseModel):
    published_score: float | None
    published_tier: Tier | None
    published_at: datetime | None
    published_because: list[CauseRead] = Field(description="What moved the last published score")
    since_published: list[CauseRead] = Field(description="Events since, not enough to publish")


class CustomerValueRead(BaseModel):
    customer_id: uuid.UUID
    as_of: datetime | None = Field(description="Business time the value describes")
    model_version: str | None
    currency: Currency | None
    score: float | None
    tier: Tier | None
    dimensions: DimensionsRead | None
    rfm: RfmRead | None
    clv: ClvRead | None
    loyalty: LoyaltyRead | None
    aggregates: AggregatesRead
    explanation: ExplanationRead


class PyramidTierRead(BaseModel):
    tier: Tier
    customers: int
    share_of_customers: float
    revenue: MoneyTotal
    share_of_revenue: float
    average_clv: Money | None
    average_score: float | None


class PyramidRead(BaseModel):
    model_version: str | None
    currency: Currency
    tiers: list[PyramidTierRead]
    customers_with_purchase: int
    customers_without_purchase: int
    revenue: MoneyTotal


class ParetoPoint(BaseModel):
    customer_share: float = Field(description="Top share of customers by net revenue (0-1)")
    revenue_share: float = Field(description="Their share of net revenue (0-1)")


class ParetoRead(BaseModel):
    currency: Currency
    customers: int
    revenue: MoneyTotal
    top_20_percent_revenue_share: float | None
    points: list[ParetoPoint]


class RecomputeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: BusinessTime | None = Field(
        None,
        description="Calibration end; default now (at most MAX_FUTURE_AS_OF_SECONDS, "
        "5 minutes by default, after the server's clock)",
    )
    time_unit: TimeUnit | None = Field(None, description="Default: the policy's time unit")


class RecomputeRunRead(_Read):
    id: uuid.UUID
    status: str = Field(description="pending, running, succeeded or failed")
    trigger: str
    as_of: datetime
    time_unit: TimeUnit
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    phase: str | None
    customers_total: int
    customers_scored: int
    progress: float = Field(ge=0, le=1)
    events_published: int
    model_version: str | None
    timings: dict[str, Any]
    error: str | None


class FittedModelRead(_Read):
    version: str
    as_of: datetime
    time_unit: TimeUnit
    currency: Currency
    bgnbd: dict[str, Any] | None = Field(
        description="r, alpha, a, b; standard errors, log-likelihood, sample sizes"
    )
    gamma_gamma: dict[str, Any] | None = Field(
        description="p, q, gamma; standard errors, log-likelihood"
    )
    fit_error: str | None
    fit_seconds: float | None
    customers: int
    customers_with_purchase: int
    created_at: datetime


class ValueModelRead(BaseModel):
    policy: ValueModelPolicy
    policy_version: int
    current: FittedModelRead | None
    last_run: RecomputeRunRead | None


class ValueModelUpdated(ValueModelRead):
    recompute: RecomputeRunRead = Field(description="The re-score the new policy triggered")
