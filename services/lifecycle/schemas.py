"""Request and response models of the lifecycle HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from services.lifecycle.domain import LifecyclePolicy, Reason, Stage
from shared.http.inputs import BusinessTime


class TransitionRead(BaseModel):
    from_stage: Stage | None
    to_stage: Stage
    reason: Reason
    trigger: str = Field(description="The rule that fired: purchase, complaint_opened, time, ...")
    at: datetime = Field(description="Business time of the change")
    causing_event_id: uuid.UUID | None = Field(None, description="The event that caused it")
    evaluation_run_id: uuid.UUID | None = Field(None, description="Or the evaluation run")


class LifecycleRead(BaseModel):
    customer_id: uuid.UUID
    stage: Stage
    since: datetime
    reason: Reason = Field(description="Why the customer is in this stage")
    days_in_stage: float
    stage_before_decline: Stage | None
    decline_causes: list[str] = Field(description="Complaint ids causing a complaint decline")
    open_complaints: list[str]
    purchase_days: int = Field(description="Distinct days with a purchase not fully refunded")
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    median_gap_days: float = Field(description="g: median gap between purchase days")
    decline_due_at: datetime | None = Field(description="When lapsing is due without a purchase")
    churn_due_at: datetime | None = Field(description="When inactivity churn is due")
    history: list[TransitionRead]


class StageCount(BaseModel):
    stage: Stage
    customers: int
    share: float = Field(description="Share of all customers, 0-1")
    median_days_in_stage: float | None


class DistributionRead(BaseModel):
    as_of: datetime
    from_history: bool = Field(description="True when computed `as_of` a past date from history")
    total: int
    stages: list[StageCount]


class EvaluateRequest(BaseModel):
    # A misspelt field is a 422, not dropped: `{"asOf": ...}` would otherwise run as of now.
    model_config = ConfigDict(extra="forbid")

    as_of: BusinessTime | None = Field(
        None,
        description="Business time to evaluate at (backfills); default: now"
        " (at most MAX_FUTURE_AS_OF_SECONDS, 5 minutes by default, after the server's clock)",
    )


class MovedCount(BaseModel):
    from_stage: Stage
    to_stage: Stage
    reason: Reason
    customers: int


class EvaluationRead(BaseModel):
    run_id: uuid.UUID
    as_of: datetime
    policy_version: int
    moved: list[MovedCount]
    total_moved: int
    seconds: float


class EvaluationStatus(StrEnum):
    PENDING = "pending"  # asked for with `Prefer: respond-async`; the worker will run it
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EvaluationTrigger(StrEnum):
    SCHEDULE = "schedule"  # the worker's scheduled sweep
    REQUEST = "request"  # POST /v1/lifecycle/evaluate, waited on
    ASYNC_REQUEST = "async_request"  # the same with `Prefer: respond-async`, run by the worker


class EvaluationRunRead(BaseModel):
    """A run of the time rules and where it stands; its counts are those of committed moves."""

    run_id: uuid.UUID
    status: EvaluationStatus
    trigger: EvaluationTrigger
    as_of: datetime = Field(description="The business time the rules were applied at")
    requested_at: datetime
    requested_by: str
    started_at: datetime | None
    updated_at: datetime | None = Field(description="When it last committed a chunk")
    finished_at: datetime | None
    policy_version: int | None
    moved: list[MovedCount] = Field(description="Customers moved so far, by move")
    total_moved: int
    chunks: int = Field(description="Transactions committed so far")
    last_pass: int = Field(description="Customers a consumer batch held, moved at the end")
    seconds: float | None = Field(description="From start to finish, once finished")
    error: str | None = Field(description="Why it failed")


class PolicyUpdate(LifecyclePolicy):
    """The whole policy (PUT replaces it; omitted fields take the DOMAIN.md defaults)."""


class PolicyRead(BaseModel):
    version: int = Field(description="0: the defaults, never changed")
    changed_at: datetime | None
    changed_by: str | None
    policy: LifecyclePolicy
