"""HTTP edge of the lifecycle service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from services.lifecycle.models import CustomerStage
from shared.db import transaction
from shared.errors import NotFound
from shared.http.auth import Principal, require
from shared.http.deps import Runtime

router = APIRouter(prefix="/v1", tags=["lifecycle"])
CanRead = Annotated[Principal, Depends(require("lifecycle:read"))]


class LifecycleRead(BaseModel):
    customer_id: uuid.UUID
    stage: str
    since: datetime


@router.get("/customers/{customer_id}/lifecycle", response_model=LifecycleRead)
async def read(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> LifecycleRead:
    async with transaction(rt.sessions) as session:
        state = await session.get(CustomerStage, customer_id)
    if state is None:
        raise NotFound(f"No lifecycle for customer {customer_id}")
    return LifecycleRead(customer_id=state.customer_id, stage=state.stage, since=state.since)
