"""The scoring service running in-process on the session's PostgreSQL and Kafka, with a
FixedClock, and a simulated customer base (BG/NBD purchases, Gamma-Gamma values) fed to it
as events and recomputed once, so that there is a fitted model to score against."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import auth, eventually, running, skip_history

from services.scoring.config import ScoringSettings
from services.scoring.handlers import HANDLERS
from services.scoring.main import create_app
from shared.clock import FixedClock
from shared.devstack import Broker
from shared.events import CloudEvent, new_event, topics
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.registry import topic_for

READER = auth("scores:read", subject="analyst")
ADMIN = auth("scores:read", "scores:admin", subject="value-admin")
# Business "now" of the tests: the seeded purchase histories end here.
T0 = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
CATEGORIES = ("books", "music", "garden", "kitchen", "toys", "sports")


def purchase_event(
    customer_id: uuid.UUID,
    at: datetime,
    amount: Decimal | str,
    *,
    categories: Sequence[str] = ("books",),
    currency: str = "USD",
    purchase_id: uuid.UUID | None = None,
) -> CloudEvent[Any]:
    amount = Decimal(amount)
    items = [
        p.PurchaseItem(
            sku=f"sku-{c}",
            category=c,
            quantity=1,
            unit_price=(amount / len(categories)).quantize(Decimal("0.01")),
        )
        for c in categories
    ]
    return new_event(
        type=ev.PURCHASE_RECORDED,
        source="/crm/profile",
        subject=customer_id,
        time=at,
        data=p.PurchaseRecorded(
            customer_id=customer_id,
            purchase_id=purchase_id or uuid.uuid4(),
            order_id=f"order-{uuid.uuid4().hex[:12]}",
            amount=amount,
            currency=currency,
            items=items,
        ),
    )


@dataclass
class Scoring:
    client: httpx.AsyncClient
    settings: ScoringSettings
    engine: AsyncEngine
    bootstrap: str
    clock: FixedClock
    producer: AIOKafkaProducer
    population: list[uuid.UUID] = field(default_factory=list)
    seeded_run: dict[str, Any] = field(default_factory=dict)

    async def publish(self, *events: CloudEvent[Any]) -> None:
        for event in events:
            await self.producer.send(
                ev.topic_for(event.type), value=event.to_bytes(), key=event.subject.encode()
            )
        await self.producer.flush()

    async def value(self, customer_id: uuid.UUID) -> dict[str, Any] | None:
        response = await self.client.get(f"/v1/customers/{customer_id}/value", headers=READER)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def value_when(
        self,
        customer_id: uuid.UUID,
        condition: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 20.0,
        what: str = "value",
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            value = await self.value(customer_id)
            return value if value is not None and condition(value) else None

        return await eventually(probe, timeout=timeout, interval=0.02, what=what)

    async def recompute(self, *, as_of: datetime, time_unit: str = "day") -> dict[str, Any]:
        response = await self.client.post(
            "/v1/value/recompute",
            json={"as_of": as_of.isoformat(), "time_unit": time_unit},
            headers=ADMIN,
        )
        assert response.status_code == 202, response.text
        return await self.run_finished(response.headers["Location"])

    async def run_finished(self, location: str, timeout: float = 120.0) -> dict[str, Any]:
        async def finished() -> dict[str, Any] | None:
            run = (await self.client.get(location, headers=READER)).json()
            return run if run["status"] in ("succeeded", "failed") else None

        run = await eventually(finished, timeout=timeout, interval=0.1, what="recompute done")
        assert run["status"] == "succeeded", run
        return run

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(statement), params)).all())

    async def _value_chunks(self, timeout: float) -> AsyncIterator[list[dict[str, Any]]]:
        """The documents on crm.value.v1 from the beginning, a fetch at a time, until the time is
        up (or the caller stops asking)."""
        consumer = AIOKafkaConsumer(
            topics.VALUE,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                fetched = await consumer.getmany(timeout_ms=200)
                yield [orjson.loads(r.value) for records in fetched.values() for r in records]
        finally:
            await consumer.stop()

    async def relayed(self, event_ids: set[str], *, timeout: float = 20.0) -> set[str]:
        """Which of these event ids are on crm.value.v1 (once all came or the time is up)."""
        found: set[str] = set()
        chunks = self._value_chunks(timeout)
        async for documents in chunks:
            found |= {d["id"] for d in documents} & event_ids
            if found == event_ids:
                break
        await chunks.aclose()
        return found

    async def value_events(
        self, customer_id: uuid.UUID, *, want: int, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Value events about one customer on crm.value.v1 (from the beginning), once `want` came."""
        found: list[dict[str, Any]] = []
        chunks = self._value_chunks(timeout)
        async for documents in chunks:
            found += [d for d in documents if d["subject"] == str(customer_id)]
            if len(found) >= want:
                break
        await chunks.aclose()
        return found


def simulate_histories(
    rng: np.random.Generator, n: int, *, until: datetime
) -> dict[uuid.UUID, list[tuple[datetime, Decimal, tuple[str, ...]]]]:
    """Purchase histories drawn from the models' own processes (daily rates, money in USD):
    rate ~ Gamma(0.9, rate 25 days), dropout ~ Beta(0.8, 3) after each repeat purchase,
    values ~ Gamma(4, nu) with nu ~ Gamma(3, rate 60); first purchases spread over a year."""
    histories = {}
    for _ in range(n):
        customer_id = uuid.uuid4()
        rate = rng.gamma(0.9, 1 / 25)
        dropout = rng.beta(0.8, 3.0)
        spend_rate = rng.gamma(3.0, 1 / 60)
        age = rng.uniform(20, 365)
        times = [0.0]
        for _ in range(200):  # bounded: a customer buys at most 200 times
            gap = rng.exponential(1 / rate)
            if times[-1] + gap > age:
                break
            times.append(times[-1] + gap)
            if rng.random() < dropout:
                break
        start = until - timedelta(days=age)
        preferred = tuple(rng.choice(CATEGORIES, size=rng.integers(1, 4), replace=False))
        histories[customer_id] = [
            (
                start + timedelta(days=t),
                Decimal(f"{max(rng.gamma(4.0, 1 / spend_rate), 1.0):.2f}"),
                (str(rng.choice(preferred)),),
            )
            for t in times
        ]
    return histories


@pytest.fixture(scope="package")
async def scoring(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> AsyncIterator[Scoring]:
    # Nightly recomputes stay out of the way: tests request theirs explicitly.
    settings = service_settings(
        "scoring", consumer_batch_size=500, nightly_recompute=False, recompute_poll_seconds=0.2
    )
    clock = FixedClock(T0)
    # The fits must see the simulated population only, not earlier suites' purchases.
    await skip_history(
        kafka_broker.bootstrap_servers, "scoring", sorted({topic_for(t) for t in HANDLERS})
    )
    app = create_app(settings=settings, configure_logs=False, clock=clock)
    engine = create_async_engine(settings.database_url, pool_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        async with running(app) as client:
            service = Scoring(
                client, settings, engine, kafka_broker.bootstrap_servers, clock, producer
            )
            await _seed(service)
            yield service
    finally:
        await producer.stop()
        await engine.dispose()


async def _seed(service: Scoring) -> None:
    histories = simulate_histories(np.random.default_rng(2025), 250, until=T0 - timedelta(days=1))
    events = [
        purchase_event(customer_id, at, amount, categories=categories)
        for customer_id, history in histories.items()
        for at, amount, categories in history
    ]
    events.sort(key=lambda event: event.time)
    await service.publish(*events)
    ids = list(histories)

    async def ingested() -> bool:
        rows = await service.sql(
            "SELECT count(*) FROM purchases WHERE customer_id = ANY(:ids)", ids=ids
        )
        return bool(rows[0][0] == len(events))

    await eventually(ingested, timeout=120, what=f"{len(events)} seeded purchases ingested")
    service.seeded_run = await service.recompute(as_of=T0)
    service.population = ids
