"""Request and response models of the profile API (shapes only; rules live in domain.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from services.profile import domain
from shared.events.payloads import ConsentPurpose, ConsentStatus, CustomerKind, Stage, Tier
from shared.text import unstorable_text_in

#: Money on the wire: a decimal string with the currency's minor units ("129.90").
MoneyText = Annotated[
    str,
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["129.90"]}),
]
#: Money in requests: a decimal string (JSON numbers are accepted too).
MoneyIn = Annotated[Decimal, Field(allow_inf_nan=False, examples=["129.90"])]

_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _storable_json(attributes: dict[str, Any]) -> dict[str, Any]:
    # At validation, not only in the rules: a retried write dumps the request for its
    # Idempotency-Key fingerprint first, and a lone surrogate in a nested key breaks the dump.
    problem = unstorable_text_in(attributes)
    if problem is not None:
        raise ValueError(problem)
    return attributes


#: A JSON object jsonb can hold: no NUL and no lone surrogate in any key or string.
CustomAttributes = Annotated[dict[str, Any], AfterValidator(_storable_json)]


class AddressIn(BaseModel):
    model_config = _STRICT
    line1: str = Field(max_length=200)
    line2: str | None = Field(None, max_length=200)
    city: str = Field(max_length=200)
    postal_code: str | None = Field(None, max_length=40)
    region: str | None = Field(None, max_length=200)
    country: str = Field(description="ISO 3166-1 alpha-2", examples=["GB"])
    kind: str | None = Field(None, max_length=40, examples=["billing", "shipping", "home"])

    def to_domain(self) -> domain.Address:
        return domain.Address(**self.model_dump())


class AddressRead(BaseModel):
    line1: str
    line2: str | None = None
    city: str
    postal_code: str | None = None
    region: str | None = None
    country: str
    kind: str | None = None


class CustomerCreate(BaseModel):
    model_config = _STRICT
    kind: CustomerKind = CustomerKind.person
    name: str | None = Field(
        None, max_length=400, description="Person's full name or organization's name"
    )
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(
        None, max_length=40, description="E.164, or national with the default region"
    )
    addresses: list[AddressIn] = Field(default_factory=list, max_length=10)
    external_ref: str | None = Field(
        None, max_length=128, description="Id in another system; unique"
    )
    tags: list[str] = Field(default_factory=list, max_length=domain.MAX_TAGS)
    custom_attributes: CustomAttributes = Field(default_factory=dict)
    referred_by: uuid.UUID | None = Field(None, description="The referring customer")
    source_channel: str | None = Field(None, max_length=32, examples=["web", "store"])
    consents: dict[ConsentPurpose, ConsentStatus] = Field(default_factory=dict)
    consent_source: str = Field("registration", max_length=64)
    registered_at: AwareDatetime | None = Field(
        None, description="Business time of registration (default: now); past for migrations"
    )


class CustomerUpdate(BaseModel):
    """Only the fields sent change; `null` clears an optional field."""

    model_config = _STRICT
    name: str | None = Field(None, max_length=400)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40)
    addresses: list[AddressIn] | None = Field(None, max_length=10)
    external_ref: str | None = Field(None, max_length=128)
    tags: list[str] | None = Field(None, max_length=domain.MAX_TAGS)
    custom_attributes: CustomAttributes | None = None
    source_channel: str | None = Field(None, max_length=32)


class CustomerRead(BaseModel):
    id: uuid.UUID
    kind: CustomerKind
    name: str | None
    email: str | None
    phone: str | None
    addresses: list[AddressRead]
    external_ref: str | None
    tags: list[str]
    custom_attributes: dict[str, Any]
    referred_by: uuid.UUID | None
    source_channel: str | None
    registered_at: AwareDatetime
    version: int
    updated_at: AwareDatetime
    masked: bool = Field(description="True when personal fields are masked (no `pii:read`)")


class ConsentRead(BaseModel):
    purpose: ConsentPurpose
    status: ConsentStatus
    changed_at: AwareDatetime
    source: str


class ConsentChangeRead(BaseModel):
    purpose: ConsentPurpose
    previous: ConsentStatus | None
    status: ConsentStatus
    changed_at: AwareDatetime
    source: str


class ConsentsUpdate(BaseModel):
    model_config = _STRICT
    consents: dict[ConsentPurpose, ConsentStatus] = Field(min_length=1)
    source: str = Field(max_length=64, examples=["web_form", "call_centre", "unsubscribe_link"])
    changed_at: AwareDatetime | None = Field(None, description="Business time (default: now)")


class ConsentsRead(BaseModel):
    customer_id: uuid.UUID
    current: list[ConsentRead]
    history: list[ConsentChangeRead]


class PurchaseItemIn(BaseModel):
    model_config = _STRICT
    sku: str = Field(max_length=domain.MAX_SKU_LENGTH)
    category: str | None = Field(None, max_length=domain.MAX_CATEGORY_LENGTH)
    quantity: int = Field(strict=True)
    unit_price: MoneyIn


class PurchaseCreate(BaseModel):
    model_config = _STRICT
    order_id: str = Field(max_length=domain.MAX_ORDER_ID_LENGTH, description="Idempotency key")
    amount: MoneyIn
    currency: str = Field(max_length=3, examples=["USD"])
    items: list[PurchaseItemIn] = Field(default_factory=list)
    channel: str | None = Field(None, max_length=32)
    occurred_at: AwareDatetime | None = Field(None, description="Business time (default: now)")


class PurchaseItemRead(BaseModel):
    sku: str
    category: str | None
    quantity: int
    unit_price: MoneyText


class PurchaseRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    order_id: str
    amount: MoneyText
    currency: str
    refunded_total: MoneyText
    occurred_at: AwareDatetime
    channel: str | None
    items: list[PurchaseItemRead]


class RefundCreate(BaseModel):
    model_config = _STRICT
    order_id: str = Field(max_length=domain.MAX_ORDER_ID_LENGTH)
    amount: MoneyIn
    currency: str = Field(max_length=3)
    refunded_at: AwareDatetime | None = Field(None, description="Business time (default: now)")
    reason: str | None = Field(None, max_length=domain.MAX_REASON_LENGTH)
    chargeback: bool = Field(False, description="Forced by the card issuer, not granted")


class RefundRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    order_id: str
    amount: MoneyText
    currency: str
    refunded_total: MoneyText = Field(description="All refunds of the order, this one included")
    order_amount: MoneyText
    refunded_at: AwareDatetime
    reason: str | None
    chargeback: bool


class InteractionCreate(BaseModel):
    model_config = _STRICT
    channel: str = Field(max_length=32, examples=["phone", "email", "store"])
    direction: domain.InteractionDirection
    summary: str = Field(max_length=domain.MAX_SUMMARY_LENGTH)
    occurred_at: AwareDatetime | None = Field(None, description="Business time (default: now)")


class InteractionRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    channel: str
    direction: domain.InteractionDirection
    summary: str
    occurred_at: AwareDatetime
    recorded_by: str


class RowRejectionRead(BaseModel):
    line: int
    order_id: str | None
    reason: str


class ImportRead(BaseModel):
    id: uuid.UUID
    status: str = Field(description="running | done | failed")
    started_at: AwareDatetime
    finished_at: AwareDatetime | None
    rows_read: int
    orders_total: int
    orders_done: int = Field(description="Progress: orders written so far")
    purchases_created: int
    duplicates: int = Field(description="Orders already recorded (idempotent on order_id)")
    customers_created: int
    rejected: int = Field(description="Rows not imported")
    rejections: list[RowRejectionRead] = Field(description="The first 1000, by line")
    error: str | None = None


# --- the 360 view ------------------------------------------------------------------------------


class ConsentPart(BaseModel):
    items: list[ConsentRead]
    updated_at: AwareDatetime | None


class PurchaseSummary(BaseModel):
    count: int
    first_at: AwareDatetime | None
    last_at: AwareDatetime | None
    total: MoneyText = Field(description="Gross amount of all purchases")
    refunded: MoneyText
    net: MoneyText
    currency: str
    updated_at: AwareDatetime | None = Field(description="When the last purchase was recorded")


class LifecyclePart(BaseModel):
    stage: Stage
    since: AwareDatetime
    reason: str | None
    updated_at: AwareDatetime


class ValuePart(BaseModel):
    score: float | None
    tier: Tier | None
    loyalty_index: float | None
    loyalty_type: str | None = Field(description="Dick & Basu: true, latent, spurious, none")
    loyalty_satisfaction_type: str | None = Field(
        description="Jones & Sasser: apostle, mercenary, hostage, defector"
    )
    p_alive: float | None
    clv: MoneyText | None
    model_version: str | None
    scored_at: AwareDatetime | None
    updated_at: AwareDatetime


class ComplaintSummary(BaseModel):
    complaint_id: uuid.UUID
    severity: str
    status: str
    category: str | None
    opened_at: AwareDatetime | None
    first_response_due: AwareDatetime | None
    resolution_due: AwareDatetime | None
    escalation_level: int
    sla_breached: bool


class ComplaintsPart(BaseModel):
    open: list[ComplaintSummary] = Field(description="Complaints not closed yet")
    open_count: int
    sla_breached: bool = Field(description="Any open complaint breached its SLA")
    updated_at: AwareDatetime | None


class Customer360(BaseModel):
    """Everything known about a customer, from local projections: answers when others are down."""

    profile: CustomerRead
    consents: ConsentPart
    purchases: PurchaseSummary
    lifecycle: LifecyclePart | None = Field(description="None until the lifecycle service reported")
    value: ValuePart | None = Field(description="None until the scoring service reported")
    complaints: ComplaintsPart


# --- presenting rows (masking applies here, by the domain's rules) -----------------------------


def _addresses(addresses: list[dict[str, Any]], *, masked: bool) -> list[dict[str, Any]]:
    shown = []
    for raw in addresses:
        address = domain.Address(**raw)
        shown.append(_address_dict(domain.mask_address(address) if masked else address))
    return shown


def _address_dict(address: domain.Address) -> dict[str, Any]:
    return {
        "line1": address.line1,
        "line2": address.line2,
        "city": address.city,
        "postal_code": address.postal_code,
        "region": address.region,
        "country": address.country,
        "kind": address.kind,
    }


def customer_dict(row: Any, *, masked: bool) -> dict[str, Any]:
    """A customer (ORM object or row mapping) as the API shows it, masked without `pii:read`."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    name, email, phone = get("name"), get("email"), get("phone")
    return {
        "id": get("id"),
        "kind": get("kind"),
        "name": domain.mask_name(name) if masked else name,
        "email": domain.mask_email(email) if masked else email,
        "phone": domain.mask_phone(phone) if masked else phone,
        "addresses": _addresses(get("addresses") or [], masked=masked),
        "external_ref": get("external_ref"),
        "tags": list(get("tags") or []),
        "custom_attributes": get("custom_attributes") or {},
        "referred_by": get("referred_by"),
        "source_channel": get("source_channel"),
        "registered_at": get("registered_at"),
        "version": get("version"),
        "updated_at": get("updated_at"),
        "masked": masked,
    }


def customer_read(row: Any, *, masked: bool) -> CustomerRead:
    return CustomerRead.model_validate(customer_dict(row, masked=masked))


def purchase_read(purchase: Any, items: list[Any]) -> PurchaseRead:
    money = domain.format_money
    return PurchaseRead(
        id=purchase.id,
        customer_id=purchase.customer_id,
        order_id=purchase.order_id,
        amount=money(purchase.amount, purchase.currency),
        currency=purchase.currency,
        refunded_total=money(purchase.refunded_total or Decimal(0), purchase.currency),
        occurred_at=purchase.occurred_at,
        channel=purchase.channel,
        items=[
            PurchaseItemRead(
                sku=item.sku,
                category=item.category,
                quantity=item.quantity,
                unit_price=money(item.unit_price, purchase.currency),
            )
            for item in items
        ],
    )


def refund_read(refund: Any, purchase: Any) -> RefundRead:
    money = domain.format_money
    return RefundRead(
        id=refund.id,
        customer_id=refund.customer_id,
        order_id=purchase.order_id,
        amount=money(refund.amount, refund.currency),
        currency=refund.currency,
        refunded_total=money(purchase.refunded_total, purchase.currency),
        order_amount=money(purchase.amount, purchase.currency),
        refunded_at=refund.refunded_at,
        reason=refund.reason,
        chargeback=refund.chargeback,
    )


def import_read(run: Any) -> ImportRead:
    return ImportRead.model_validate(run, from_attributes=True)


def _instant(moment: str | datetime) -> datetime:
    return datetime.fromisoformat(moment) if isinstance(moment, str) else moment


def view_360(row: dict[str, Any], *, masked: bool, currency: str) -> dict[str, Any]:
    """The 360 document (shape of `Customer360`) from the one-row query of service.customer_360."""
    money = domain.format_money
    consents = row["consents"]
    complaints = row["open_complaints"]
    lifecycle = None
    if row["stage"] is not None:
        lifecycle = {
            "stage": row["stage"],
            "since": row["since"],
            "reason": row["stage_reason"],
            "updated_at": row["stage_updated_at"],
        }
    value = None
    if row["value_updated_at"] is not None:
        value = {
            "score": row["score"],
            "tier": row["tier"],
            "loyalty_index": row["loyalty_index"],
            "loyalty_type": row["loyalty_type"],
            "loyalty_satisfaction_type": row["loyalty_satisfaction_type"],
            "p_alive": row["p_alive"],
            "clv": money(row["clv"], currency) if row["clv"] is not None else None,
            "model_version": row["model_version"],
            "scored_at": row["scored_at"],
            "updated_at": row["value_updated_at"],
        }
    total, refunded = row["total"], row["refunded"]
    return {
        "profile": customer_dict(row, masked=masked),
        "consents": {
            "items": consents,
            # By instant, not by text: PostgreSQL writes the JSON's times in the session's
            # time zone, and "10:00+02:00" sorts after "09:30+00:00" though it is earlier.
            "updated_at": max((c["changed_at"] for c in consents), key=_instant, default=None),
        },
        "purchases": {
            "count": row["purchase_count"],
            "first_at": row["first_at"],
            "last_at": row["last_at"],
            "total": money(total, currency),
            "refunded": money(refunded, currency),
            "net": money(total - refunded, currency),
            "currency": currency,
            "updated_at": row["recorded_at"],
        },
        "lifecycle": lifecycle,
        "value": value,
        "complaints": {
            "open": complaints,
            "open_count": len(complaints),
            "sla_breached": any(c["sla_breached"] for c in complaints),
            "updated_at": row["complaints_updated_at"],
        },
    }
