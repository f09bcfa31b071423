"""The event contract: envelope, registry, catalogue, and compatibility with the committed schemas."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from shared.events import EVENTS, EnvelopeError, new_event, parse
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.catalog import asyncapi_document, payload_schema, render_schema
from shared.events.compat import breaking_changes
from shared.observability.logging import PERSONAL_KEYS

DOCS = Path(__file__).resolve().parents[3] / "docs" / "events"
CONTRACT_TYPES = {
    "crm.customer.registered.v1",
    "crm.customer.updated.v1",
    "crm.customer.consent_changed.v1",
    "crm.customer.erased.v1",
    "crm.purchase.recorded.v1",
    "crm.purchase.refunded.v1",
    "crm.complaint.opened.v1",
    "crm.complaint.acknowledged.v1",
    "crm.complaint.escalated.v1",
    "crm.complaint.resolved.v1",
    "crm.complaint.closed.v1",
    "crm.complaint.reopened.v1",
    "crm.lifecycle.stage_changed.v1",
    "crm.value.scored.v1",
    "crm.value.tier_changed.v1",
}


def purchase(amount: str = "129.90") -> p.PurchaseRecorded:
    return p.PurchaseRecorded(
        customer_id=uuid.uuid4(),
        purchase_id=uuid.uuid4(),
        order_id="A-1",
        amount=Decimal(amount),
        currency="USD",
        items=[p.PurchaseItem(sku="S1", category="shoes", quantity=1, unit_price=Decimal(amount))],
    )


def test_registry_covers_the_contract_event_types() -> None:
    assert set(EVENTS) == CONTRACT_TYPES
    for spec in EVENTS.values():
        assert spec.topic.startswith("crm.") and spec.topic.endswith(".v1")


def test_round_trip_keeps_type_money_and_business_time_in_utc() -> None:
    data = purchase()
    at = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = new_event(
        type=ev.PURCHASE_RECORDED,
        source="/crm/profile",
        subject=data.customer_id,
        time=at,
        data=data,
    )
    raw = event.to_bytes()
    doc = json.loads(raw)
    assert doc["specversion"] == "1.0" and doc["subject"] == str(data.customer_id)
    assert doc["data"]["amount"] == "129.90"  # money travels as a decimal string
    assert doc["time"] == "2026-03-01T10:00:00Z"
    back = parse(raw)
    assert isinstance(back.data, p.PurchaseRecorded)
    assert back.data.amount == Decimal("129.90") and back.time == at.astimezone(UTC)
    assert back.id == event.id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "crm.nope.happened.v1"}', "unknown event type"),
        (
            b'{"specversion":"1.0","id":"5f1c7d4e-2d1a-4f57-9b8e-1f1f1f1f1f1f","source":"/crm/profile",'
            b'"type":"crm.purchase.recorded.v1","subject":"x","time":"2026-01-01T00:00:00Z","data":{"amount":"-1"}}',
            "invalid crm.purchase.recorded.v1",
        ),
        (
            b'{"specversion":"1.0","id":"5f1c7d4e-2d1a-4f57-9b8e-1f1f1f1f1f1f","source":"/crm/profile",'
            b'"type":"crm.customer.erased.v1","subject":"x","time":"2026-01-01T00:00:00","data":{"customer_id":"5f1c7d4e-2d1a-4f57-9b8e-1f1f1f1f1f1f"}}',
            "invalid crm.customer.erased.v1",  # naive time: business time must carry its offset
        ),
    ],
)
def test_unreadable_messages_raise_envelope_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        parse(raw)


def test_no_payload_carries_personal_data_fields() -> None:
    for event_type in EVENTS:
        fields = set(payload_schema(event_type).get("properties", {}))
        assert not fields & (PERSONAL_KEYS - {"message", "q"}), event_type


def test_committed_schemas_are_current() -> None:
    for event_type in EVENTS:
        committed = DOCS / f"{event_type}.schema.json"
        assert committed.exists(), f"{committed} missing: run `make docs`"
        assert committed.read_text() == render_schema(event_type), f"{event_type}: run `make docs`"


def test_current_payloads_do_not_break_consumers_of_the_committed_schemas() -> None:
    for event_type in EVENTS:
        committed = json.loads((DOCS / f"{event_type}.schema.json").read_text())
        assert breaking_changes(committed, payload_schema(event_type)) == [], event_type


def test_compatibility_check_allows_optional_additions_and_rejects_breaking_changes() -> None:
    old = payload_schema(ev.PURCHASE_RECORDED)

    added_optional = copy.deepcopy(old)
    added_optional["properties"]["coupon"] = {"type": "string"}
    assert breaking_changes(old, added_optional) == []

    added_required = copy.deepcopy(added_optional)
    added_required["required"].append("coupon")
    assert any("coupon: added as required" in m for m in breaking_changes(old, added_required))

    removed = copy.deepcopy(old)
    del removed["properties"]["currency"]
    assert breaking_changes(old, removed) == ["data.currency: removed"]

    retyped = copy.deepcopy(old)
    retyped["properties"]["order_id"] = {"type": "integer"}
    assert any(m.startswith("data.order_id") for m in breaking_changes(old, retyped))

    nested = copy.deepcopy(old)
    nested["$defs"]["PurchaseItem"]["properties"]["quantity"]["minimum"] = 0
    assert any("items" in m and "quantity" in m for m in breaking_changes(old, nested))

    relaxed = copy.deepcopy(old)
    relaxed["required"].remove("amount")
    assert breaking_changes(old, relaxed) == ["data.amount: became optional"]


def test_asyncapi_document_lists_every_event_on_its_topic() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names >= CONTRACT_TYPES
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"crm.ingest.orders.v1", "crm.dlq.v1", "crm.purchases.v1"} <= addresses


def test_required_nullable_fields_survive_the_round_trip() -> None:
    customer = uuid.uuid4()
    first_tier = p.TierChanged(customer_id=customer, from_tier=None, to_tier=p.Tier.key, score=97.5)
    event = new_event(
        type=ev.TIER_CHANGED,
        source="/crm/scoring",
        subject=customer,
        time=datetime.now(UTC),
        data=first_tier,
    )
    raw = event.to_bytes()
    assert json.loads(raw)["data"]["from_tier"] is None and "traceparent" not in json.loads(raw)
    assert parse(raw).data == first_tier
