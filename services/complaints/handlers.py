"""What the complaints service reacts to (walking skeleton: customers it may take complaints for)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert

from services.complaints.models import KnownCustomer
from shared.events import CloudEvent
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext


async def on_registered(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    stmt = insert(KnownCustomer.__table__).values(customer_id=event.data.customer_id)
    await ctx.session.execute(stmt.on_conflict_do_nothing())


HANDLERS: dict[str, Handler] = {ev.CUSTOMER_REGISTERED: on_registered}
