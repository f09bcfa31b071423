"""The events profile builds for purchases, and the ids it draws for them."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from services.profile.domain import LineItem, Purchase
from services.profile.service import new_ids, purchase_recorded_event
from shared.events import registry as ev

CUSTOMER = uuid.UUID("7b0e1c1e-0000-4000-8000-000000000001")
PURCHASE = uuid.UUID("7b0e1c1e-0000-4000-8000-000000000002")
EVENT = uuid.UUID("7b0e1c1e-0000-4000-8000-000000000003")
AT = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def purchase(*items: LineItem, amount: str = "59.80") -> Purchase:
    return Purchase("A-1", Decimal(amount), "USD", AT, items, "web")


def test_new_ids_are_distinct_time_ordered_version_7_uuids() -> None:
    ids = new_ids(500)
    assert len(ids) == 500 == len(set(ids))
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert new_ids(0) == []


def test_purchase_recorded_carries_the_purchase_in_money_strings() -> None:
    item = LineItem("TEE-1", "apparel", 2, Decimal("29.90"))
    event = purchase_recorded_event(
        purchase_id=PURCHASE, customer_id=CUSTOMER, purchase=purchase(item), event_id=EVENT
    )
    assert (event.id, event.type, event.subject) == (EVENT, ev.PURCHASE_RECORDED, str(CUSTOMER))
    document = orjson.loads(event.to_bytes())
    assert document["time"] == "2024-05-01T10:00:00Z"
    assert document["data"] == {
        "customer_id": str(CUSTOMER),
        "purchase_id": str(PURCHASE),
        "order_id": "A-1",
        "amount": "59.80",
        "currency": "USD",
        "items": [{"sku": "TEE-1", "category": "apparel", "quantity": 2, "unit_price": "29.90"}],
        "channel": "web",
    }
    # What a consumer reads back is the same event.
    assert ev.parse(event.to_bytes()) == event


def test_purchase_recorded_gets_a_fresh_id_when_none_is_given() -> None:
    first, second = (
        purchase_recorded_event(purchase_id=PURCHASE, customer_id=CUSTOMER, purchase=purchase())
        for _ in range(2)
    )
    assert first.id != second.id and first.id.version == 7


def test_a_purchase_outside_the_contract_is_never_published() -> None:
    # The domain's checks hold every source (API, ingest, CSV) to the contract's bounds; an
    # event that breaks it anyway fails here instead of reaching consumers that refuse it.
    item = LineItem("S" * 150, None, 1, Decimal("1.00"))
    with pytest.raises(ValidationError, match="sku"):
        purchase_recorded_event(
            purchase_id=PURCHASE,
            customer_id=CUSTOMER,
            purchase=purchase(item, amount="1.00"),
            event_id=EVENT,
        )
