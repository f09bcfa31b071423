"""What the complaints service reacts to: customers it may take complaints for, their value
tier (SLA targets by tier), and erasure (free text deleted, complaints kept anonymous).

The tier comes from `crm.value.tier_changed.v1` alone (scoring publishes one whenever a
customer's tier differs from the last one published, the first included). The scores sharing
its topic are read past unvalidated: taking the tier from each of them too cost this service
a tenth of the machine's CPU per order under load, for no fact the tier events lack.

The consumer runner calls `PROCESS` with whole batches: one statement writes the batch's net
effect (`service.apply_customer_changes`); single events in its slow path go the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.complaints import service
from services.complaints.domain import Tier
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext

SEEN = frozenset({ev.CUSTOMER_REGISTERED, ev.CUSTOMER_UPDATED, ev.CUSTOMER_CONSENT_CHANGED})


def change_of(event: CloudEvent[Any]) -> service.CustomerChange:
    customer_id = event.data.customer_id
    if event.type in SEEN:
        return service.CustomerChange(customer_id, "seen", event.time)
    if event.type == ev.CUSTOMER_ERASED:
        return service.CustomerChange(customer_id, "erased", event.time)
    if event.type == ev.TIER_CHANGED:
        return service.CustomerChange(customer_id, "tier", event.time, _tier(event.data.to_tier))
    raise ValueError(f"complaints does not consume {event.type}")


def _tier(tier: p.Tier | None) -> Tier | None:
    return Tier(tier) if tier is not None else None


async def process(ctx: HandlerContext, events: Sequence[CloudEvent[Any]]) -> None:
    await service.apply_customer_changes(ctx.session, changes=[change_of(e) for e in events])


async def on_event(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await process(ctx, [event])


HANDLERS: dict[str, Handler] = {
    ev.CUSTOMER_REGISTERED: on_event,
    ev.CUSTOMER_UPDATED: on_event,
    ev.CUSTOMER_CONSENT_CHANGED: on_event,
    ev.CUSTOMER_ERASED: on_event,
    ev.TIER_CHANGED: on_event,
}
PROCESS = process
