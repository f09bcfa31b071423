"""What the lifecycle service reacts to: HANDLERS is the one-place answer.

Every event goes through ``service.apply_events``; the consumer runner calls ``PROCESS`` with
whole batches (one transaction, set-based reads and writes) and with single events when it
redoes a failed batch one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.lifecycle import service
from shared.events import CloudEvent
from shared.events import registry as ev
from shared.messaging.consumer import Handler, HandlerContext


async def process(ctx: HandlerContext, events: Sequence[CloudEvent[Any]]) -> None:
    # The stage changes' events go to the outbox in the statement that writes the changes.
    policy_locked = service.POLICY_LOCK in ctx.held_shared  # by the runner (see worker.py)
    await service.apply_events(ctx.session, events, policy_locked=policy_locked)


async def on_event(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await process(ctx, [event])


HANDLERS: dict[str, Handler] = {
    ev.CUSTOMER_REGISTERED: on_event,  # -> prospect
    ev.CUSTOMER_ERASED: on_event,  # -> state and history deleted
    ev.PURCHASE_RECORDED: on_event,  # first purchase, maturity, reactivation, winback
    ev.PURCHASE_REFUNDED: on_event,  # purchase days (a fully refunded order does not count)
    ev.COMPLAINT_OPENED: on_event,  # complaint decline
    ev.COMPLAINT_REOPENED: on_event,  # complaint decline
    ev.COMPLAINT_CLOSED: on_event,  # service recovery
    ev.VALUE_SCORED: on_event,  # model churn (P(alive))
}
PROCESS = process
