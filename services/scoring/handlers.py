"""What the scoring service reacts to (walking skeleton: purchase aggregates)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from services.scoring.models import CustomerAggregate
from shared.events import CloudEvent
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext


async def on_purchase(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    agg = CustomerAggregate.__table__
    stmt = insert(agg).values(
        customer_id=event.data.customer_id,
        order_count=1,
        net_revenue=event.data.amount,
        first_purchase_at=event.time,
        last_purchase_at=event.time,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[agg.c.customer_id],
        set_={
            "order_count": agg.c.order_count + 1,
            "net_revenue": agg.c.net_revenue + stmt.excluded.net_revenue,
            "first_purchase_at": func.least(
                agg.c.first_purchase_at, stmt.excluded.first_purchase_at
            ),
            "last_purchase_at": func.greatest(
                agg.c.last_purchase_at, stmt.excluded.last_purchase_at
            ),
        },
    )
    await ctx.session.execute(stmt)


HANDLERS: dict[str, Handler] = {ev.PURCHASE_RECORDED: on_purchase}
