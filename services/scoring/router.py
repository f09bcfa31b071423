"""HTTP edge of the scoring service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.scoring.models import CustomerAggregate
from shared.db import transaction
from shared.errors import NotFound
from shared.events.payloads import Money
from shared.http.auth import Principal, require
from shared.http.deps import Runtime

router = APIRouter(prefix="/v1", tags=["value"])
CanRead = Annotated[Principal, Depends(require("scores:read"))]


class ValueRead(BaseModel):
    customer_id: uuid.UUID
    order_count: int
    net_revenue: Money
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None


@router.get("/customers/{customer_id}/value", response_model=ValueRead)
async def read(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> ValueRead:
    async with transaction(rt.sessions) as session:
        agg = await session.get(CustomerAggregate, customer_id)
    if agg is None:
        raise NotFound(f"No value for customer {customer_id} yet")
    return ValueRead.model_validate(agg, from_attributes=True)
