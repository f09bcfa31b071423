"""What the profile service reacts to: HANDLERS = {event type: handler}.

- Lifecycle, value and complaint events feed the local projections of the 360 view
  (`process_projections`, set-based per batch). Events arrive late or out of order: a
  projection only moves forward in business time.
- Orders dropped by other systems on `crm.ingest.orders.v1` (plain JSON, see
  `domain.IngestOrder`) are decoded and validated by `ingest_decoder` (bad ones go straight to
  the DLQ with the reason) and recorded by `on_ingested_order`.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord

from services.profile import domain, service
from shared.clock import Clock
from shared.db import driver_connection
from shared.events import CloudEvent, EnvelopeError, topics
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.envelope import peek
from shared.messaging.consumer import Decoder, Handler, HandlerContext, decoding

#: The internal type under which ingested orders reach their handler (never published).
INGESTED_ORDER = "crm.ingest.order_received.v1"
_INGEST_NAMESPACE = uuid.UUID("6f1c3b1e-6c53-4c8e-9d51-2f0a8a3c1d11")


# --- the 360 projections: lifecycle, value and complaint events, set-based per batch ----------

_STAGE_SQL = """
    INSERT INTO customer_stage (customer_id, stage, since, reason, event_id, updated_at)
    SELECT customer_id, stage, since, reason, event_id, now()
      FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::uuid[])
           AS t(customer_id, stage, since, reason, event_id)
    ON CONFLICT (customer_id) DO UPDATE
       SET stage = excluded.stage, since = excluded.since, reason = excluded.reason,
           event_id = excluded.event_id, updated_at = now()
     WHERE customer_stage.since <= excluded.since
"""
_VALUE_SQL = """
    INSERT INTO customer_value (customer_id, score, tier, loyalty_index, loyalty_type,
                                loyalty_satisfaction_type, p_alive, clv, model_version,
                                scored_at, updated_at)
    SELECT t.*, now()
      FROM unnest($1::uuid[], $2::float8[], $3::text[], $4::float8[], $5::text[], $6::text[],
                  $7::float8[], $8::numeric[], $9::text[], $10::timestamptz[]) AS t
    ON CONFLICT (customer_id) DO UPDATE
       SET score = excluded.score,
           tier = CASE WHEN customer_value.tier_changed_at > excluded.scored_at
                       THEN customer_value.tier ELSE excluded.tier END,
           loyalty_index = excluded.loyalty_index,
           loyalty_type = excluded.loyalty_type,
           loyalty_satisfaction_type = excluded.loyalty_satisfaction_type,
           p_alive = excluded.p_alive, clv = excluded.clv, model_version = excluded.model_version,
           scored_at = excluded.scored_at, updated_at = now()
     WHERE customer_value.scored_at IS NULL OR customer_value.scored_at <= excluded.scored_at
"""
# A score moves the tier unless a newer tier change is held; a tier change applies unless the
# projection already holds something newer: the tier is that of the latest of both events.
_TIER_SQL = """
    INSERT INTO customer_value (customer_id, tier, score, tier_changed_at, updated_at)
    SELECT t.*, now()
      FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::timestamptz[]) AS t
    ON CONFLICT (customer_id) DO UPDATE
       SET tier = excluded.tier, tier_changed_at = excluded.tier_changed_at, updated_at = now()
     WHERE coalesce(greatest(customer_value.tier_changed_at, customer_value.scored_at),
                    '-infinity'::timestamptz) <= excluded.tier_changed_at
"""
_COMPLAINT_COLUMNS = (
    "complaint_id",
    "customer_id",
    "severity",
    "status",
    "category",
    "opened_at",
    "first_response_due",
    "resolution_due",
    "escalation_level",
    "sla_breached",
    "status_at",
)
_COMPLAINT_SQL = f"""
    INSERT INTO customer_complaints ({", ".join(_COMPLAINT_COLUMNS)}, updated_at)
    SELECT t.*, now()
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                  $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int2[],
                  $10::bool[], $11::timestamptz[]) AS t
    ON CONFLICT (complaint_id) DO UPDATE
       SET {", ".join(f"{c} = excluded.{c}" for c in _COMPLAINT_COLUMNS[1:])}, updated_at = now()
"""
_STATUS_BY_EVENT = {
    ev.COMPLAINT_OPENED: "received",
    ev.COMPLAINT_ACKNOWLEDGED: "acknowledged",
    ev.COMPLAINT_RESOLVED: "resolved",
    ev.COMPLAINT_CLOSED: "closed",
    ev.COMPLAINT_REOPENED: "reopened",
}
_COMPLAINT_TYPES = frozenset({*_STATUS_BY_EVENT, ev.COMPLAINT_ESCALATED})


def _latest(events: Sequence[CloudEvent[Any]], type_: str) -> dict[uuid.UUID, CloudEvent[Any]]:
    """Per customer, the event of this type with the latest business time (the last of equals):
    what applying them one by one, each only moving forward in time, would leave."""
    latest: dict[uuid.UUID, CloudEvent[Any]] = {}
    for event in events:
        if event.type == type_:
            customer_id = event.data.customer_id
            if customer_id not in latest or event.time >= latest[customer_id].time:
                latest[customer_id] = event
    return latest


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows -> one list per column, the arrays the `unnest` statements take."""
    return [list(column) for column in zip(*rows, strict=True)]


def _stage_row(event: CloudEvent[Any], data: p.StageChanged) -> tuple[Any, ...]:
    return (data.customer_id, data.to_stage.value, event.time, data.reason[:40], event.id)


def _value_row(event: CloudEvent[Any], data: p.ValueScored) -> tuple[Any, ...]:
    loyalty = data.loyalty
    return (
        data.customer_id,
        data.score,
        data.tier.value if data.tier else None,
        loyalty.index,
        loyalty.dick_basu[:20],
        loyalty.jones_sasser[:20],
        data.p_alive,
        data.clv,
        # The payload does not bound it; the column holds 100 (scoring's own are 40).
        data.model_version[:100] if data.model_version else data.model_version,
        event.time,
    )


def _tier_row(event: CloudEvent[Any], data: p.TierChanged) -> tuple[Any, ...]:
    return (data.customer_id, data.to_tier.value if data.to_tier else None, data.score, event.time)


def _fold_complaint(row: dict[str, Any] | None, event: CloudEvent[Any]) -> dict[str, Any]:
    data: p.ComplaintPayload = event.data
    if row is None:
        row = dict.fromkeys(_COMPLAINT_COLUMNS)
        row |= {
            "complaint_id": data.complaint_id,
            "customer_id": data.customer_id,
            "status": "received",
            "escalation_level": 0,
            "sla_breached": False,
            "status_at": event.time,
        }
    row["severity"] = data.severity.value
    breached = False
    match data:
        case p.ComplaintOpened():
            row["category"] = data.category.value
            row["opened_at"] = event.time
            row["first_response_due"] = data.first_response_due
            row["resolution_due"] = data.resolution_due
        case p.ComplaintAcknowledged():
            breached = not data.first_response_met
        case p.ComplaintResolved():
            breached = not data.resolution_met
        case p.ComplaintEscalated():
            row["escalation_level"] = max(row["escalation_level"], data.level)
            breached = data.reason is not p.EscalationReason.manual
    row["sla_breached"] = row["sla_breached"] or breached
    status = _STATUS_BY_EVENT.get(event.type)
    # Only a newer business time moves the status: late events keep their facts, not their state.
    if status is not None and event.time >= row["status_at"]:
        row["status"], row["status_at"] = status, event.time
    return row


async def process_projections(ctx: HandlerContext, events: Sequence[CloudEvent[Any]]) -> None:
    """Fold a batch of lifecycle, value and complaint events into the 360 projections with one
    statement per projection. Events arrive late or out of order: a projection only moves
    forward in business time. This consumer emits nothing, so it takes no customer locks; it
    share-locks the customers' rows instead, so that an erasure (which updates the row and
    deletes the projections) either commits first and is seen here, or waits for this batch."""
    db = await driver_connection(ctx.session)
    # Unsorted: the statement's ORDER BY takes the row locks in id order (sorting UUIDs here
    # costs a Python-level comparison per step).
    customers = list({event.data.customer_id for event in events})
    erased = {
        row["id"]
        for row in await db.fetch(
            "SELECT id, erased_at FROM customers WHERE id = ANY($1::uuid[]) ORDER BY id FOR SHARE",
            customers,
        )
        if row["erased_at"] is not None
    }
    # Events about an erased customer must not bring their data back.
    live = [event for event in events if event.data.customer_id not in erased]

    if stages := list(_latest(live, ev.STAGE_CHANGED).values()):
        await db.execute(_STAGE_SQL, *_columns(_stage_row(e, e.data) for e in stages))
    if scores := list(_latest(live, ev.VALUE_SCORED).values()):
        await db.execute(_VALUE_SQL, *_columns(_value_row(e, e.data) for e in scores))
    if tiers := list(_latest(live, ev.TIER_CHANGED).values()):
        await db.execute(_TIER_SQL, *_columns(_tier_row(e, e.data) for e in tiers))
    complaint_events = [e for e in live if e.type in _COMPLAINT_TYPES]
    if complaint_events:
        ids = list({e.data.complaint_id for e in complaint_events})  # locked in ORDER BY order
        rows: dict[uuid.UUID, dict[str, Any]] = {
            row["complaint_id"]: dict(row)
            for row in await db.fetch(
                f"SELECT {', '.join(_COMPLAINT_COLUMNS)} FROM customer_complaints "
                "WHERE complaint_id = ANY($1::uuid[]) ORDER BY complaint_id FOR UPDATE",
                ids,
            )
        }
        for event in complaint_events:
            rows[event.data.complaint_id] = _fold_complaint(
                rows.get(event.data.complaint_id), event
            )
        folded = list(rows.values())
        await db.execute(_COMPLAINT_SQL, *([row[c] for row in folded] for c in _COMPLAINT_COLUMNS))


async def on_projected_event(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    await process_projections(ctx, [event])


# --- reading the projections' topics ----------------------------------------------------------


def _nullable(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _nullable_required(spec: ev.EventSpec) -> tuple[str, ...]:
    return tuple(
        name
        for name, field in spec.payload.model_fields.items()
        if field.is_required() and _nullable(field.annotation)
    )


#: Per event type, the payload fields that are required but may be null (read once, not per event).
_NULLABLE_REQUIRED: dict[str, tuple[str, ...]] = {
    event_type: _nullable_required(spec) for event_type, spec in ev.EVENTS.items()
}


def tolerant_decoder(record: ConsumerRecord[bytes, bytes]) -> CloudEvent[Any]:
    """Like the registry's parse, but a nullable field left out of `data` reads as null.

    Producers that serialise without nulls would otherwise lose whole events to the DLQ; the
    contract's rule (a `.v1` payload only gains optional fields) makes this safe.
    """
    raw = record.value or b""
    event = ev.parse_fast(raw)  # the common case: nothing left out, one validation pass
    if event is not None:
        return event
    document = peek(raw)
    data = document.get("data")
    if isinstance(data, dict):
        for name in _NULLABLE_REQUIRED.get(str(document.get("type")), ()):
            if name not in data:
                data[name] = None
    # Validated as read: orjson reads its own output back as the same document, so writing it
    # out again for `ev.parse` only cost time.
    return ev.parse_document(document)


PROJECTION_DECODERS: dict[str, Decoder] = {
    topics.COMPLAINTS: tolerant_decoder,
    topics.LIFECYCLE: tolerant_decoder,
    topics.VALUE: tolerant_decoder,
}


# --- orders from other systems -----------------------------------------------------------------


#: The internal event's class, parametrised once: `CloudEvent[...]` costs a lookup per use.
_IngestedOrderEvent = CloudEvent[domain.IngestOrder]


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
        return _IngestedOrderEvent(
            id=uuid.uuid5(_INGEST_NAMESPACE, f"{record.topic}/{record.partition}/{record.offset}"),
            source="/crm/ingest",
            type=INGESTED_ORDER,
            subject=subject,
            time=purchase.occurred_at,
            data=normalised,
        )

    return decoding(INGESTED_ORDER, decode)


def _purchase_of(order: domain.IngestOrder) -> domain.Purchase:
    """The order was validated and normalised by `ingest_decoder`: rebuild, do not re-check."""
    return domain.Purchase(
        order_id=order.order_id,
        amount=order.amount,
        currency=order.currency,
        occurred_at=order.occurred_at,
        items=tuple(
            [
                domain.LineItem(item.sku, item.category, item.quantity, item.unit_price)
                for item in order.items
            ]
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
    # Its events go to the outbox in the statement that writes the purchases.
    await service.ingest_orders(ctx.session, orders=orders)


HANDLERS: dict[str, Handler] = {
    ev.STAGE_CHANGED: on_projected_event,
    ev.VALUE_SCORED: on_projected_event,
    ev.TIER_CHANGED: on_projected_event,
    **dict.fromkeys(sorted(_COMPLAINT_TYPES), on_projected_event),
    INGESTED_ORDER: on_ingested_order,
}
#: The projections' batch processor (the worker's projection consumer and `crm replay profile`).
PROCESS = process_projections

#: Topics of the 360 projections (what `crm replay profile` re-reads; ingest is not replayed).
PROJECTION_TOPICS = [topics.COMPLAINTS, topics.LIFECYCLE, topics.VALUE]
REPLAY_TOPICS = PROJECTION_TOPICS
DECODERS = PROJECTION_DECODERS
