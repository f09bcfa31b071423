"""The outbox relay recovers from a broken producer and from a broker restart under load, on the
real broker and PostgreSQL, without losing or reordering events.

Found by the chaos suite: after a broker restart the relay's idempotent producer failed every
batch with OutOfOrderSequenceNumber and never recovered (its producer id and sequence numbers
stay wrong for good). The relay now replaces a producer that is broken for good.

Each test publishes to a topic of its own, so that what it reads back is only what it wrote:
per key, the first delivery of every row, in outbox id order (repeats are allowed: the
consumers' inbox absorbs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from integration.shared.messaging_db import messaging_database
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs
from support import eventually

from shared.db import asyncpg_dsn, make_metadata
from shared.devstack import Broker, PostgresServer, create_topics_blocking
from shared.messaging.kafka import start_producer
from shared.messaging.outbox import OutboxRelay
from shared.messaging.tables import messaging_tables
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration

METADATA: MetaData = make_metadata()
messaging_tables(METADATA)
PARTITIONS = 3


@pytest.fixture(scope="module")
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    async with messaging_database(postgres_server, METADATA, prefix="relay") as engine:
        yield engine


@pytest.fixture
def settings(kafka_broker: Broker, engine: AsyncEngine) -> ServiceSettings:
    if not kafka_broker.supports_idempotence:
        pytest.skip(f"{kafka_broker!r} has no idempotent producers; these tests need Apache Kafka")
    return ServiceSettings(
        service_name=f"relaytest-{uuid.uuid4().hex[:6]}",
        database_url=engine.url.render_as_string(hide_password=False),
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        kafka_enable_idempotence="true",
    )


@pytest.fixture
def topic(kafka_broker: Broker) -> str:
    name = f"test.relay.{uuid.uuid4().hex[:8]}"
    create_topics_blocking(kafka_broker.bootstrap_servers, {name: PARTITIONS})
    return name


class Outbox:
    """Writes numbered rows per key, in order, as a use case would (one transaction each)."""

    def __init__(self, engine: AsyncEngine, topic: str) -> None:
        self.engine = engine
        self.topic = topic
        self.written: dict[str, list[int]] = defaultdict(list)

    async def write(self, key: str, count: int = 1) -> None:
        rows = []
        for _ in range(count):
            seq = len(self.written[key])
            self.written[key].append(seq)
            rows.append(
                {
                    "event_id": uuid.uuid4(),
                    "topic": self.topic,
                    "key": key,
                    "payload": orjson.dumps({"key": key, "seq": seq}),
                }
            )
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO outbox (event_id, event_type, topic, key, payload) "
                    "VALUES (:event_id, 'test.relay.v1', :topic, :key, :payload)"
                ),
                rows,
            )

    async def size(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one())

    async def drained(self) -> bool:
        return await self.size() == 0


async def delivered(bootstrap_servers: str, topic: str) -> dict[str, list[int]]:
    """{key: [seq, ...]} in partition order, every record of the topic (repeats included)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        seen: dict[str, list[int]] = defaultdict(list)
        for _ in range(600):
            if all([await consumer.position(tp) >= end[tp] for tp in partitions]):
                return seen
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    assert record.value is not None
                    body = orjson.loads(record.value)
                    seen[body["key"]].append(body["seq"])
        raise AssertionError(f"{topic} not read to its end")
    finally:
        await consumer.stop()


def assert_complete_and_in_order(written: dict[str, list[int]], seen: dict[str, list[int]]) -> None:
    """Every row delivered; per key, first deliveries in the order the rows were written."""
    assert set(seen) == set(written)
    for key, sequence in written.items():
        first_seen = list(dict.fromkeys(seen[key]))
        assert first_seen == sequence, f"{key}: {first_seen[:20]}... != {sequence[:20]}..."


@contextlib.asynccontextmanager
async def running_relay(
    settings: ServiceSettings, factory: Callable[[], Awaitable[AIOKafkaProducer]]
) -> AsyncIterator[OutboxRelay]:
    stop = asyncio.Event()
    relay = OutboxRelay(
        service=settings.service_name,
        dsn=asyncpg_dsn(settings.database_url),
        producer_factory=factory,
        batch_size=200,
        poll_interval=0.5,
    )
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


class CountingFactory:
    """start_producer, remembering every producer it made."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.made: list[AIOKafkaProducer] = []

    async def __call__(self) -> AIOKafkaProducer:
        producer = await start_producer(self.settings)
        self.made.append(producer)
        return producer


async def test_a_producer_out_of_sequence_is_replaced_and_nothing_is_lost_or_reordered(
    settings: ServiceSettings, engine: AsyncEngine, topic: str
) -> None:
    outbox = Outbox(engine, topic)
    factory = CountingFactory(settings)
    keys = [f"customer-{i}" for i in range(6)]
    with capture_logs() as logs:
        async with running_relay(settings, factory) as relay:
            for key in keys:
                await outbox.write(key, 5)
            await eventually(outbox.drained, timeout=60, what="first rows published")
            assert relay.producer is not None and len(factory.made) == 1
            # What a broker restart did to the chaos run: the broker and the producer no longer
            # agree on the next sequence number of the partitions (here: the producer is ahead).
            broken = relay.producer
            txn = broken._txn_manager
            for partition in range(PARTITIONS):
                txn.increment_sequence_number(TopicPartition(topic, partition), 7)
            for key in keys:
                await outbox.write(key, 10)
            await eventually(outbox.drained, timeout=90, what="rows published after the break")
            assert relay.producers_replaced >= 1
            assert relay.producer is not broken and len(factory.made) >= 2
            for key in keys:  # the fresh producer carries on
                await outbox.write(key, 3)
            await eventually(outbox.drained, timeout=60, what="rows published afterwards")
    failures = [entry for entry in logs if entry["event"] == "outbox.publish_failed"]
    assert any("OutOfOrderSequenceNumber" in entry["error"] for entry in failures), failures
    assert all(entry["replace_producer"] for entry in failures)
    assert_complete_and_in_order(
        outbox.written, await delivered(settings.kafka_bootstrap_servers, topic)
    )


async def test_broker_restart_under_load_loses_and_reorders_nothing(
    settings: ServiceSettings, engine: AsyncEngine, topic: str, kafka_broker: Broker
) -> None:
    if not (
        kafka_broker.persistent and kafka_broker.restartable and hasattr(kafka_broker, "start")
    ):
        pytest.skip(f"{kafka_broker!r} cannot be stopped and started keeping its data")
    outbox = Outbox(engine, topic)
    factory = CountingFactory(settings)
    keys = [f"customer-{i}" for i in range(20)]
    writing = asyncio.Event()
    writing.set()

    async def steady_writes() -> None:
        """Rows for every key, a few per transaction, until told to stop."""
        round_ = 0
        while writing.is_set():
            key = keys[round_ % len(keys)]
            await outbox.write(key, 1 + round_ % 4)
            round_ += 1
            await asyncio.sleep(0.005)

    async with running_relay(settings, factory) as relay:
        writer = asyncio.create_task(steady_writes())
        try:
            await eventually(
                lambda: _published(relay, 300), timeout=60, what="relay publishing under load"
            )
            await asyncio.to_thread(kafka_broker.stop)
            await asyncio.sleep(3)  # rows pile up while the broker is away
            await asyncio.to_thread(kafka_broker.start)
            published = relay.published
            await eventually(
                lambda: _published(relay, published + 300),
                timeout=120,
                what="relay publishing after the restart",
            )
        finally:
            writing.clear()
            await writer
        await eventually(outbox.drained, timeout=120, what="outbox drained after the restart")
    seen = await delivered(settings.kafka_bootstrap_servers, topic)
    assert_complete_and_in_order(outbox.written, seen)
    print(
        f"wrote {sum(map(len, outbox.written.values()))} rows, read back "
        f"{sum(map(len, seen.values()))} records, producers made: {len(factory.made)}"
    )


async def _published(relay: OutboxRelay, at_least: int) -> bool:
    return relay.published >= at_least
