"""The complaints service running in-process on the session's PostgreSQL and Kafka, on a
FixedClock that each test sets (business time is what the rules see)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import auth, eventually, running

from services.complaints.config import ComplaintsSettings
from services.complaints.main import create_app
from shared.clock import FixedClock
from shared.devstack import Broker
from shared.events import CloudEvent, new_event, topics
from shared.events import payloads as p
from shared.events import registry as ev

WRITER = auth("complaints:read", "complaints:write", "pii:read", subject="agent-7")
READER = auth("complaints:read", subject="viewer")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@dataclass
class ComplaintsService:
    client: httpx.AsyncClient
    settings: ComplaintsSettings
    engine: AsyncEngine
    bootstrap: str
    clock: FixedClock
    producer: AIOKafkaProducer

    async def publish(self, event: CloudEvent[Any]) -> None:
        await self.producer.send_and_wait(
            ev.topic_for(event.type), value=event.to_bytes(), key=event.subject.encode()
        )

    async def customer(self, *, tier: p.Tier | None = None, at: datetime = T0) -> uuid.UUID:
        """A customer the service knows (registered on Kafka), with a value tier if given."""
        customer_id = uuid.uuid4()
        await self.publish(
            new_event(
                type=ev.CUSTOMER_REGISTERED,
                source="/crm/profile",
                subject=customer_id,
                time=at,
                data=p.CustomerRegistered(customer_id=customer_id, kind=p.CustomerKind.person),
            )
        )
        if tier is not None:
            await self.publish(
                new_event(
                    type=ev.TIER_CHANGED,
                    source="/crm/scoring",
                    subject=customer_id,
                    time=at,
                    # from_tier set: to_bytes() drops None, and the payload requires the field
                    data=p.TierChanged(
                        customer_id=customer_id, from_tier=p.Tier.small, to_tier=tier, score=97.0
                    ),
                )
            )
        await eventually(
            lambda: self._projected(customer_id, tier),
            timeout=30,
            what=f"customer {customer_id} known",
        )
        return customer_id

    async def _projected(self, customer_id: uuid.UUID, tier: p.Tier | None) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT known, tier FROM known_customers WHERE customer_id = :id"),
                    {"id": customer_id},
                )
            ).first()
        return row is not None and row.known and row.tier == (tier.value if tier else None)

    async def open(self, customer_id: uuid.UUID, **fields: Any) -> dict[str, Any]:
        body = {
            "customer_id": str(customer_id),
            "channel": "email",
            "category": "delivery",
            "severity": "medium",
            "subject": "Parcel never arrived",
            "description": "Ordered on Monday, tracking shows nothing. Call me on +44 20 7946 0018.",
            **fields,
        }
        response = await self.client.post("/v1/complaints", json=body, headers=WRITER)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def step(
        self,
        complaint_id: str,
        action: str,
        body: dict[str, Any] | None = None,
        *,
        expect: int = 200,
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"/v1/complaints/{complaint_id}/{action}", json=body or {}, headers=WRITER
        )
        assert response.status_code == expect, response.text
        return dict(response.json())

    async def evaluate(self, as_of: datetime) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/complaints/sla/evaluate", json={"as_of": as_of.isoformat()}, headers=WRITER
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def events_of(
        self, complaint_id: str, *, want: int, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """CloudEvents of one complaint on crm.complaints.v1 (from the beginning), once `want` arrived,
        plus whatever else arrives within a short grace period (to see duplicates)."""
        consumer = AIOKafkaConsumer(
            topics.COMPLAINTS,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        found: list[dict[str, Any]] = []

        async def drain(timeout_ms: int) -> None:
            for records in (await consumer.getmany(timeout_ms=timeout_ms)).values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event["data"].get("complaint_id") == complaint_id:
                        found.append(event)

        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and len(found) < want:
                await drain(200)
            grace = time.monotonic() + 1.0
            while time.monotonic() < grace:
                await drain(200)
        finally:
            await consumer.stop()
        return found


@pytest.fixture(scope="package")
async def complaints(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> AsyncIterator[ComplaintsService]:
    # The scheduled checker is driven explicitly in its own test; here it stays out of the way.
    settings = service_settings(
        "complaints", consumer_batch_size=200, sla_check_interval_seconds=3600
    )
    clock = FixedClock(T0)
    app = create_app(settings=settings, configure_logs=False, clock=clock)
    engine = create_async_engine(settings.database_url, pool_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        async with running(app) as client:
            yield ComplaintsService(
                client, settings, engine, kafka_broker.bootstrap_servers, clock, producer
            )
    finally:
        await producer.stop()
        await engine.dispose()
