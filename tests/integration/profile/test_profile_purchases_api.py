"""Purchases, refunds and interactions over HTTP, and the events they publish."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from integration.profile.profile_helpers import READER, WRITER, Profile, read_events, rows
from support import eventually, waiting_for_advisory_lock

from services.profile import service
from services.profile.domain import InteractionDirection
from services.profile.schemas import InteractionCreate
from shared.db import session_factory, transaction
from shared.events import registry as ev
from shared.events import topics
from shared.messaging.outbox import advisory_key

pytestmark = pytest.mark.integration


def order(**fields: object) -> dict[str, object]:
    return {
        "order_id": f"O-{uuid.uuid4().hex[:10]}",
        "amount": "59.80",
        "currency": "USD",
        "occurred_at": "2024-05-01T10:00:00Z",
        "items": [
            {"sku": "TEE-1", "category": "apparel", "quantity": 2, "unit_price": "19.90"},
            {"sku": "MUG-7", "category": "home", "quantity": 1, "unit_price": "20.00"},
        ],
        "channel": "web",
        **fields,
    }


async def test_purchase_is_idempotent_on_order_id(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    body = order()
    first = await profile.client.post(url, json=body, headers=WRITER)
    assert first.status_code == 201, first.text
    recorded = first.json()
    assert recorded["amount"] == "59.80" and recorded["refunded_total"] == "0.00"
    assert recorded["items"][0] == {
        "sku": "TEE-1",
        "category": "apparel",
        "quantity": 2,
        "unit_price": "19.90",
    }
    again = await profile.client.post(url, json=body, headers=WRITER)
    assert again.status_code == 200
    assert again.json() == recorded
    events = await read_events(profile.bootstrap, topics.PURCHASES, subject=customer["id"], want=1)
    assert len(events) == 1, "the retry must not publish a second event"
    assert events[0]["type"] == ev.PURCHASE_RECORDED
    assert events[0]["time"].startswith("2024-05-01T10:00:00")
    assert events[0]["data"]["amount"] == "59.80"
    assert events[0]["data"]["items"][1]["unit_price"] == "20.00"


async def test_a_recorded_purchase_is_stored_as_answered(profile: Profile) -> None:
    """What the 201 says is what is stored: the row (origin api), its items in order, and what
    a later read returns; an erased customer takes no purchase (404)."""
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    body = order(
        amount="39.85",
        items=[
            {"sku": "PEN-2", "category": None, "quantity": 3, "unit_price": "6.95"},
            {"sku": "INK-9", "quantity": 1, "unit_price": "19.00"},
        ],
    )
    created = await profile.client.post(url, json=body, headers=WRITER)
    assert created.status_code == 201, created.text
    answered = created.json()
    assert created.headers["location"] == f"{url}/{answered['id']}"
    listed = await profile.client.get(url, headers=READER)
    assert listed.json()["items"] == [answered]
    (row,) = await rows(
        profile.engine,
        "SELECT id, customer_id, amount, origin, channel, refunded_total "
        "FROM purchases WHERE order_id = :order_id",
        order_id=body["order_id"],
    )
    items = await rows(
        profile.engine,
        "SELECT position, sku, category, quantity, unit_price FROM purchase_items "
        "WHERE purchase_id = :id ORDER BY position",
        id=row.id,
    )
    assert (str(row.id), str(row.customer_id), row.origin) == (
        answered["id"],
        customer["id"],
        "api",
    )
    assert (row.amount, row.channel, row.refunded_total) == (Decimal("39.85"), "web", 0)
    assert [tuple(i) for i in items] == [
        (0, "PEN-2", None, 3, Decimal("6.95")),
        (1, "INK-9", None, 1, Decimal("19.00")),
    ]
    assert (
        await profile.client.delete(f"/v1/customers/{customer['id']}", headers=WRITER)
    ).status_code == 204
    erased = await profile.client.post(url, json=order(), headers=WRITER)
    assert erased.status_code == 404, erased.text


async def test_concurrent_retries_record_one_purchase(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    body = order()
    answers = await asyncio.gather(
        *(profile.client.post(url, json=body, headers=WRITER) for _ in range(4))
    )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1


async def test_same_order_id_elsewhere_or_with_another_amount_is_a_conflict(
    profile: Profile,
) -> None:
    one, other = await profile.register(), await profile.register()
    body = order()
    await profile.client.post(f"/v1/customers/{one['id']}/purchases", json=body, headers=WRITER)
    elsewhere = await profile.client.post(
        f"/v1/customers/{other['id']}/purchases", json=body, headers=WRITER
    )
    assert elsewhere.status_code == 409
    changed = await profile.client.post(
        f"/v1/customers/{one['id']}/purchases",
        json={**body, "amount": "60.00", "items": []},
        headers=WRITER,
    )
    assert changed.status_code == 409 and "record a refund instead" in changed.json()["detail"]


async def test_free_order_and_history_are_purchases(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    free = await profile.client.post(
        url, json=order(amount="0", items=[], occurred_at="2019-01-01T00:00:00Z"), headers=WRITER
    )
    assert free.status_code == 201 and free.json()["amount"] == "0.00"


async def test_purchase_rules_give_422_with_fields(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await profile.client.post(
        url, json=order(currency="EUR", amount="59.801", occurred_at=future), headers=WRITER
    )
    assert response.status_code == 422
    errors = {e["field"]: e["reason"] for e in response.json()["errors"]}
    assert errors["body.currency"].startswith("must be USD, this deployment's base currency")
    assert "too many decimal places" in errors["body.amount"]
    assert "in the future" in errors["body.occurred_at"]
    mismatch = await profile.client.post(url, json=order(amount="50.00"), headers=WRITER)
    assert mismatch.json()["errors"] == [
        {"field": "body.items", "reason": "items add up to 59.80 USD but the amount is 50.00 USD"}
    ]
    unknown = await profile.client.post(
        f"/v1/customers/{uuid.uuid4()}/purchases", json=order(), headers=WRITER
    )
    assert unknown.status_code == 404


async def test_purchases_are_listed_newest_first_with_a_cursor(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/purchases"
    for day in (1, 3, 2):
        await profile.client.post(
            url, json=order(items=[], occurred_at=f"2024-01-0{day}T00:00:00Z"), headers=WRITER
        )
    first = (await profile.client.get(url, params={"limit": 2}, headers=READER)).json()
    rest = (
        await profile.client.get(
            url, params={"limit": 2, "cursor": first["next_cursor"]}, headers=READER
        )
    ).json()
    days = [p["occurred_at"][:10] for p in first["items"] + rest["items"]]
    assert days == ["2024-01-03", "2024-01-02", "2024-01-01"]
    assert rest["next_cursor"] is None


async def test_refunds_never_exceed_what_was_paid(profile: Profile) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    body = order()
    await profile.client.post(base + "/purchases", json=body, headers=WRITER)
    refund = {
        "order_id": body["order_id"],
        "currency": "USD",
        "refunded_at": "2024-05-02T00:00:00Z",
    }
    first = await profile.client.post(
        base + "/refunds", json={**refund, "amount": "40.00", "reason": "damaged"}, headers=WRITER
    )
    assert first.status_code == 201, first.text
    assert first.json()["refunded_total"] == "40.00"
    too_much = await profile.client.post(
        base + "/refunds", json={**refund, "amount": "19.81"}, headers=WRITER
    )
    assert too_much.status_code == 422
    assert too_much.json()["refundable"] == "19.80"
    assert "paid 59.80, already refunded 40.00, so at most 19.80 USD" in too_much.json()["detail"]
    rest = await profile.client.post(
        base + "/refunds", json={**refund, "amount": "19.80"}, headers=WRITER
    )
    assert rest.status_code == 201 and rest.json()["refunded_total"] == "59.80"
    other = await profile.register()
    foreign = await profile.client.post(
        f"/v1/customers/{other['id']}/refunds", json={**refund, "amount": "1.00"}, headers=WRITER
    )
    assert foreign.status_code == 404
    events = await read_events(
        profile.bootstrap,
        topics.PURCHASES,
        subject=customer["id"],
        want=2,
        types={ev.PURCHASE_REFUNDED},
    )
    assert [(e["data"]["amount"], e["data"]["refunded_total"]) for e in events] == [
        ("40.00", "40.00"),
        ("19.80", "59.80"),
    ]
    assert events[0]["data"]["order_amount"] == "59.80"


async def test_concurrent_refunds_cannot_overdraw(profile: Profile) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    body = order(amount="10.00", items=[])
    await profile.client.post(base + "/purchases", json=body, headers=WRITER)
    refund = {"order_id": body["order_id"], "currency": "USD", "amount": "6.00"}
    answers = await asyncio.gather(
        *(profile.client.post(base + "/refunds", json=refund, headers=WRITER) for _ in range(3))
    )
    assert sorted(a.status_code for a in answers) == [201, 422, 422]


async def test_refund_retry_with_idempotency_key_refunds_once(profile: Profile) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    body = order(amount="10.00", items=[])
    await profile.client.post(base + "/purchases", json=body, headers=WRITER)
    headers = {**WRITER, "Idempotency-Key": uuid.uuid4().hex}
    refund = {"order_id": body["order_id"], "currency": "USD", "amount": "6.00"}
    first = await profile.client.post(base + "/refunds", json=refund, headers=headers)
    second = await profile.client.post(base + "/refunds", json=refund, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["refunded_total"] == "6.00"


async def test_interactions_are_recorded_and_listed(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/interactions"
    for minute, direction in ((1, "inbound"), (2, "outbound")):
        response = await profile.client.post(
            url,
            json={
                "channel": "Phone",
                "direction": direction,
                "summary": f"call {minute}",
                "occurred_at": f"2024-05-01T10:0{minute}:00Z",
            },
            headers=WRITER,
        )
        assert response.status_code == 201, response.text
        assert response.json()["recorded_by"] == "clerk"
    listed = (await profile.client.get(url, headers=READER)).json()["items"]
    assert [(i["summary"], i["channel"]) for i in listed] == [
        ("call 2", "phone"),
        ("call 1", "phone"),
    ]
    bad = await profile.client.post(
        url, json={"channel": "phone", "direction": "sideways", "summary": "x"}, headers=WRITER
    )
    assert bad.status_code == 422


async def test_an_interaction_recorded_during_an_erasure_does_not_outlive_it(
    profile: Profile,
) -> None:
    """An interaction's summary is free text about the person: erasure deletes them. One being
    recorded while the customer is erased either lands first (and is deleted) or sees the
    erasure (404); it never slips in behind the erasure's delete."""
    customer = await profile.register()
    customer_id = uuid.UUID(customer["id"])
    key = advisory_key(f"customer:{customer_id}")
    async with transaction(session_factory(profile.engine)) as session:
        await service.record_interaction(
            session,
            customer_id=customer_id,
            data=InteractionCreate(
                channel="phone", direction=InteractionDirection.INBOUND, summary="Jane rang"
            ),
            recorded_by="clerk",
            settings=profile.settings,
            now=datetime.now(UTC),
        )
        erasure = asyncio.create_task(
            profile.client.delete(f"/v1/customers/{customer_id}", headers=WRITER)
        )

        async def erased_or_waiting() -> bool | None:
            return erasure.done() or await waiting_for_advisory_lock(profile.engine, key)

        await eventually(erased_or_waiting, timeout=15, what="the erasure ended or waiting")
    assert (await erasure).status_code == 204
    left = await rows(
        profile.engine, "SELECT summary FROM interactions WHERE customer_id = :c", c=customer_id
    )
    assert left == []
