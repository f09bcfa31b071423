"""`crm replay <service>` (shared.messaging.replay.rebuild) and the service's outbox: the events
its handlers re-derive while replaying never reach the outbox, whatever happens to the replay,
and the events the service's API writes meanwhile are published as usual."""

from __future__ import annotations

import asyncio
import sys
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from integration.shared.messaging_db import messaging_database
from sqlalchemy import Column, Integer, MetaData, Table, text
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import make_metadata, session_factory
from shared.devstack import Broker, PostgresServer
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import HandlerContext
from shared.messaging.kafka import ensure_topics
from shared.messaging.outbox import COPY_THRESHOLD, add_events
from shared.messaging.replay import rebuild
from shared.messaging.tables import messaging_tables
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration

SERVICE = "msgreplay"
METADATA: MetaData = make_metadata()
TABLES = messaging_tables(METADATA)
REPLAYED = Table(
    "replayed",
    METADATA,
    Column("customer_id", UUID(as_uuid=True), primary_key=True),
    Column("purchases", Integer, nullable=False),
)


def purchase(customer: uuid.UUID, order: str) -> CloudEvent[Any]:
    return new_event(
        type=ev.PURCHASE_RECORDED,
        source="/crm/profile",
        subject=customer,
        time=datetime.now(UTC),
        data=p.PurchaseRecorded(
            customer_id=customer,
            purchase_id=uuid.uuid4(),
            order_id=order,
            amount=Decimal("10.00"),
            currency="USD",
        ),
    )


class FakeService:
    """`services.msgreplay.handlers` and `.models`: a projection that counts purchases and
    re-derives one event per purchase; `during` runs before each event is applied."""

    def __init__(self, topic: str) -> None:
        self.seen = 0
        self.during: Any = None
        self.fanout = 1  # events re-derived per event applied
        handlers = types.ModuleType(f"services.{SERVICE}.handlers")
        handlers.HANDLERS = {ev.PURCHASE_RECORDED: self.handle}  # type: ignore[attr-defined]
        handlers.REPLAY_TOPICS = [topic]  # type: ignore[attr-defined]
        models = types.ModuleType(f"services.{SERVICE}.models")
        models.REPLAY_TABLES = ["replayed"]  # type: ignore[attr-defined]
        models.MESSAGING = TABLES  # type: ignore[attr-defined]
        self.modules = {handlers.__name__: handlers, models.__name__: models}

    async def handle(self, ctx: HandlerContext, event: CloudEvent[Any]) -> None:
        self.seen += 1
        if self.during is not None:
            await self.during(self.seen)
        stmt = insert(REPLAYED).values(customer_id=event.data.customer_id, purchases=1)
        await ctx.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[REPLAYED.c.customer_id],
                set_={"purchases": REPLAYED.c.purchases + 1},
            )
        )
        for n in range(self.fanout):
            ctx.emit(purchase(event.data.customer_id, f"derived-{self.seen}-{n}"))


@pytest.fixture
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    async with messaging_database(postgres_server, METADATA, prefix="replay") as engine:
        yield engine


@pytest.fixture
async def service(
    kafka_broker: Broker, engine: AsyncEngine
) -> AsyncIterator[tuple[FakeService, ServiceSettings, list[CloudEvent[Any]]]]:
    """The fake service, its settings (one event per batch) and the three events on its topic."""
    settings = ServiceSettings(
        service_name=SERVICE,
        database_url=engine.url.render_as_string(hide_password=False),
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        kafka_enable_idempotence="false",
        consumer_batch_size=1,
    )
    topic = f"crm.test-replay-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, {topic: 1})
    customer = uuid.uuid4()
    events = [purchase(customer, f"o-{n}") for n in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, event.to_bytes(), key=str(customer).encode())
    finally:
        await producer.stop()
    fake = FakeService(topic)
    with _installed(fake.modules):
        yield fake, settings, events


class _installed:
    def __init__(self, modules: dict[str, types.ModuleType]) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        sys.modules.update(self.modules)

    def __exit__(self, *exc: object) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)


async def outbox_ids(engine: AsyncEngine) -> list[uuid.UUID]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT event_id FROM outbox ORDER BY id"))).scalars())


async def test_events_the_api_writes_during_a_replay_stay_in_the_outbox(
    service: tuple[FakeService, ServiceSettings, list[CloudEvent[Any]]], engine: AsyncEngine
) -> None:
    """The replay holds the relay's lock, not the API: a purchase recorded over HTTP while the
    projections are rebuilt must still be published when the workers are back."""
    fake, settings, events = service
    api_event = purchase(uuid.uuid4(), "recorded-over-http")

    async def api_writes(seen: int) -> None:
        if seen == 2:  # its own transaction, committed while the replay works
            async with session_factory(engine)() as session, session.begin():
                await add_events(session, TABLES, [api_event])

    fake.during = api_writes
    summary = await rebuild(SERVICE, settings, progress=lambda _: None)

    assert summary["messages"] == len(events)
    assert summary["rederived_events_dropped"] == len(events)
    assert await outbox_ids(engine) == [api_event.id]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT purchases FROM replayed"))).scalar_one() == 3


async def test_a_replay_stopped_half_way_leaves_nothing_rederived_in_the_outbox(
    service: tuple[FakeService, ServiceSettings, list[CloudEvent[Any]]], engine: AsyncEngine
) -> None:
    """Ctrl-C (the task cancelled) after two of the three batches: their re-derived events are
    not the service's to publish (the next worker would send them as new events, with new ids,
    and `crm replay` would refuse to run again until it had)."""
    fake, settings, _ = service

    async def interrupted(seen: int) -> None:
        if seen == 3:
            raise asyncio.CancelledError

    fake.during = interrupted
    with pytest.raises(asyncio.CancelledError):
        await rebuild(SERVICE, settings, progress=lambda _: None)

    assert await outbox_ids(engine) == []
    fake.during = None  # run again, to the end
    summary = await rebuild(SERVICE, settings, progress=lambda _: None)
    assert summary["messages"] == 3
    assert await outbox_ids(engine) == []


async def test_rederived_events_copied_in_bulk_are_diverted_too(
    service: tuple[FakeService, ServiceSettings, list[CloudEvent[Any]]], engine: AsyncEngine
) -> None:
    """A batch that emits many events writes them with COPY (a recompute's path)."""
    fake, settings, events = service
    fake.fanout = COPY_THRESHOLD
    summary = await rebuild(SERVICE, settings, progress=lambda _: None)
    assert summary["rederived_events_dropped"] == len(events) * COPY_THRESHOLD
    assert await outbox_ids(engine) == []
