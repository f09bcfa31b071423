"""Orders dropped by other systems on crm.ingest.orders.v1: recorded, or dead-lettered with a reason."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from integration.profile.profile_helpers import PII_READER, Profile, produce, read_events
from sqlalchemy import text
from support import eventually, waiting_for_advisory_lock

from services.profile import domain, service
from shared.db import session_factory, transaction
from shared.errors import Conflict
from shared.events import registry as ev
from shared.events import topics
from shared.messaging.outbox import advisory_key

pytestmark = pytest.mark.integration


def ingest_order(**fields: Any) -> dict[str, Any]:
    return {
        "order_id": f"I-{uuid.uuid4().hex[:10]}",
        "amount": "25.00",
        "currency": "USD",
        "occurred_at": "2024-03-01T09:00:00Z",
        "items": [{"sku": "BOOK-1", "category": "books", "quantity": 1, "unit_price": "25.00"}],
        **fields,
    }


async def purchase_of(profile: Profile, order_id: str) -> dict[str, Any] | None:
    async with profile.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT p.customer_id, p.amount, p.origin, c.external_ref, c.email, "
                    "c.registered_at FROM purchases p JOIN customers c ON c.id = p.customer_id "
                    "WHERE p.order_id = :order_id"
                ),
                {"order_id": order_id},
            )
        ).first()
    return dict(row._mapping) if row else None


async def dead_letters(bootstrap: str, marker: str, want: int) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(
        topics.DLQ, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and len(found) < want:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.value is not None and marker.encode() in record.value:
                        found.append({k: v.decode() for k, v in record.headers})
    finally:
        await consumer.stop()
    return found


def _parsed(now: datetime, **fields: Any) -> tuple[domain.IngestOrder, domain.Purchase]:
    """An ingest order as the consumer's decoder parses it."""
    return domain.parse_ingest_order(
        orjson.dumps(ingest_order(**fields)),
        base_currency="USD",
        now=now,
        max_clock_skew=timedelta(minutes=5),
    )


async def test_order_for_a_known_customer_becomes_a_purchase(profile: Profile) -> None:
    customer = await profile.register()
    order = ingest_order(customer_id=customer["id"])
    await produce(profile.bootstrap, topics.INGEST_ORDERS, orjson.dumps(order))
    recorded = await eventually(
        lambda: purchase_of(profile, order["order_id"]), timeout=15, what="ingested purchase"
    )
    assert str(recorded["customer_id"]) == customer["id"]
    assert recorded["origin"] == "ingest"
    events = await read_events(profile.bootstrap, topics.PURCHASES, subject=customer["id"], want=1)
    assert events[0]["data"]["order_id"] == order["order_id"]
    assert events[0]["data"]["items"][0]["category"] == "books"


async def test_unknown_customer_with_external_ref_and_email_is_created(profile: Profile) -> None:
    ref = f"shop-{uuid.uuid4().hex[:8]}"
    email = f"{ref}@example.com"
    order = ingest_order(external_ref=ref, email=email.upper(), channel="Marketplace")
    # also as the data of a CloudEvent, and twice: the second is the same order again
    wrapped = {"specversion": "1.0", "type": "com.shop.order", "data": order}
    await produce(profile.bootstrap, topics.INGEST_ORDERS, orjson.dumps(wrapped), key=ref)
    await produce(profile.bootstrap, topics.INGEST_ORDERS, orjson.dumps(order), key=ref)
    recorded = await eventually(
        lambda: purchase_of(profile, order["order_id"]), timeout=15, what="ingested purchase"
    )
    assert (recorded["external_ref"], recorded["email"]) == (ref, email)
    assert recorded["registered_at"].isoformat() == "2024-03-01T09:00:00+00:00"
    customer_id = str(recorded["customer_id"])
    events = await read_events(profile.bootstrap, topics.CUSTOMERS, subject=customer_id, want=1)
    assert [e["type"] for e in events] == [ev.CUSTOMER_REGISTERED]
    assert events[0]["time"].startswith("2024-03-01T09:00:00")
    purchases = await read_events(profile.bootstrap, topics.PURCHASES, subject=customer_id, want=1)
    assert len(purchases) == 1, "the repeated order must not be recorded twice"
    # the next order of the same external_ref lands on the same customer
    follow_up = ingest_order(external_ref=ref)
    await produce(profile.bootstrap, topics.INGEST_ORDERS, orjson.dumps(follow_up), key=ref)
    again = await eventually(
        lambda: purchase_of(profile, follow_up["order_id"]), timeout=15, what="second purchase"
    )
    assert str(again["customer_id"]) == customer_id
    view = await profile.client.get(f"/v1/customers/{customer_id}/360", headers=PII_READER)
    assert view.json()["purchases"]["count"] == 2


async def test_bad_orders_go_to_the_dlq_with_the_reason(profile: Profile) -> None:
    marker = uuid.uuid4().hex
    malformed = b'{"order_id": "' + marker.encode() + b'", '
    wrong_currency = ingest_order(order_id=f"{marker}-eur", external_ref="x", currency="EUR")
    no_customer = ingest_order(order_id=f"{marker}-anon", customer_id=str(uuid.uuid4()))
    nobody = ingest_order(order_id=f"{marker}-nobody")
    for value in (
        malformed,
        orjson.dumps(wrong_currency),
        orjson.dumps(no_customer),
        orjson.dumps(nobody),
    ):
        await produce(profile.bootstrap, topics.INGEST_ORDERS, value)
    letters = await dead_letters(profile.bootstrap, marker, want=4)
    errors = sorted(letter["dlq.error"] for letter in letters)
    assert len(errors) == 4, errors
    assert all(letter["dlq.consumer.group"] == "profile-ingest" for letter in letters)
    assert all(letter["dlq.origin.topic"] == topics.INGEST_ORDERS for letter in letters)
    joined = " | ".join(errors)
    assert "not JSON" in joined
    assert "currency: must be USD, this deployment's base currency; got EUR" in joined
    assert "give at least one of customer_id, external_ref or email" in joined
    assert (
        f"unknown customer_id {no_customer['customer_id']} and no external_ref or email" in joined
    )
    for order_id in (f"{marker}-eur", f"{marker}-anon", f"{marker}-nobody"):
        assert await purchase_of(profile, order_id) is None


async def test_a_burst_of_orders_for_new_and_repeat_customers_is_all_recorded(
    profile: Profile,
) -> None:
    marker = uuid.uuid4().hex[:8]
    orders = [
        ingest_order(
            order_id=f"{marker}-{n}",
            external_ref=f"burst-{marker}-{n % 40}",
            amount="10.00",
            items=[{"sku": f"S-{n}", "quantity": 2, "unit_price": "5.00"}],  # no category
        )
        for n in range(400)
    ]
    # in the middle: the same order again, and an order nobody can be found for
    stray = ingest_order(order_id=f"{marker}-stray", customer_id=str(uuid.uuid4()))
    burst = [*orders[:200], orders[10], stray, *orders[200:]]
    producer = AIOKafkaProducer(bootstrap_servers=profile.bootstrap)
    await producer.start()
    try:
        for order in burst:
            await producer.send(
                topics.INGEST_ORDERS, orjson.dumps(order), key=order["order_id"][-1:].encode()
            )
        await producer.flush()
    finally:
        await producer.stop()

    async def counts() -> tuple[int, int] | None:
        async with profile.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT count(*), count(DISTINCT customer_id) FROM purchases "
                        "WHERE order_id LIKE :m"
                    ),
                    {"m": f"{marker}-%"},  # the stray order is not among them
                )
            ).one()
        return (row[0], row[1]) if row[0] == len(orders) else None

    assert await eventually(counts, timeout=60, what="all 400 orders recorded") == (400, 40)
    [letter] = await dead_letters(profile.bootstrap, f"{marker}-stray", want=1)
    assert "unknown customer_id" in letter["dlq.error"]


async def test_an_ingested_batch_publishes_each_new_customer_and_purchase_once(
    profile: Profile,
) -> None:
    """The batch's events go out with its writes: a registration per new customer, a purchase
    per order recorded (an order the batch repeats, or one recorded before, publishes nothing)."""
    marker = uuid.uuid4().hex[:8]
    known = await profile.register(external_ref=f"known-{marker}")
    now = datetime.now(UTC)

    def parsed(**fields: Any) -> tuple[domain.IngestOrder, domain.Purchase]:
        return _parsed(now, **fields)

    first = parsed(order_id=f"{marker}-1", external_ref=f"new-{marker}")
    orders = [
        first,
        parsed(order_id=f"{marker}-2", external_ref=f"known-{marker}"),
        first,
        parsed(order_id=f"{marker}-3", external_ref=f"new-{marker}"),
    ]

    async def ingest(batch: list[tuple[domain.IngestOrder, domain.Purchase]]) -> list[Any]:
        async with transaction(session_factory(profile.engine)) as session:
            return await service.ingest_orders(session, orders=batch)

    returned = await ingest(orders)
    assert await ingest(orders[1:2]) == []  # recorded before: nothing to publish
    new_customer = (await purchase_of(profile, f"{marker}-1") or {})["customer_id"]
    assert [e.type for e in returned] == [ev.CUSTOMER_REGISTERED, *[ev.PURCHASE_RECORDED] * 3]
    published: dict[str, list[str]] = {}
    for subject, topic, want in (
        (str(new_customer), topics.CUSTOMERS, 1),
        (str(new_customer), topics.PURCHASES, 2),
        (known["id"], topics.PURCHASES, 1),
    ):
        # One more than expected, briefly: anything beyond it would be a duplicate.
        found = await read_events(
            profile.bootstrap, topic, subject=subject, want=want + 1, timeout=3
        )
        published.setdefault(subject, []).extend(e["id"] for e in found)
    assert sorted(id_ for ids in published.values() for id_ in ids) == sorted(
        str(e.id) for e in returned
    )
    orders_published = [e.data.order_id for e in returned if e.type == ev.PURCHASE_RECORDED]
    assert orders_published == [f"{marker}-1", f"{marker}-2", f"{marker}-3"]


async def test_an_ingested_batch_waits_for_a_writer_holding_its_customer(profile: Profile) -> None:
    """A batch takes its customers' locks before it writes a purchase (so one customer's events
    leave the outbox in commit order), customers it found by their external reference included:
    while a writer holds the customer, the batch waits, and it records the orders, items
    included, once the writer ends."""
    ref = f"ERP-{uuid.uuid4().hex[:8]}"
    customer = await profile.register(external_ref=ref)
    key = advisory_key(f"customer:{customer['id']}")
    now = datetime.now(UTC)
    orders = [
        domain.parse_ingest_order(
            orjson.dumps(ingest_order(external_ref=ref)),
            base_currency="USD",
            now=now,
            max_clock_skew=timedelta(minutes=5),
        )
        for _ in range(2)
    ]

    async def ingest() -> None:
        async with transaction(session_factory(profile.engine)) as session:
            await service.ingest_orders(session, orders=orders)

    async with profile.engine.connect() as writer:
        await writer.begin()
        await writer.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        batch = asyncio.create_task(ingest())

        await eventually(
            lambda: waiting_for_advisory_lock(profile.engine, key),
            timeout=15,
            what="the batch waiting for the customer",
        )
        assert not batch.done()
        assert await purchase_of(profile, orders[0][1].order_id) is None
        await writer.rollback()
    await batch
    async with profile.engine.connect() as conn:
        recorded = (
            await conn.execute(
                text(
                    "SELECT p.customer_id, i.sku, i.quantity FROM purchases p "
                    "JOIN purchase_items i ON i.purchase_id = p.id "
                    "WHERE p.order_id = ANY(:o) ORDER BY p.order_id"
                ),
                {"o": [purchase.order_id for _, purchase in orders]},
            )
        ).all()
    assert [(str(r[0]), r[1], r[2]) for r in recorded] == [(customer["id"], "BOOK-1", 1)] * 2


async def test_a_batch_repeating_an_order_id_differently_is_refused_as_one_by_one_would(
    profile: Profile,
) -> None:
    """Within one batch, an order_id again with another amount or for another customer is the
    conflict it is across batches: the batch fails (the consumer then redoes it message by
    message, which dead-letters the culprit), instead of dropping the second order silently."""
    marker = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)

    def parsed(**fields: Any) -> tuple[domain.IngestOrder, domain.Purchase]:
        return _parsed(now, **fields)

    same_customer = {"external_ref": f"dup-{marker}"}
    for n, second in enumerate(
        [
            {**same_customer, "amount": "30.00", "items": []},
            {"external_ref": f"other-{marker}"},
        ]
    ):
        order_id = f"{marker}-{n}"
        batch = [
            parsed(order_id=order_id, **same_customer),
            parsed(order_id=order_id, **second),
        ]
        with pytest.raises(Conflict, match=order_id):
            async with transaction(session_factory(profile.engine)) as session:
                await service.ingest_orders(session, orders=batch)
        assert await purchase_of(profile, order_id) is None
    # the same order twice, as it was, is still a plain duplicate
    same = parsed(order_id=f"{marker}-same", external_ref=f"dup-{marker}")
    async with transaction(session_factory(profile.engine)) as session:
        await service.ingest_orders(session, orders=[same, same])
    assert (await purchase_of(profile, f"{marker}-same") or {})["amount"] == Decimal("25.00")
