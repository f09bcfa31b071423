"""Decoding what profile consumes, in memory: ingested orders and the projections' events."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import pytest
from support import kafka_record

from services.profile.handlers import INGESTED_ORDER, ingest_decoder, tolerant_decoder
from shared.clock import FixedClock
from shared.events import EnvelopeError, new_event, topics
from shared.events import payloads as p
from shared.events import registry as ev

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
decode_order = ingest_decoder(base_currency="USD", clock=FixedClock(NOW))


def record(value: bytes, *, topic: str = topics.INGEST_ORDERS, offset: int = 7) -> Any:
    return kafka_record(value, topic=topic, partition=2, offset=offset, key=None)


def order(**fields: Any) -> bytes:
    body = {
        "order_id": " A-1 ",
        "email": "Jane@Example.com",
        "amount": 12.5,
        "currency": "usd",
        "occurred_at": "2024-05-01T12:00:00+02:00",
        "items": [{"sku": "X", "category": "c", "quantity": 1, "unit_price": "12.5"}],
        **fields,
    }
    return orjson.dumps(body)


def test_an_ingested_order_is_normalised_into_an_internal_event() -> None:
    event = decode_order(record(order()))
    assert event.type == INGESTED_ORDER
    assert event.time == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    data = event.data
    assert (data.order_id, data.email, data.currency) == ("A-1", "jane@example.com", "USD")
    assert data.amount == Decimal("12.50") and data.items[0].unit_price == Decimal("12.50")


def test_the_event_id_follows_the_record_so_redelivery_is_deduplicated() -> None:
    first = decode_order(record(order(), offset=7))
    assert decode_order(record(order(), offset=7)).id == first.id
    assert decode_order(record(order(), offset=8)).id != first.id


def test_an_order_inside_a_cloudevent_is_read_from_data() -> None:
    wrapped = orjson.dumps({"specversion": "1.0", "data": orjson.loads(order())})
    assert decode_order(record(wrapped)).data.order_id == "A-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{oops", "not JSON"),
        (order(currency="EUR"), "currency: must be USD"),
        (order(email=None), "give at least one of customer_id, external_ref or email"),
        (order(amount="13.00"), "items add up to 12.50 USD but the amount is 13.00 USD"),
        (order(occurred_at="2030-01-01T00:00:00Z"), "is in the future"),
    ],
)
def test_bad_orders_are_unreadable_with_the_reason(value: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode_order(record(value))
    assert reason in str(caught.value)


def _stage_changed(from_stage: p.Stage | None, to_stage: p.Stage, reason: str) -> Any:
    return new_event(
        type=ev.STAGE_CHANGED,
        source="/crm/lifecycle",
        subject="c-1",
        time=NOW,
        data=p.StageChanged(
            customer_id=UUID("7b0e1c1e-0000-4000-8000-000000000001"),
            from_stage=from_stage,
            to_stage=to_stage,
            reason=reason,
        ),
    )


def test_a_nullable_field_left_out_reads_as_null() -> None:
    stage = _stage_changed(None, p.Stage.prospect, "registered")
    document = orjson.loads(stage.to_bytes())
    del document["data"]["from_stage"]  # what a producer that drops nulls sends
    raw = orjson.dumps(document)
    event = tolerant_decoder(record(raw, topic=topics.LIFECYCLE))
    assert event.data.from_stage is None and event.data.to_stage is p.Stage.prospect


def test_a_required_field_missing_is_still_unreadable() -> None:
    broken = {
        "specversion": "1.0",
        "id": "7b0e1c1e-0000-4000-8000-000000000002",
        "source": "/crm/lifecycle",
        "type": ev.STAGE_CHANGED,
        "subject": "c-1",
        "time": "2024-06-01T12:00:00Z",
        "data": {"customer_id": "7b0e1c1e-0000-4000-8000-000000000001", "reason": "x"},
    }
    with pytest.raises(EnvelopeError, match="to_stage"):
        tolerant_decoder(record(orjson.dumps(broken), topic=topics.LIFECYCLE))


def test_a_complete_event_reads_as_the_registry_parses_it() -> None:
    stage = _stage_changed(p.Stage.prospect, p.Stage.growth, "first purchase")
    raw = stage.to_bytes()
    assert tolerant_decoder(record(raw, topic=topics.LIFECYCLE)) == ev.parse(raw) == stage


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", "a CloudEvent must be a JSON object"),
        (b'{"type": "crm.nope.v1", "data": {}}', "unknown event type"),
        (b'{"type": ["x"], "data": {}}', "unknown event type"),
    ],
)
def test_unreadable_projection_events_say_why(value: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        tolerant_decoder(record(value, topic=topics.VALUE))
