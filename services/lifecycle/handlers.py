"""What the lifecycle service reacts to (walking skeleton: registration and first purchase)."""

from __future__ import annotations

from typing import Any

from services.lifecycle.models import CustomerStage
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext

SOURCE = "/crm/lifecycle"


async def _move(ctx: HandlerContext, event: CloudEvent[Any], to: str, reason: str) -> None:
    state = await ctx.session.get(CustomerStage, event.data.customer_id)
    before = state.stage if state else None
    if before == to:
        return
    if state is None:
        ctx.session.add(
            CustomerStage(customer_id=event.data.customer_id, stage=to, since=event.time)
        )
    else:
        state.stage, state.since = to, event.time
    ctx.emit(
        new_event(
            type=ev.STAGE_CHANGED,
            source=SOURCE,
            subject=event.subject,
            time=event.time,
            data=p.StageChanged(
                customer_id=event.data.customer_id,
                from_stage=before,
                to_stage=p.Stage(to),
                reason=reason,
                causing_event_id=event.id,
            ),
        )
    )


async def on_registered(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await _move(ctx, event, "prospect", "registered")


async def on_purchase(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await _move(ctx, event, "growth", "first_purchase")


HANDLERS: dict[str, Handler] = {
    ev.CUSTOMER_REGISTERED: on_registered,
    ev.PURCHASE_RECORDED: on_purchase,
}
