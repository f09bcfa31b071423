"""Request and response models of the profile API."""

from __future__ import annotations

import uuid
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field

from shared.events.payloads import Currency, CustomerKind, Money


class CustomerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: CustomerKind = CustomerKind.person
    email: EmailStr | None = None


class CustomerRead(BaseModel):
    id: uuid.UUID
    kind: CustomerKind
    email: str | None
    registered_at: AwareDatetime
    version: int


class PurchaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(min_length=1, max_length=200)
    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=2)
    currency: Currency
    occurred_at: AwareDatetime | None = None


class PurchaseRead(BaseModel):
    id: uuid.UUID
    customer_id: uuid.UUID
    order_id: str
    amount: Money
    currency: str
    occurred_at: AwareDatetime
