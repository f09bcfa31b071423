"""Use cases of the profile service: one transaction each, events through the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.profile.models import MESSAGING, Customer, Purchase
from services.profile.schemas import CustomerCreate, PurchaseCreate
from shared.errors import Conflict, InvalidInput, NotFound
from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.outbox import add_events, lock_customers

SOURCE = "/crm/profile"


async def register_customer(
    session: AsyncSession, *, data: CustomerCreate, now: datetime
) -> Customer:
    if data.email is not None:
        existing = await session.scalar(
            select(Customer.id).where(Customer.email == data.email.lower())
        )
        if existing is not None:
            raise Conflict("A customer with this e-mail exists", existing_id=str(existing))
    customer = Customer(
        id=uuid.uuid4(),
        kind=data.kind.value,
        email=data.email and data.email.lower(),
        registered_at=now,
    )
    session.add(customer)
    await session.flush()
    await add_events(
        session,
        MESSAGING,
        [
            new_event(
                type=ev.CUSTOMER_REGISTERED,
                source=SOURCE,
                subject=customer.id,
                time=now,
                data=p.CustomerRegistered(customer_id=customer.id, kind=data.kind),
            ),
        ],
    )
    return customer


async def get_customer(session: AsyncSession, *, customer_id: uuid.UUID) -> Customer:
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise NotFound(f"No customer {customer_id}")
    return customer


async def record_purchase(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID,
    data: PurchaseCreate,
    base_currency: str,
    now: datetime,
) -> tuple[Purchase, bool]:
    """Returns (purchase, created); the same order_id again returns the existing purchase."""
    if data.currency != base_currency:
        raise InvalidInput.field(
            "body.currency", f"must be the deployment's base currency {base_currency}"
        )
    await lock_customers(session, [customer_id])
    await get_customer(session, customer_id=customer_id)
    existing = await session.scalar(select(Purchase).where(Purchase.order_id == data.order_id))
    if existing is not None:
        if existing.customer_id != customer_id:
            raise Conflict(f"order_id {data.order_id} belongs to another customer")
        return existing, False
    occurred_at = data.occurred_at or now
    purchase = Purchase(
        id=uuid.uuid4(),
        customer_id=customer_id,
        order_id=data.order_id,
        amount=data.amount,
        currency=data.currency,
        occurred_at=occurred_at,
    )
    session.add(purchase)
    await session.flush()
    await add_events(
        session,
        MESSAGING,
        [
            new_event(
                type=ev.PURCHASE_RECORDED,
                source=SOURCE,
                subject=customer_id,
                time=occurred_at,
                data=p.PurchaseRecorded(
                    customer_id=customer_id,
                    purchase_id=purchase.id,
                    order_id=purchase.order_id,
                    amount=purchase.amount,
                    currency=purchase.currency,
                ),
            ),
        ],
    )
    return purchase, True
