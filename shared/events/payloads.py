"""Typed payloads (`data`) of every event type in the contract.

Rules (ARCHITECTURE.md): no personal data (names, e-mail, phone, addresses) ever; the customer is
named by id; money is a decimal string plus an ISO 4217 currency; a `.v1` payload may only gain
optional fields (tests/unit/events/test_schema_compat.py enforces it against docs/events/).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from shared.events.envelope import EventTime

Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=18, decimal_places=4),
    PlainSerializer(lambda v: format(v, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["129.90"]}),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# --- customers (profile) ---------------------------------------------------------------------


class CustomerKind(StrEnum):
    person = "person"
    organization = "organization"


class ConsentPurpose(StrEnum):
    marketing_email = "marketing_email"
    marketing_sms = "marketing_sms"
    profiling = "profiling"
    third_party_sharing = "third_party_sharing"


class ConsentStatus(StrEnum):
    granted = "granted"
    withdrawn = "withdrawn"


class CustomerRegistered(Payload):
    customer_id: uuid.UUID
    kind: CustomerKind
    source_channel: str | None = None
    referred_by: uuid.UUID | None = Field(None, description="The referring customer's id")


class CustomerUpdated(Payload):
    customer_id: uuid.UUID
    changed_fields: list[str] = Field(description="Names of the changed fields, never their values")
    version: int = Field(ge=1)


class CustomerConsentChanged(Payload):
    customer_id: uuid.UUID
    purpose: ConsentPurpose
    status: ConsentStatus
    source: str | None = None


class CustomerErased(Payload):
    customer_id: uuid.UUID


# --- purchases (profile) ---------------------------------------------------------------------


class PurchaseItem(Payload):
    sku: str = Field(min_length=1, max_length=100)
    category: str | None = Field(None, max_length=100)
    quantity: int = Field(ge=1)
    unit_price: Money


class PurchaseRecorded(Payload):
    customer_id: uuid.UUID
    purchase_id: uuid.UUID
    order_id: str = Field(min_length=1, max_length=200)
    amount: Money
    currency: Currency
    items: list[PurchaseItem] = Field(default_factory=list)
    channel: str | None = None


class PurchaseRefunded(Payload):
    customer_id: uuid.UUID
    purchase_id: uuid.UUID
    order_id: str
    refund_id: uuid.UUID
    amount: Money = Field(description="This refund")
    refunded_total: Money = Field(description="All refunds of the order so far, this one included")
    order_amount: Money
    currency: Currency
    chargeback: bool = False


# --- complaints --------------------------------------------------------------------------------


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class ComplaintChannel(StrEnum):
    phone = "phone"
    email = "email"
    web = "web"
    store = "store"
    social = "social"
    other = "other"


class ComplaintCategory(StrEnum):
    product = "product"
    service = "service"
    delivery = "delivery"
    billing = "billing"
    other = "other"


class EscalationReason(StrEnum):
    first_response_breached = "first_response_breached"
    resolution_breached = "resolution_breached"
    unresolved_after_escalation = "unresolved_after_escalation"
    manual = "manual"


class ComplaintPayload(Payload):
    complaint_id: uuid.UUID
    customer_id: uuid.UUID
    severity: Severity


class ComplaintOpened(ComplaintPayload):
    channel: ComplaintChannel
    category: ComplaintCategory
    order_id: str | None = None
    first_response_due: EventTime
    resolution_due: EventTime
    tier_at_intake: str | None = None


class ComplaintAcknowledged(ComplaintPayload):
    first_response_met: bool


class ComplaintEscalated(ComplaintPayload):
    level: int = Field(ge=1, le=3)
    reason: EscalationReason


class ComplaintResolved(ComplaintPayload):
    root_cause: str
    resolution_met: bool


class ComplaintClosed(ComplaintPayload):
    satisfaction: int | None = Field(None, ge=1, le=5, description="CSAT 1-5, when given")


class ComplaintReopened(ComplaintPayload):
    pass


# --- lifecycle ---------------------------------------------------------------------------------


class Stage(StrEnum):
    prospect = "prospect"
    growth = "growth"
    mature = "mature"
    decline = "decline"
    churned = "churned"


class StageChanged(Payload):
    customer_id: uuid.UUID
    from_stage: Stage | None
    to_stage: Stage
    reason: str
    causing_event_id: uuid.UUID | None = None
    evaluation_run_id: uuid.UUID | None = None


# --- value -------------------------------------------------------------------------------------


class Tier(StrEnum):
    key = "key"
    major = "major"
    ordinary = "ordinary"
    small = "small"


class ValueDimensions(Payload):
    current: float = Field(ge=0, le=100)
    future: float = Field(ge=0, le=100)
    credit: float = Field(ge=0, le=100)
    loyalty: float = Field(ge=0, le=100)
    growth: float = Field(ge=0, le=100)


class RfmScore(Payload):
    recency: int = Field(ge=1, le=5)
    frequency: int = Field(ge=1, le=5)
    monetary: int = Field(ge=1, le=5)
    segment: str


class LoyaltyScore(Payload):
    index: float = Field(ge=0, le=100)
    behavioural: float = Field(ge=0, le=100)
    attitudinal: float = Field(ge=0, le=100)
    dick_basu: str
    jones_sasser: str


class ValueScored(Payload):
    customer_id: uuid.UUID
    score: float = Field(ge=0, le=100)
    dimensions: ValueDimensions
    tier: Tier | None
    rfm: RfmScore | None = None
    loyalty: LoyaltyScore
    p_alive: float | None = Field(None, ge=0, le=1)
    clv: Money | None = None
    currency: Currency | None = None
    model_version: str | None = None


class TierChanged(Payload):
    customer_id: uuid.UUID
    from_tier: Tier | None
    to_tier: Tier | None
    score: float = Field(ge=0, le=100)
    model_version: str | None = None
