"""What the complaints service reacts to: customers it may take complaints for, their value
tier (SLA targets by tier), and erasure (free text deleted, complaints kept anonymous)."""

from __future__ import annotations

from typing import Any

from services.complaints import service
from services.complaints.domain import Tier
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext


async def on_customer(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await service.remember_customer(ctx.session, customer_id=event.data.customer_id)


async def on_erased(ctx: HandlerContext, event: CloudEvent[p.CustomerErased]) -> None:
    await service.erase_customer(ctx.session, customer_id=event.data.customer_id, at=event.time)


async def on_tier_changed(ctx: HandlerContext, event: CloudEvent[p.TierChanged]) -> None:
    await service.record_tier(
        ctx.session,
        customer_id=event.data.customer_id,
        tier=_tier(event.data.to_tier),
        as_of=event.time,
    )


async def on_scored(ctx: HandlerContext, event: CloudEvent[p.ValueScored]) -> None:
    await service.record_tier(
        ctx.session,
        customer_id=event.data.customer_id,
        tier=_tier(event.data.tier),
        as_of=event.time,
    )


def _tier(tier: p.Tier | None) -> Tier | None:
    return Tier(tier) if tier is not None else None


HANDLERS: dict[str, Handler] = {
    ev.CUSTOMER_REGISTERED: on_customer,
    ev.CUSTOMER_UPDATED: on_customer,
    ev.CUSTOMER_CONSENT_CHANGED: on_customer,
    ev.CUSTOMER_ERASED: on_erased,
    ev.TIER_CHANGED: on_tier_changed,
    ev.VALUE_SCORED: on_scored,
}
