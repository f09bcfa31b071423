"""HTTP edge of the profile service: schema in -> use case -> schema out."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from services.profile import service
from services.profile.schemas import CustomerCreate, CustomerRead, PurchaseCreate, PurchaseRead
from shared.db import transaction
from shared.http.auth import Principal, require
from shared.http.deps import Runtime

router = APIRouter(prefix="/v1", tags=["customers"])

CanRead = Annotated[Principal, Depends(require("customers:read"))]
CanWrite = Annotated[Principal, Depends(require("customers:write"))]


@router.post("/customers", status_code=status.HTTP_201_CREATED, response_model=CustomerRead)
async def register(
    body: CustomerCreate, rt: Runtime, _: CanWrite, response: Response
) -> CustomerRead:
    async with transaction(rt.sessions) as session:
        customer = await service.register_customer(session, data=body, now=rt.clock.now())
    response.headers["Location"] = f"/v1/customers/{customer.id}"
    return CustomerRead.model_validate(customer, from_attributes=True)


@router.get("/customers/{customer_id}", response_model=CustomerRead)
async def read(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> CustomerRead:
    async with transaction(rt.sessions) as session:
        customer = await service.get_customer(session, customer_id=customer_id)
    return CustomerRead.model_validate(customer, from_attributes=True)


@router.post(
    "/customers/{customer_id}/purchases",
    status_code=status.HTTP_201_CREATED,
    response_model=PurchaseRead,
)
async def record_purchase(
    customer_id: uuid.UUID, body: PurchaseCreate, rt: Runtime, _: CanWrite, response: Response
) -> PurchaseRead:
    settings = rt.settings
    async with transaction(rt.sessions) as session:
        purchase, created = await service.record_purchase(
            session,
            customer_id=customer_id,
            data=body,
            base_currency=settings.base_currency,  # type: ignore[attr-defined]
            now=rt.clock.now(),
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    return PurchaseRead.model_validate(purchase, from_attributes=True)
