"""Driving the lifecycle service from the outside: events in on Kafka, HTTP and Kafka out."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import auth, eventually

from services.lifecycle.config import LifecycleSettings
from shared.clock import FixedClock
from shared.events import CloudEvent, new_event, topics
from shared.events import payloads as p
from shared.events import registry as ev

READER = auth("lifecycle:read", subject="analyst")
ADMIN = auth("lifecycle:read", "lifecycle:admin", subject="ops-1")
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


@dataclass
class Lifecycle:
    client: httpx.AsyncClient
    settings: LifecycleSettings
    engine: AsyncEngine
    bootstrap: str
    clock: FixedClock
    producer: AIOKafkaProducer

    # --- events in --------------------------------------------------------------------

    async def publish(self, event: CloudEvent[Any]) -> CloudEvent[Any]:
        await self.producer.send_and_wait(
            ev.topic_for(event.type), value=event.to_bytes(), key=event.subject.encode()
        )
        return event

    async def register(self, at: datetime) -> uuid.UUID:
        customer_id = uuid.uuid4()
        await self.registration(customer_id, at)
        return customer_id

    async def registration(self, customer_id: uuid.UUID, at: datetime) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.CUSTOMER_REGISTERED,
                source="/crm/profile",
                subject=customer_id,
                time=at,
                data=p.CustomerRegistered(customer_id=customer_id, kind=p.CustomerKind.person),
            )
        )

    async def purchase(
        self,
        customer_id: uuid.UUID,
        at: datetime,
        *,
        order_id: str | None = None,
        amount: str = "49.90",
    ) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.PURCHASE_RECORDED,
                source="/crm/profile",
                subject=customer_id,
                time=at,
                data=p.PurchaseRecorded(
                    customer_id=customer_id,
                    purchase_id=uuid.uuid4(),
                    order_id=order_id or f"ord-{uuid.uuid4().hex[:10]}",
                    amount=Decimal(amount),
                    currency="EUR",
                ),
            )
        )

    async def refund(
        self, customer_id: uuid.UUID, order_id: str, at: datetime, *, total: str, order_amount: str
    ) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.PURCHASE_REFUNDED,
                source="/crm/profile",
                subject=customer_id,
                time=at,
                data=p.PurchaseRefunded(
                    customer_id=customer_id,
                    purchase_id=uuid.uuid4(),
                    order_id=order_id,
                    refund_id=uuid.uuid4(),
                    amount=Decimal(total),
                    refunded_total=Decimal(total),
                    order_amount=Decimal(order_amount),
                    currency="EUR",
                ),
            )
        )

    async def complaint_opened(
        self, customer_id: uuid.UUID, complaint_id: uuid.UUID, at: datetime, severity: str = "high"
    ) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.COMPLAINT_OPENED,
                source="/crm/complaints",
                subject=customer_id,
                time=at,
                data=p.ComplaintOpened(
                    complaint_id=complaint_id,
                    customer_id=customer_id,
                    severity=p.Severity(severity),
                    channel=p.ComplaintChannel.phone,
                    category=p.ComplaintCategory.delivery,
                    first_response_due=at + timedelta(hours=4),
                    resolution_due=at + timedelta(hours=72),
                ),
            )
        )

    async def complaint_closed(
        self,
        customer_id: uuid.UUID,
        complaint_id: uuid.UUID,
        at: datetime,
        satisfaction: int | None,
        severity: str = "high",
    ) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.COMPLAINT_CLOSED,
                source="/crm/complaints",
                subject=customer_id,
                time=at,
                data=p.ComplaintClosed(
                    complaint_id=complaint_id,
                    customer_id=customer_id,
                    severity=p.Severity(severity),
                    satisfaction=satisfaction,
                ),
            )
        )

    async def erased(self, customer_id: uuid.UUID, at: datetime) -> CloudEvent[Any]:
        return await self.publish(
            new_event(
                type=ev.CUSTOMER_ERASED,
                source="/crm/profile",
                subject=customer_id,
                time=at,
                data=p.CustomerErased(customer_id=customer_id),
            )
        )

    # --- HTTP and state out -----------------------------------------------------------

    async def lifecycle(self, customer_id: uuid.UUID) -> dict[str, Any] | None:
        response = await self.client.get(f"/v1/customers/{customer_id}/lifecycle", headers=READER)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_for(
        self, customer_id: uuid.UUID, stage: str, *, changes: int | None = None, timeout: float = 20
    ) -> dict[str, Any]:
        """The customer's lifecycle once in ``stage`` (with ``changes`` transitions, if given)."""

        async def probe() -> dict[str, Any] | None:
            body = await self.lifecycle(customer_id)
            if body is None or body["stage"] != stage:
                return None
            if changes is not None and len(body["history"]) != changes:
                return None
            return body

        return await eventually(
            probe, timeout=timeout, interval=0.02, what=f"{customer_id} {stage}"
        )

    async def evaluate(self, as_of: datetime) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/lifecycle/evaluate", json={"as_of": as_of.isoformat()}, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def inbox_has(self, *events: CloudEvent[Any]) -> bool:
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    text("SELECT count(*) FROM inbox WHERE event_id = ANY(:ids)"),
                    {"ids": [e.id for e in events]},
                )
            ).scalar_one()
        return bool(found == len(events))

    async def processed(self, *events: CloudEvent[Any]) -> None:
        await eventually(lambda: self.inbox_has(*events), timeout=20, what="events processed")

    async def outbox_empty(self) -> bool:
        async with self.engine.connect() as conn:
            return bool((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one() == 0)

    async def stage_changed_events(
        self, customer_id: uuid.UUID, *, want: int, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """crm.lifecycle.stage_changed.v1 events of one customer on Kafka, from the beginning."""
        consumer = AIOKafkaConsumer(
            topics.LIFECYCLE,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        found: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            grace_until: float | None = None
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        assert record.value is not None
                        event = orjson.loads(record.value)
                        if event["subject"] == str(customer_id):
                            found.append(event)
                if len(found) >= want:
                    grace_until = grace_until or time.monotonic() + 0.5
                    if time.monotonic() > grace_until:
                        break
        finally:
            await consumer.stop()
        return found


async def caught_up(app: FastAPI) -> bool:
    """The service's consumer has a position at the end of every partition it was given."""
    runners = app.state.runtime.runners
    if not runners:
        return False
    consumer = runners[0].consumer
    assigned = consumer.assignment()
    if not assigned:
        return False
    try:
        ends = await consumer.end_offsets(list(assigned))
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
    except KafkaError:  # a rebalance took partitions away meanwhile: ask again
        return False
    return True


def moves(lifecycle: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    return [(t["from_stage"], t["to_stage"], t["reason"]) for t in lifecycle["history"]]
