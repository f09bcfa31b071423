"""What the profile service reacts to: HANDLERS = {event type: handler}.

- Lifecycle, value and complaint events feed the local projections of the 360 view. Events
  arrive late or out of order: a projection only moves forward in business time.
- Orders dropped by other systems on `crm.ingest.orders.v1` (plain JSON, see
  `domain.IngestOrder`) are decoded and validated by `ingest_decoder` (bad ones go straight to
  the DLQ with the reason) and recorded by `on_ingested_order`.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from services.profile import domain, service
from services.profile.models import (
    ComplaintProjection,
    Customer,
    StageProjection,
    ValueProjection,
)
from shared.clock import Clock
from shared.events import CloudEvent, EnvelopeError, topics
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.envelope import peek
from shared.messaging.consumer import Decoder, Handler, HandlerContext

#: The internal type under which ingested orders reach their handler (never published).
INGESTED_ORDER = "crm.ingest.order_received.v1"
_INGEST_NAMESPACE = uuid.UUID("6f1c3b1e-6c53-4c8e-9d51-2f0a8a3c1d11")


async def _erased(ctx: HandlerContext, customer_id: uuid.UUID) -> bool:
    """Events about an erased customer must not bring their data back."""
    erased_at = await ctx.session.scalar(
        select(Customer.erased_at).where(Customer.id == customer_id)
    )
    return erased_at is not None


# --- lifecycle ---------------------------------------------------------------------------------


async def on_stage_changed(ctx: HandlerContext, event: CloudEvent[p.StageChanged]) -> None:
    data = event.data
    if await _erased(ctx, data.customer_id):
        return
    values = {
        "customer_id": data.customer_id,
        "stage": data.to_stage.value,
        "since": event.time,
        "reason": data.reason[:40],
        "event_id": event.id,
        "updated_at": func.now(),
    }
    insert = pg_insert(StageProjection).values(values)
    await ctx.session.execute(
        insert.on_conflict_do_update(
            index_elements=[StageProjection.customer_id],
            set_={k: insert.excluded[k] for k in values if k != "customer_id"},
            where=StageProjection.since <= insert.excluded.since,
        )
    )


# --- value -------------------------------------------------------------------------------------


async def on_value_scored(ctx: HandlerContext, event: CloudEvent[p.ValueScored]) -> None:
    data = event.data
    if await _erased(ctx, data.customer_id):
        return
    values = {
        "customer_id": data.customer_id,
        "score": data.score,
        "tier": data.tier.value if data.tier else None,
        "loyalty_index": data.loyalty.index,
        "loyalty_type": data.loyalty.dick_basu[:20],
        "loyalty_satisfaction_type": data.loyalty.jones_sasser[:20],
        "p_alive": data.p_alive,
        "clv": data.clv,
        "model_version": data.model_version,
        "scored_at": event.time,
        "updated_at": func.now(),
    }
    insert = pg_insert(ValueProjection).values(values)
    stale = ValueProjection.scored_at.is_(None) | (
        ValueProjection.scored_at <= insert.excluded.scored_at
    )
    await ctx.session.execute(
        insert.on_conflict_do_update(
            index_elements=[ValueProjection.customer_id],
            set_={k: insert.excluded[k] for k in values if k != "customer_id"},
            where=stale,
        )
    )


async def on_tier_changed(ctx: HandlerContext, event: CloudEvent[p.TierChanged]) -> None:
    data = event.data
    if await _erased(ctx, data.customer_id):
        return
    values = {
        "customer_id": data.customer_id,
        "tier": data.to_tier.value if data.to_tier else None,
        "score": data.score,
        "tier_changed_at": event.time,
        "updated_at": func.now(),
    }
    insert = pg_insert(ValueProjection).values(values)
    # A tier change applies unless the projection already holds something newer.
    newest = func.coalesce(
        func.greatest(ValueProjection.tier_changed_at, ValueProjection.scored_at),
        literal_column("'-infinity'::timestamptz"),
    )
    newer = newest <= insert.excluded.tier_changed_at
    await ctx.session.execute(
        insert.on_conflict_do_update(
            index_elements=[ValueProjection.customer_id],
            set_={
                "tier": insert.excluded.tier,
                "tier_changed_at": insert.excluded.tier_changed_at,
                "updated_at": func.now(),
            },
            where=newer,
        )
    )


# --- complaints --------------------------------------------------------------------------------

_STATUS_BY_EVENT = {
    ev.COMPLAINT_OPENED: "received",
    ev.COMPLAINT_ACKNOWLEDGED: "acknowledged",
    ev.COMPLAINT_RESOLVED: "resolved",
    ev.COMPLAINT_CLOSED: "closed",
    ev.COMPLAINT_REOPENED: "reopened",
}


async def on_complaint(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    data: p.ComplaintPayload = event.data
    if await _erased(ctx, data.customer_id):
        return
    row = await ctx.session.get(ComplaintProjection, data.complaint_id, with_for_update=True)
    if row is None:
        row = ComplaintProjection(
            complaint_id=data.complaint_id,
            customer_id=data.customer_id,
            severity=data.severity.value,
            status="received",
            escalation_level=0,
            sla_breached=False,
            status_at=event.time,
        )
        ctx.session.add(row)
    row.severity = data.severity.value
    breached = False
    match data:
        case p.ComplaintOpened():
            row.category = data.category.value
            row.opened_at = event.time
            row.first_response_due = data.first_response_due
            row.resolution_due = data.resolution_due
        case p.ComplaintAcknowledged():
            breached = not data.first_response_met
        case p.ComplaintResolved():
            breached = not data.resolution_met
        case p.ComplaintEscalated():
            row.escalation_level = max(row.escalation_level, data.level)
            breached = data.reason is not p.EscalationReason.manual
    row.sla_breached = row.sla_breached or breached
    status = _STATUS_BY_EVENT.get(event.type)
    # Only a newer business time moves the status: late events keep their facts, not their state.
    if status is not None and event.time >= row.status_at:
        row.status, row.status_at = status, event.time
    row.updated_at = func.now()
    await ctx.session.flush()


# --- reading the projections' topics ----------------------------------------------------------


def _nullable(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def tolerant_decoder(record: ConsumerRecord[bytes, bytes]) -> CloudEvent[Any]:
    """Like the registry's parse, but a nullable field left out of `data` reads as null.

    Producers that serialise without nulls would otherwise lose whole events to the DLQ; the
    contract's rule (a `.v1` payload only gains optional fields) makes this safe.
    """
    document = peek(record.value or b"")
    spec = ev.EVENTS.get(str(document.get("type")))
    data = document.get("data")
    if spec is not None and isinstance(data, dict):
        for name, field in spec.payload.model_fields.items():
            if name not in data and field.is_required() and _nullable(field.annotation):
                data[name] = None
        document["data"] = data
    return ev.parse(orjson.dumps(document))


PROJECTION_DECODERS: dict[str, Decoder] = {
    topics.COMPLAINTS: tolerant_decoder,
    topics.LIFECYCLE: tolerant_decoder,
    topics.VALUE: tolerant_decoder,
}


# --- orders from other systems -----------------------------------------------------------------


def ingest_decoder(
    *,
    base_currency: str,
    clock: Clock,
    max_clock_skew: timedelta = domain.DEFAULT_MAX_CLOCK_SKEW,
) -> Decoder:
    """Kafka record -> internal event carrying a validated order. Raises `EnvelopeError` (DLQ,
    never retried) for malformed JSON or an order that breaks the purchase rules.

    Accepts the order as the whole message, or as `data` of a CloudEvent.
    """

    def decode(record: ConsumerRecord[bytes, bytes]) -> CloudEvent[Any]:
        raw = record.value or b""
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise EnvelopeError(f"not JSON: {error}") from error
        if isinstance(document, dict) and "specversion" in document and "data" in document:
            raw = orjson.dumps(document["data"])
        try:
            order, purchase = domain.parse_ingest_order(
                raw, base_currency=base_currency, now=clock.now(), max_clock_skew=max_clock_skew
            )
        except domain.RuleViolation as error:
            raise EnvelopeError(f"invalid order: {error}") from error
        normalised = order.model_copy(
            update={
                "order_id": purchase.order_id,
                "amount": purchase.amount,
                "currency": purchase.currency,
                "occurred_at": purchase.occurred_at,
                "channel": purchase.channel,
                "items": [
                    domain.IngestOrderItem(
                        sku=item.sku,
                        category=item.category,
                        quantity=item.quantity,
                        unit_price=item.unit_price,
                    )
                    for item in purchase.items
                ],
            }
        )
        subject = str(order.customer_id or order.external_ref or f"order:{order.order_id}")
        return CloudEvent[domain.IngestOrder](
            id=uuid.uuid5(_INGEST_NAMESPACE, f"{record.topic}/{record.partition}/{record.offset}"),
            source="/crm/ingest",
            type=INGESTED_ORDER,
            subject=subject,
            time=purchase.occurred_at,
            data=normalised,
        )

    return decode


def _purchase_of(order: domain.IngestOrder) -> domain.Purchase:
    """The order was validated and normalised by `ingest_decoder`: rebuild, do not re-check."""
    return domain.Purchase(
        order_id=order.order_id,
        amount=order.amount,
        currency=order.currency,
        occurred_at=order.occurred_at,
        items=tuple(
            domain.LineItem(item.sku, item.category, item.quantity, item.unit_price)
            for item in order.items
        ),
        channel=order.channel,
    )


async def on_ingested_order(ctx: HandlerContext, event: CloudEvent[domain.IngestOrder]) -> None:
    await service.ingest_order(ctx.session, order=event.data, purchase=_purchase_of(event.data))


async def process_ingested_orders(
    ctx: HandlerContext, events: Sequence[CloudEvent[domain.IngestOrder]]
) -> None:
    """The consumer's batch processor for ingested orders: set-based for a batch; one order at
    a time (the runner's slow path, after a batch failed) through the per-order use case."""
    if len(events) == 1:
        await on_ingested_order(ctx, events[0])
        return
    orders = [(event.data, _purchase_of(event.data)) for event in events]
    for event in await service.ingest_orders(ctx.session, orders=orders):
        ctx.emit(event)


HANDLERS: dict[str, Handler] = {
    ev.STAGE_CHANGED: on_stage_changed,
    ev.VALUE_SCORED: on_value_scored,
    ev.TIER_CHANGED: on_tier_changed,
    ev.COMPLAINT_OPENED: on_complaint,
    ev.COMPLAINT_ACKNOWLEDGED: on_complaint,
    ev.COMPLAINT_ESCALATED: on_complaint,
    ev.COMPLAINT_RESOLVED: on_complaint,
    ev.COMPLAINT_CLOSED: on_complaint,
    ev.COMPLAINT_REOPENED: on_complaint,
    INGESTED_ORDER: on_ingested_order,
}

#: Topics of the 360 projections (what `crm replay profile` re-reads; ingest is not replayed).
PROJECTION_TOPICS = [topics.COMPLAINTS, topics.LIFECYCLE, topics.VALUE]
REPLAY_TOPICS = PROJECTION_TOPICS
DECODERS = PROJECTION_DECODERS
