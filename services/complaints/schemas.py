"""Request and response models of the complaints API.

Free text (subject, description, step notes and messages, feedback) may hold personal data:
it is masked in responses without the `pii:read` scope and deleted when the customer is erased.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.complaints.domain import (
    Action,
    Category,
    Channel,
    ClockState,
    ComplaintPolicy,
    EscalationReason,
    Severity,
    Status,
    Tier,
)
from shared.http.inputs import BusinessTime, StorableText

MASK = "***"


Text = Annotated[StorableText, Field(min_length=1, max_length=10_000)]
Note = Annotated[StorableText | None, Field(None, max_length=10_000, description="Internal note")]


class ComplaintCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: uuid.UUID
    channel: Channel
    category: Category
    severity: Severity
    subject: StorableText = Field(min_length=1, max_length=300)
    description: Text
    order_id: StorableText | None = Field(None, min_length=1, max_length=200)
    received_at: BusinessTime | None = Field(
        None,
        description="When the complaint reached us (intake from other channels); default now. "
        "Up to COMPLAINTS_MAX_CLOCK_SKEW_SECONDS (300) ahead of the service's clock counts as now",
    )


# --- workflow steps: each its own body with its own required fields ----------------------------


class StepBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Note = None


class AcknowledgeBody(StepBody):
    message: Text = Field(description="The first response sent to the customer")


class InvestigateBody(StepBody):
    pass


class ProposeBody(StepBody):
    proposed_resolution: Text


class AwaitCustomerBody(StepBody):
    pass


class ResolveBody(StepBody):
    root_cause: str = Field(
        min_length=1,
        max_length=50,
        description="One of the managed list (GET /v1/complaints/policy)",
    )
    root_cause_detail: Text
    resolution: Text


class CloseBody(StepBody):
    satisfaction: int = Field(ge=1, le=5, strict=True, description="CSAT 1-5")
    feedback: Text


class ReopenBody(StepBody):
    pass


class EscalateBody(StepBody):
    reason: Text


STEP_BODIES: dict[Action, type[StepBody]] = {
    Action.acknowledge: AcknowledgeBody,
    Action.investigate: InvestigateBody,
    Action.propose: ProposeBody,
    Action.await_customer: AwaitCustomerBody,
    Action.resolve: ResolveBody,
    Action.close: CloseBody,
    Action.reopen: ReopenBody,
    Action.escalate: EscalateBody,
}


# --- reading -----------------------------------------------------------------------------------


class FirstResponseClock(BaseModel):
    due: datetime
    state: ClockState
    responded_at: datetime | None


class ResolutionClock(BaseModel):
    due: datetime = Field(description="Effective due time: the target fixed at intake plus pauses")
    target_due: datetime = Field(description="Due time fixed at intake, before any pause")
    state: ClockState
    paused_since: datetime | None
    resolved_at: datetime | None


class SlaRead(BaseModel):
    as_of: datetime
    first_response: FirstResponseClock
    resolution: ResolutionClock


class EscalationRead(BaseModel):
    level: int
    reason: EscalationReason
    at: datetime
    actor: str | None = Field(description="Who escalated manually; null for the SLA checker")


class ComplaintRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID | None = Field(description="Null once the customer was erased")
    channel: Channel
    category: Category
    severity: Severity
    tier_at_intake: Tier | None
    subject: str | None
    description: str | None
    order_id: str | None
    status: Status
    received_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    root_cause: str | None
    satisfaction: int | None
    reopen_count: int
    sla: SlaRead
    escalation_level: int
    escalations: list[EscalationRead]
    allowed_actions: list[str] = Field(description="Next workflow steps (HTTP path segments)")
    version: int
    pii_masked: bool = Field(description="Free text hidden: the token lacks `pii:read`")
    anonymised: bool = Field(description="The customer was erased: free text deleted")


class StepRead(BaseModel):
    action: str
    from_status: Status | None
    to_status: Status
    actor: str
    at: datetime
    note: str | None
    facts: dict[str, Any] = Field(description="What the step recorded (root cause, CSAT, level)")
    texts: dict[str, str] | None = Field(description="Free text of the step (personal data)")


class ComplaintDetail(ComplaintRead):
    history: list[StepRead]


# --- SLA evaluation, policy, analytics ---------------------------------------------------------


class SlaEvaluate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: BusinessTime | None = Field(
        None,
        description="Business time to evaluate at; default now"
        " (at most MAX_FUTURE_AS_OF_SECONDS, 5 minutes by default, after the server's clock)",
    )


class SlaRun(BaseModel):
    as_of: datetime
    candidates: int = Field(description="Complaints whose next SLA check had passed")
    escalations: int
    by_level: dict[int, int]
    duration_seconds: float


class PolicyRead(ComplaintPolicy):
    version: int


class Share(BaseModel):
    met: int
    breached: int
    compliance_pct: float | None


class Durations(BaseModel):
    count: int
    median_hours: float | None
    p90_hours: float | None


class RootCauseShare(BaseModel):
    root_cause: str
    count: int
    share_pct: float
    cumulative_pct: float


class Analytics(BaseModel):
    period_from: datetime
    period_to: datetime
    as_of: datetime
    complaints: int
    sla_compliance: dict[Literal["first_response", "resolution", "overall"], Share]
    time_to_first_response: Durations = Field(
        description="Elapsed hours from receipt to the acknowledgement"
    )
    time_to_resolution: Durations = Field(
        description="Elapsed hours from receipt to the (latest) resolution, time awaiting the "
        "customer included; the SLA compliance above judges the resolution clock without it"
    )
    time_to_resolution_net: Durations = Field(
        description="Hours from receipt to the (latest) resolution less the pauses: time awaiting "
        "the customer, and time resolved before a reopening (what the resolution clock counts)"
    )
    reopen_rate_pct: float | None = Field(description="Reopened among complaints ever resolved")
    csat_mean: float | None
    csat_responses: int
    csat_distribution: dict[int, int]
    by_category: dict[str, int]
    by_channel: dict[str, int]
    by_severity: dict[str, int]
    root_cause_pareto: list[RootCauseShare]
