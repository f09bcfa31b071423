"""Outbox -> Kafka -> consumer -> DB on the real broker and PostgreSQL: delivery, duplicates,
poison messages, a crash between DB commit and offset commit, and a broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from integration.shared.messaging_db import messaging_database
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, Table, Text, select, text
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import eventually, skip_history, topic_records, waiting_for_advisory_lock

from shared.db import asyncpg_dsn, make_metadata, session_factory
from shared.devstack import Broker, PostgresServer
from shared.errors import NotRetryable
from shared.events import CONTENT_TYPE, CloudEvent, new_event, topics
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging import dlq
from shared.messaging.consumer import ConsumerRunner, HandlerContext, per_event
from shared.messaging.kafka import make_consumer, partitions_of, start_producer
from shared.messaging.outbox import OutboxRelay, add_events, advisory_key
from shared.messaging.tables import messaging_tables
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration

METADATA: MetaData = make_metadata()
TABLES = messaging_tables(METADATA)
TOTALS = Table(
    "totals",
    METADATA,
    Column("customer_id", UUID(as_uuid=True), primary_key=True),
    Column("purchases", Integer, nullable=False),
    Column("orders", Text, nullable=False),
)
POISON_ORDER = "poison-order"  # the handler refuses it, as a real handler refuses bad data
REFUSED_ORDER = "refused-order"  # ... and says that trying again cannot help
TIMES_OUT_ORDER = "times-out-order"  # ... fails as if the database were out of reach, every time
# The customers for whom it does, while their test runs: later tests' groups read the whole topic
# and must not stall on it (a transient failure holds a batch that is asked to stop).
TIMING_OUT: set[uuid.UUID] = set()


class OrderRefused(NotRetryable, ValueError):
    pass


async def count_purchases(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
    if event.data.order_id == POISON_ORDER:
        raise ValueError("order cannot be applied")
    if event.data.order_id == REFUSED_ORDER:
        raise OrderRefused("no rule can use this order")
    if event.data.order_id == TIMES_OUT_ORDER and event.data.customer_id in TIMING_OUT:
        raise TimeoutError("the statement for this order timed out")
    stmt = insert(TOTALS).values(
        customer_id=event.data.customer_id, purchases=1, orders=event.data.order_id
    )
    await ctx.session.execute(
        stmt.on_conflict_do_update(
            index_elements=[TOTALS.c.customer_id],
            set_={
                "purchases": TOTALS.c.purchases + 1,
                "orders": TOTALS.c.orders + "," + stmt.excluded.orders,
            },
        )
    )


HANDLERS = {ev.PURCHASE_RECORDED: count_purchases}


@pytest.fixture(scope="module")
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    async with messaging_database(postgres_server, METADATA, prefix="messaging") as engine:
        yield engine


@pytest.fixture
def settings(
    kafka_broker: Broker, contract_topics: dict[str, int], engine: AsyncEngine
) -> ServiceSettings:
    return ServiceSettings(
        service_name="msgtest",
        database_url=engine.url.render_as_string(hide_password=False),
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        kafka_enable_idempotence="true" if kafka_broker.supports_idempotence else "false",
    )


def purchase_event(customer_id: uuid.UUID, order_id: str) -> CloudEvent[Any]:
    return new_event(
        type=ev.PURCHASE_RECORDED,
        source="/crm/profile",
        subject=customer_id,
        time=datetime.now(UTC),
        data=p.PurchaseRecorded(
            customer_id=customer_id,
            purchase_id=uuid.uuid4(),
            order_id=order_id,
            amount=Decimal("10.00"),
            currency="USD",
        ),
    )


class Worker:
    """A consumer runner of our test handler, in a background task."""

    def __init__(
        self,
        settings: ServiceSettings,
        engine: AsyncEngine,
        producer: AIOKafkaProducer,
        group: str,
        **options: Any,
    ):
        self.stop = asyncio.Event()
        self.consumer = make_consumer(settings, group_id=group, topics_=[])
        self.runner = ConsumerRunner(
            service="msgtest",
            consumer=self.consumer,
            producer=producer,
            sessions=session_factory(engine),
            tables=TABLES,
            group_id=group,
            **{"handlers": HANDLERS, "max_attempts": 2, "backoff": 0.01, **options},
        )
        self.consumer.subscribe([topics.PURCHASES], listener=self.runner.rebalance_listener())
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Worker:
        await self.consumer.start()
        self.task = asyncio.create_task(self.runner.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
        await self.consumer.stop()


async def totals(engine: AsyncEngine, customer_id: uuid.UUID) -> tuple[int, str] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(TOTALS.c.purchases, TOTALS.c.orders).where(
                    TOTALS.c.customer_id == customer_id
                )
            )
        ).first()
    return (row.purchases, row.orders) if row else None


@contextlib.asynccontextmanager
async def relay(
    settings: ServiceSettings, producer: AIOKafkaProducer, **options: Any
) -> AsyncIterator[OutboxRelay]:
    stop = asyncio.Event()
    outbox_relay = OutboxRelay(
        service="msgtest",
        dsn=asyncpg_dsn(settings.database_url),
        producer=producer,
        poll_interval=5.0,
        **options,
    )
    task = asyncio.create_task(outbox_relay.run(stop))
    try:
        yield outbox_relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def write_outbox(engine: AsyncEngine, events: list[CloudEvent[Any]]) -> None:
    async with session_factory(engine)() as session, session.begin():
        await add_events(session, TABLES, events)


async def outbox_size(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one())


async def test_outbox_to_kafka_to_consumer_to_database(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    ages_before = _observed("crm_consumer_event_age_seconds")
    delays_before = _observed("crm_outbox_publish_delay_seconds")
    try:
        async with (
            relay(settings, producer),
            Worker(settings, engine, producer, f"g-{uuid.uuid4().hex}"),
        ):
            await write_outbox(engine, [purchase_event(customer, f"o{i}") for i in range(5)])
            # The relay is woken by NOTIFY (its poll interval is 5 s here), so this is quick.
            result = await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] == 5),
                timeout=4.5,
                what="5 purchases applied (woken by NOTIFY, not by the 5 s poll)",
            )
            assert result[1] == "o0,o1,o2,o3,o4"  # per-customer order preserved
            assert await outbox_size(engine) == 0
        # Freshness per hop is measured: the batches' event ages and the relay's publish delay.
        assert _observed("crm_consumer_event_age_seconds")[0] > ages_before[0]
        count, total = _observed("crm_outbox_publish_delay_seconds")
        assert count > delays_before[0] and 0 <= total - delays_before[1] < 60
    finally:
        await producer.stop()


def _observed(histogram: str) -> tuple[float, float]:
    """(count, sum) of one of msgtest's histograms in this process's registry, over its
    consumer groups."""
    totals = {"_count": 0.0, "_sum": 0.0}
    for family in REGISTRY.collect():
        if family.name != histogram:
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(histogram)
            if suffix in totals and sample.labels.get("service") == "msgtest":
                totals[suffix] += sample.value
    return totals["_count"], totals["_sum"]


async def _when(awaitable: Any, ok: Any) -> Any:
    value = await awaitable
    return value if ok(value) else None


async def test_duplicate_delivery_is_applied_once(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    event = purchase_event(customer, "dup-1")
    try:
        for _ in range(3):  # the same event id three times, as a retrying producer would
            await producer.send_and_wait(
                topics.PURCHASES, event.to_bytes(), key=str(customer).encode()
            )
        marker = purchase_event(customer, "after-dup")
        await producer.send_and_wait(
            topics.PURCHASES, marker.to_bytes(), key=str(customer).encode()
        )
        async with Worker(settings, engine, producer, f"g-{uuid.uuid4().hex}"):
            result = await eventually(
                lambda: _when(
                    totals(engine, customer), lambda r: r is not None and "after-dup" in r[1]
                ),
                what="marker applied",
            )
        assert result == (2, "dup-1,after-dup")
    finally:
        await producer.stop()


async def read_dlq(settings: ServiceSettings, since: dict[TopicPartition, int]) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        end = await consumer.end_offsets(list(since))
        records = []
        while any([await consumer.position(tp) < end[tp] for tp in since]):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def dlq_ends(settings: ServiceSettings) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topics.DLQ)
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


@dataclass
class Sender:
    """A producer, a fresh customer (the key) and consumer group, and where the DLQ ended."""

    producer: AIOKafkaProducer
    customer: uuid.UUID
    key: bytes
    group: str
    dlq_before: dict[TopicPartition, int]

    async def send(self, *orders: str | bytes) -> None:
        """Purchase events of these order ids (bytes: sent as they are), in this order."""
        for order in orders:
            if isinstance(order, str):
                order = purchase_event(self.customer, order).to_bytes()
            await self.producer.send_and_wait(topics.PURCHASES, order, key=self.key)

    async def letters(self, settings: ServiceSettings) -> list[Any]:
        """The dead letters since, of this group (a new group reads the whole topic: earlier
        tests' poison is there too)."""
        return [
            r
            for r in await read_dlq(settings, self.dlq_before)
            if dict(r.headers).get("dlq.consumer.group") == self.group.encode()
        ]


@contextlib.asynccontextmanager
async def sender(settings: ServiceSettings) -> AsyncIterator[Sender]:
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    try:
        yield Sender(
            producer,
            customer,
            str(customer).encode(),
            f"g-{uuid.uuid4().hex}",
            await dlq_ends(settings),
        )
    finally:
        await producer.stop()


async def test_poison_messages_go_to_the_dlq_and_the_partition_keeps_moving(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    async with sender(settings) as to:
        await to.send("good-1", b"{this is not json", POISON_ORDER, REFUSED_ORDER, "good-2")
        async with Worker(settings, engine, to.producer, to.group, max_attempts=3):
            result = await eventually(
                lambda: _when(
                    totals(engine, to.customer), lambda r: r is not None and "good-2" in r[1]
                ),
                what="the message after the poison applied",
            )
        assert result == (2, "good-1,good-2")
        letters = await to.letters(settings)
        assert len(letters) == 3
        headers = [{k: v.decode() for k, v in r.headers} for r in letters]
        by_type = {h["dlq.error.type"]: h for h in headers}
        assert set(by_type) == {"unreadable", "ValueError", "OrderRefused"}
        assert "not JSON" in by_type["unreadable"]["dlq.error"]
        assert by_type["ValueError"]["dlq.error"] == "ValueError: order cannot be applied"
        assert by_type["ValueError"]["dlq.attempts"] == "3"  # bounded retries before the DLQ
        # A refusal that names itself not retryable goes at once.
        assert by_type["OrderRefused"]["dlq.error"] == "OrderRefused: no rule can use this order"
        assert by_type["OrderRefused"]["dlq.attempts"] == "1"
        for h in headers:
            assert h["dlq.origin.topic"] == topics.PURCHASES
            assert int(h["dlq.origin.offset"]) >= 0 and h["dlq.origin.partition"].isdigit()
        assert {r.key for r in letters} == {to.key}


async def test_an_event_failing_transiently_while_the_database_answers_goes_to_the_dlq(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """A handler that raised a timeout (or a connection error) for one event, every time, held
    its partition for good: the batch was retried as if the database were down."""
    async with sender(settings) as to:
        await to.send("before-it", TIMES_OUT_ORDER, "after-it")
        TIMING_OUT.add(to.customer)
        try:
            async with Worker(settings, engine, to.producer, to.group, max_attempts=3):
                result = await eventually(
                    lambda: _when(
                        totals(engine, to.customer), lambda r: r is not None and "after-it" in r[1]
                    ),
                    what="the event after it applied",
                )
        finally:
            TIMING_OUT.discard(to.customer)
        assert result == (2, "before-it,after-it")  # each once
        [letter] = [r for r in await to.letters(settings) if r.key == to.key]
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["dlq.error.type"] == "TimeoutError"
        assert headers["dlq.error"] == (
            "TimeoutError: the statement for this order timed out (a transient error, 3 times in"
            " a row while the database answered)"
        )
        assert headers["dlq.attempts"] == "3"
        assert orjson.loads(letter.value)["data"]["order_id"] == TIMES_OUT_ORDER


async def test_a_poison_message_too_large_for_its_dead_letter_does_not_stall_the_partition(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """A message its topic took, at the size limit: with the DLQ's headers it fits nowhere. The
    letter names its origin and size without it, the partition moves on, and replay (which has
    nothing to put back) leaves the letter alone instead of putting a null on the topic."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = str(customer).encode()
    before = await dlq_ends(settings)
    group = f"g-{uuid.uuid4().hex}"
    big = b'{"not": "' + b"a" * 1_048_300 + b'"}'
    try:
        await producer.send_and_wait(topics.PURCHASES, big, key=key)
        await producer.send_and_wait(
            topics.PURCHASES, purchase_event(customer, "after-big").to_bytes(), key=key
        )
        async with Worker(settings, engine, producer, group):
            result = await eventually(
                lambda: totals(engine, customer), timeout=30, what="the message after it applied"
            )
        assert result == (1, "after-big")
        [letter] = [
            r
            for r in await read_dlq(settings, before)
            # The new group reads the topic from its start: earlier tests' poison is there too.
            if dict(r.headers).get("dlq.consumer.group") == group.encode() and r.key == key
        ]
        headers = {k: v.decode() for k, v in letter.headers}
        assert letter.value is None
        assert headers["dlq.value.omitted"] == str(len(big))
        assert headers["dlq.origin.topic"] == topics.PURCHASES
        assert headers["dlq.error.type"] == "unreadable"
        letters = await dlq.read_all(settings=settings, group=group)
        [listed] = [x for x in letters if x.key == key]
        assert listed.summary()["value_omitted"] == str(len(big))
        # Replay would put back the group's other letters (earlier tests'), not this one.
        others = len(letters) - 1
        assert await dlq.replay(settings=settings, group=group, dry_run=True) == others
    finally:
        await producer.stop()


@pytest.mark.parametrize("emits", [True, False], ids=["emitting", "projection"])
async def test_no_connection_free_in_the_pool_is_waited_out_not_dead_lettered(
    settings: ServiceSettings, engine: AsyncEngine, emits: bool
) -> None:
    """The service's pool (shared with its API) has no connection free for longer than its
    timeout: an infrastructure failure like a database down. The batch is retried until one is
    free, then applied; the consumer neither dead-letters its good events nor dies."""
    small = create_async_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = str(customer).encode()
    before = await dlq_ends(settings)
    group = f"g-{uuid.uuid4().hex}"
    try:
        async with small.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's one connection, taken
            await producer.send_and_wait(
                topics.PURCHASES, purchase_event(customer, "pooled-1").to_bytes(), key=key
            )
            worker = Worker(settings, small, producer, group, emits=emits)
            async with worker:
                # Longer than a batch needs to fail over to one by one, retry, dead-letter.
                await asyncio.sleep(3)
                assert worker.task is not None and not worker.task.done()
                await held.close()
                result = await eventually(
                    lambda: totals(engine, customer),
                    what="the batch applied once a connection is free",
                )
        assert result == (1, "pooled-1")
        assert [r for r in await read_dlq(settings, before) if r.key == key] == []
    finally:
        await producer.stop()
        await small.dispose()


async def test_types_without_a_handler_are_read_past_and_unknown_types_go_to_the_dlq(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """A known type this consumer does not handle is skipped unvalidated (even with a payload
    its own consumers would refuse); a type no contract knows is a poison message."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = str(customer).encode()
    before = await dlq_ends(settings)
    group = f"g-{uuid.uuid4().hex}"
    unhandled = orjson.loads(purchase_event(customer, "x").to_bytes())
    unhandled["type"], unhandled["data"] = ev.PURCHASE_REFUNDED, {"not": "a refund"}
    unknown = {**unhandled, "type": "crm.purchase.teleported.v1", "id": str(uuid.uuid4())}
    invalid = orjson.loads(purchase_event(customer, "bad").to_bytes())
    invalid["data"]["amount"], invalid["id"] = "lots", str(uuid.uuid4())
    try:
        for document in (unhandled, unknown, invalid):
            await producer.send_and_wait(topics.PURCHASES, orjson.dumps(document), key=key)
        await producer.send_and_wait(
            topics.PURCHASES, purchase_event(customer, "after").to_bytes(), key=key
        )
        async with Worker(settings, engine, producer, group):
            await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None),
                what="the purchase after both applied",
            )
        assert await totals(engine, customer) == (1, "after")
        letters = [
            {k: v.decode() for k, v in r.headers}
            for r in await read_dlq(settings, before)
            # The new group reads the topic from its start: earlier tests' poison is there too.
            if dict(r.headers).get("dlq.consumer.group") == group.encode() and r.key == key
        ]
        assert len(letters) == 2
        teleported, bad_amount = letters
        assert teleported["dlq.error.type"] == "unreadable"
        assert "crm.purchase.teleported.v1" in teleported["dlq.error"]
        assert teleported["dlq.event.type"] == "unreadable"  # not a type of the contract
        # A contract type that fails its schema is named by it (it said "unreadable").
        assert bad_amount["dlq.error.type"] == "unreadable" and "amount" in bad_amount["dlq.error"]
        assert bad_amount["dlq.event.type"] == ev.PURCHASE_RECORDED
    finally:
        await producer.stop()


class _OrdersOfOneCustomer:
    """A runner on the purchases topic, caught up with what earlier tests left there, that
    records the order ids of one customer's events batch by batch."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.customer = uuid.uuid4()
        self.batches: list[list[str]] = []
        self.held_shared: list[frozenset[str]] = []

    async def send(self, *order_ids: str) -> None:
        for order_id in order_ids:
            await self.producer.send(
                topics.PURCHASES,
                purchase_event(self.customer, order_id).to_bytes(),
                key=str(self.customer).encode(),
            )
        await self.producer.flush()

    async def applied(self, engine: AsyncEngine, n: int) -> None:
        await eventually(
            lambda: _when(totals(engine, self.customer), lambda r: r is not None and r[0] == n),
            timeout=30,
            what=f"all {n} applied",
        )


@contextlib.asynccontextmanager
async def _recording_runner(
    settings: ServiceSettings, engine: AsyncEngine, **options: Any
) -> AsyncIterator[tuple[_OrdersOfOneCustomer, ConsumerRunner]]:
    producer = await start_producer(settings)
    orders = _OrdersOfOneCustomer(producer)
    group = f"g-{uuid.uuid4().hex}"
    handle = per_event(HANDLERS)

    async def process(ctx: HandlerContext, events: Any) -> None:
        mine = [e.data.order_id for e in events if e.subject == str(orders.customer)]
        if mine:
            orders.batches.append(mine)
            orders.held_shared.append(ctx.held_shared)
        await handle(ctx, events)

    consumer = make_consumer(settings, group_id=group, topics_=[])
    runner = ConsumerRunner(
        service="msgtest",
        consumer=consumer,
        producer=producer,
        sessions=session_factory(engine),
        tables=TABLES,
        handlers=HANDLERS,
        process=process,
        group_id=group,
        **options,
    )
    consumer.subscribe([topics.PURCHASES], listener=runner.rebalance_listener())
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        # Catch up with what earlier tests left on the topic (a full batch of it would not
        # linger) before the test's own events.
        await eventually(lambda: _when(_assigned(consumer), bool), what="partitions assigned")
        ends = await consumer.end_offsets(list(consumer.assignment()))
        await eventually(
            lambda: _when(_committed_up_to(consumer, ends), bool),
            timeout=60,
            what="the earlier messages processed",
        )
        yield orders, runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await consumer.stop()
        await producer.stop()


async def test_a_partial_batch_lingers_for_the_events_right_behind_it(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """CONSUMER_BATCH_LINGER_MS: events arriving within the linger join the batch (one
    transaction), in their partition's order."""
    async with _recording_runner(settings, engine, linger=1.0) as (orders, _):
        # One order and, 50 ms behind it, four more.
        await orders.send("o-0")
        await asyncio.sleep(0.05)
        await orders.send("o-1", "o-2", "o-3", "o-4")
        await orders.applied(engine, 5)
        assert orders.batches == [["o-0", "o-1", "o-2", "o-3", "o-4"]]


async def test_a_full_batch_does_not_wait_for_the_linger(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """A long linger (a read model's) caps nothing: a batch that fills goes at once."""
    async with _recording_runner(settings, engine, batch_size=2) as (orders, runner):
        runner.linger = 600.0  # a partial batch would wait ten minutes
        await orders.send("o-0", "o-1", "o-2", "o-3")
        await orders.applied(engine, 4)
        assert orders.batches == [["o-0", "o-1"], ["o-2", "o-3"]]


async def _assigned(consumer: AIOKafkaConsumer) -> bool:
    return bool(consumer.assignment())


async def _committed_up_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if end and (await consumer.committed(tp) or 0) < end:
            return False
    return True


async def test_a_projection_consumer_takes_no_customer_locks_and_may_not_emit(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """`emits=False`: batches do not wait for a writer holding the customer's lock, and a
    handler that emits anyway is refused (DLQ, with the reason), the rest applied."""
    producer = await start_producer(settings)
    customer, other = uuid.uuid4(), uuid.uuid4()
    before = await dlq_ends(settings)
    group = f"g-{uuid.uuid4().hex}"

    async def project(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
        await count_purchases(ctx, event)
        if event.data.order_id == "emits":
            ctx.emit(event)

    try:
        worker = Worker(settings, engine, producer, group)
        worker.runner.handlers = {ev.PURCHASE_RECORDED: project}
        worker.runner.process = per_event(worker.runner.handlers)
        worker.runner.emits = False
        async with engine.connect() as writer:
            # A writer holds the customer's lock for the whole test: a locking consumer would
            # wait for it forever.
            await writer.begin()
            await writer.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": advisory_key(f"customer:{customer}")},
            )
            for order in ("p-1", "p-2"):
                await producer.send_and_wait(
                    topics.PURCHASES,
                    purchase_event(customer, order).to_bytes(),
                    key=str(customer).encode(),
                )
            await producer.send_and_wait(
                topics.PURCHASES,
                purchase_event(other, "emits").to_bytes(),
                key=str(other).encode(),
            )
            async with worker:
                result = await eventually(
                    lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] == 2),
                    what="the customer's events applied while a writer holds their lock",
                )
                letters = await eventually(
                    lambda: _when(
                        read_dlq(settings, before),
                        lambda rs: [r for r in rs if r.key == str(other).encode()],
                    ),
                    what="the emitting event dead-lettered",
                )
            await writer.rollback()
        assert result == (2, "p-1,p-2")
        [letter] = [r for r in letters if r.key == str(other).encode()]
        error = dict(letter.headers)["dlq.error"].decode()
        assert "emits=False" in error and ev.PURCHASE_RECORDED in error
        assert await totals(engine, other) is None  # the refused event changed nothing
    finally:
        await producer.stop()


def _hyphens_elsewhere(customer: uuid.UUID) -> str:
    """36 characters, four hyphens, as uuid.UUID reads it, not where `str` puts them."""
    hex_ = customer.hex
    return "-".join((hex_[:4], hex_[4:8], hex_[8:12], hex_[12:16], hex_[16:]))


@pytest.mark.parametrize(
    "spelling",
    [str, lambda c: str(c).upper(), lambda c: c.hex, lambda c: f"{{{c}}}", _hyphens_elsewhere],
    ids=["as-written", "upper-case", "no-hyphens", "braces", "hyphens-elsewhere"],
)
async def test_an_emitting_consumer_waits_for_the_writer_holding_its_customers_lock(
    settings: ServiceSettings, engine: AsyncEngine, spelling: Callable[[uuid.UUID], str]
) -> None:
    """The batch takes its customers' locks (in the inbox statement) before it applies anything:
    while a writer holds a customer's lock the batch waits on it, and it is applied once the
    writer ends. A subject that is the customer's id spelled otherwise takes the lock the
    service's writers take for that customer, not one named by the spelling."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = advisory_key(f"customer:{customer}")
    event = purchase_event(customer, "spelled-1")
    try:
        async with engine.connect() as writer:
            await writer.begin()
            await writer.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            await producer.send_and_wait(
                topics.PURCHASES,
                event.model_copy(update={"subject": spelling(customer)}).to_bytes(),
                key=str(customer).encode(),
            )
            async with Worker(settings, engine, producer, f"g-{uuid.uuid4().hex}"):
                assert await eventually(
                    lambda: waiting_for_advisory_lock(engine, key), what="the batch waiting"
                )
                assert await totals(engine, customer) is None  # nothing applied while it waits
                await writer.rollback()
                result = await eventually(
                    lambda: totals(engine, customer), what="the batch applied after the writer"
                )
        assert result == (1, "spelled-1")
    finally:
        await producer.stop()


async def test_a_batch_takes_its_shared_locks_with_its_customers_locks(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """`shared_locks` (a policy its handlers read): taken by the batch's inbox statement, so a
    writer holding one exclusively (a policy change) holds the batch up; handlers are told."""
    async with engine.connect() as conn:
        key = (await conn.execute(text("SELECT hashtext('msgtest:policy')::int8"))).scalar_one()
    async with _recording_runner(settings, engine, shared_locks=["msgtest:policy"]) as (
        orders,
        _,
    ):
        async with engine.connect() as writer:
            await writer.begin()
            await writer.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
            await orders.send("o-0")
            assert await eventually(
                lambda: waiting_for_advisory_lock(engine, key), what="the batch waiting"
            )
            assert await totals(engine, orders.customer) is None
            await writer.rollback()
        await orders.applied(engine, 1)
        assert orders.held_shared == [frozenset({"msgtest:policy"})]


async def test_crash_between_db_commit_and_offset_commit_does_not_double_apply(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    group = f"g-{uuid.uuid4().hex}"
    try:
        for i in range(3):
            await producer.send_and_wait(
                topics.PURCHASES,
                purchase_event(customer, f"c{i}").to_bytes(),
                key=str(customer).encode(),
            )
        crashing = Worker(settings, engine, producer, group)
        crashing.runner.commit_offsets = (
            False  # the process dies after the DB commit, before the offset commit
        )
        async with crashing:
            await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] == 3),
                what="first delivery applied",
            )
        async with Worker(settings, engine, producer, group) as restarted:
            # The restarted consumer re-reads the same messages (no committed offset)...
            await eventually(
                lambda: _when(asyncio.sleep(0, restarted.runner.processed), lambda n: n >= 3),
                what="redelivery read",
            )
        # ...and the inbox keeps them from being applied twice.
        assert await totals(engine, customer) == (3, "c0,c1,c2")
    finally:
        await producer.stop()


async def test_relay_resumes_after_broker_restart_without_losing_events(
    settings: ServiceSettings, engine: AsyncEngine, kafka_broker: Broker
) -> None:
    if not (
        kafka_broker.persistent and kafka_broker.restartable and hasattr(kafka_broker, "start")
    ):
        pytest.skip(
            f"{kafka_broker!r} cannot be stopped and started keeping its data; this test needs Apache Kafka"
        )
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    try:
        async with relay(settings, producer) as outbox_relay:
            await asyncio.to_thread(kafka_broker.stop)
            await write_outbox(engine, [purchase_event(customer, f"r{i}") for i in range(20)])
            await asyncio.sleep(2)  # the relay tries and fails while the broker is down
            assert await outbox_size(engine) == 20
            await asyncio.to_thread(kafka_broker.start)

            async def drained() -> bool:
                return await outbox_size(engine) == 0

            await eventually(drained, timeout=90, what="outbox drained after the restart")
            assert outbox_relay.published >= 20
        async with Worker(settings, engine, producer, f"g-{uuid.uuid4().hex}"):
            result = await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] >= 20),
                timeout=60,
                what="all 20 events consumed",
            )
        assert result[1] == ",".join(f"r{i}" for i in range(20))
    finally:
        await producer.stop()


async def test_graceful_stop_finishes_the_batch_and_commits_it(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """SIGTERM sets the stop event: the batch in flight is committed (DB, then offsets), and a
    restarted consumer neither loses nor redoes any of it."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    group = f"g-{uuid.uuid4().hex}"
    entered = asyncio.Event()
    release = asyncio.Event()
    applied: list[str] = []

    async def slow_count(ctx: HandlerContext, event: CloudEvent[Any]) -> None:
        if event.data.customer_id == customer:
            entered.set()
            await release.wait()  # the stop request arrives while this batch is being handled
        await count_purchases(ctx, event)
        if event.data.customer_id == customer:
            applied.append(event.data.order_id)

    try:
        for i in range(4):
            await producer.send_and_wait(
                topics.PURCHASES,
                purchase_event(customer, f"s{i}").to_bytes(),
                key=str(customer).encode(),
            )
        first = Worker(settings, engine, producer, group)
        first.runner.handlers = {ev.PURCHASE_RECORDED: slow_count}
        first.runner.process = per_event(first.runner.handlers)
        async with first:
            await asyncio.wait_for(entered.wait(), 60)
            first.stop.set()
            release.set()
        committed = await totals(engine, customer)
        assert committed is not None  # the batch in flight was finished and committed
        done = committed[0]
        assert committed[1] == ",".join(f"s{i}" for i in range(done))
        applied_before_restart = list(applied)

        second = Worker(settings, engine, producer, group)
        second.runner.handlers = {ev.PURCHASE_RECORDED: slow_count}
        second.runner.process = per_event(second.runner.handlers)
        async with second:
            extra = purchase_event(customer, "after-restart")
            await producer.send_and_wait(
                topics.PURCHASES, extra.to_bytes(), key=str(customer).encode()
            )
            await eventually(
                lambda: _when(
                    totals(engine, customer), lambda r: r is not None and "after-restart" in r[1]
                ),
                timeout=60,
                what="new event after restart",
            )
        assert await totals(engine, customer) == (
            5,
            "s0,s1,s2,s3,after-restart",
        )  # exactly once, in order
        # The restarted consumer handled only what the first had not committed. (A handler may
        # run twice for one event when its batch is redone singly, e.g. because another test's
        # poison message shares the batch: compare the set, the order is checked above.)
        assert set(applied[len(applied_before_restart) :]) == {
            *(f"s{i}" for i in range(done, 4)),
            "after-restart",
        }
    finally:
        await producer.stop()


async def test_large_outbox_batches_are_copied_and_published_in_order(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    from shared.messaging.outbox import COPY_THRESHOLD

    producer = await start_producer(settings)
    customer = uuid.uuid4()
    count = COPY_THRESHOLD + 100
    try:
        async with (
            relay(settings, producer),
            Worker(settings, engine, producer, f"g-{uuid.uuid4().hex}"),
        ):
            await write_outbox(engine, [purchase_event(customer, f"b{i}") for i in range(count)])
            result = await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] == count),
                timeout=60,
                what=f"{count} purchases applied",
            )
        assert result[1].split(",") == [f"b{i}" for i in range(count)]
        assert await outbox_size(engine) == 0
    finally:
        await producer.stop()


async def emptied(outbox_relay: OutboxRelay, engine: AsyncEngine, published: int) -> bool:
    """The relay has published this many rows in all, and the outbox is empty."""
    return outbox_relay.published == published and await outbox_size(engine) == 0


async def manual_vacuums(engine: AsyncEngine) -> int:
    """VACUUMs run on the outbox by a client (autovacuum's are counted apart)."""
    async with engine.connect() as conn:
        count = await conn.execute(
            text("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
        )
        return int(count.scalar_one())


async def test_the_relay_vacuums_the_outbox_once_it_emptied_enough_rows(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    before = await manual_vacuums(engine)
    try:
        async with relay(settings, producer, vacuum_after=300) as outbox_relay:
            # 200 rows deleted: under the threshold, no VACUUM.
            await write_outbox(engine, [purchase_event(customer, f"v{i}") for i in range(200)])
            await eventually(
                lambda: emptied(outbox_relay, engine, 200), what="200 published and deleted"
            )
            await asyncio.sleep(1.5)  # table statistics are flushed within a second
            assert await manual_vacuums(engine) == before
            # 150 more: 350 deleted since the last VACUUM, and the outbox empty: one VACUUM.
            await write_outbox(engine, [purchase_event(customer, f"w{i}") for i in range(150)])
            await eventually(
                lambda: emptied(outbox_relay, engine, 350), what="350 published and deleted"
            )
            await eventually(
                lambda: _when(manual_vacuums(engine), lambda n: n == before + 1),
                timeout=20,
                what="the outbox vacuumed",
            )
            assert outbox_relay.published == 350
    finally:
        await producer.stop()


async def test_the_relay_does_not_wait_for_a_vacuum_already_at_work_on_the_outbox(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """While another VACUUM holds the outbox (autovacuum, an operator), the relay skips its own
    and goes on publishing; once the table is free it vacuums."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    before = await manual_vacuums(engine)
    try:
        async with relay(settings, producer, vacuum_after=100) as outbox_relay:
            async with engine.connect() as maintenance:
                # The lock a VACUUM takes: writers and the relay's DELETE are not in its way.
                await maintenance.execute(text("LOCK TABLE outbox IN SHARE UPDATE EXCLUSIVE MODE"))
                await write_outbox(engine, [purchase_event(customer, f"s{i}") for i in range(150)])
                await eventually(
                    lambda: emptied(outbox_relay, engine, 150), what="150 published and deleted"
                )
                # Past the threshold and empty: the relay tried its VACUUM; it must not be stuck.
                await write_outbox(engine, [purchase_event(customer, f"t{i}") for i in range(50)])
                await eventually(
                    lambda: emptied(outbox_relay, engine, 200),
                    what="50 more published while locked",
                )
                await maintenance.rollback()
            await asyncio.sleep(1.5)  # table statistics are flushed within a second
            assert await manual_vacuums(engine) == before
            # The table free: the next empty drain vacuums (the skipped rows still counted).
            await write_outbox(engine, [purchase_event(customer, "u0")])
            await eventually(lambda: emptied(outbox_relay, engine, 201), what="one more published")
            await eventually(
                lambda: _when(manual_vacuums(engine), lambda n: n == before + 1),
                timeout=20,
                what="the outbox vacuumed once free",
            )
    finally:
        await producer.stop()


async def test_a_relay_without_the_right_to_vacuum_leaves_it_to_autovacuum(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """A role that neither owns the outbox nor holds MAINTAIN relays as before, and vacuums not."""
    role = f"relay_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(text(f"GRANT SELECT, DELETE ON outbox TO {role}"))
    guest = settings.model_copy(
        update={"database_url": engine.url.set(username=role).render_as_string(hide_password=False)}
    )
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    before = await manual_vacuums(engine)
    try:
        async with relay(guest, producer, vacuum_after=100) as outbox_relay:

            async def refused() -> bool:
                return outbox_relay._may_vacuum is False

            await write_outbox(engine, [purchase_event(customer, f"g{i}") for i in range(150)])
            await eventually(
                lambda: emptied(outbox_relay, engine, 150),
                what="150 published and deleted by the guest role",
            )
            await eventually(refused, what="the relay found it may not vacuum")
        assert outbox_relay.published == 150
        await asyncio.sleep(1.5)  # table statistics are flushed within a second
        assert await manual_vacuums(engine) == before
    finally:
        await producer.stop()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))


async def test_offsets_are_committed_on_the_interval_at_once_past_a_dead_letter_and_on_stop(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """CONSUMER_COMMIT_INTERVAL_MS: applied events' offsets wait for the interval (a crash
    before it redoes them, and the inbox drops them), except past a dead letter, whose redo
    would send it again; a stopping consumer commits what it applied."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = str(customer).encode()
    group = f"g-{uuid.uuid4().hex}"
    try:
        async with Worker(
            settings, engine, producer, group, max_attempts=1, commit_interval=3600.0
        ) as worker:
            consumer = worker.consumer
            await eventually(lambda: _when(_assigned(consumer), bool), what="partitions assigned")
            ends = await consumer.end_offsets(list(consumer.assignment()))
            await eventually(
                lambda: _when(_positions_reach(consumer, ends), bool),
                timeout=60,
                what="what earlier tests left on the topic read",
            )
            first = await producer.send_and_wait(
                topics.PURCHASES, purchase_event(customer, "c-1").to_bytes(), key=key
            )
            tp = TopicPartition(topics.PURCHASES, first.partition)  # the key's: all go there

            async def committed() -> int:
                return await consumer.committed(tp) or 0

            await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None),
                what="the purchase applied",
            )
            assert await committed() <= first.offset  # applied; its offset waits for the interval
            poison = await producer.send_and_wait(topics.PURCHASES, b"{poison", key=key)
            await eventually(
                lambda: _when(committed(), lambda n: n == poison.offset + 1),
                what="committed at once past the dead letter",
            )
            last = await producer.send_and_wait(
                topics.PURCHASES, purchase_event(customer, "c-2").to_bytes(), key=key
            )
            await eventually(
                lambda: _when(totals(engine, customer), lambda r: r is not None and r[0] == 2),
                what="the second purchase applied",
            )
            assert await committed() == poison.offset + 1
            worker.stop.set()
            assert worker.task is not None
            await asyncio.wait_for(worker.task, 30)
            assert await committed() == last.offset + 1  # on stop
    finally:
        await producer.stop()


async def _positions_reach(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def _outbox_empty(engine: AsyncEngine) -> bool:
    return await outbox_size(engine) == 0


async def _records_with_key(settings: ServiceSettings, topic: str, key: bytes) -> list[Any]:
    return await topic_records(settings.kafka_bootstrap_servers, topic, lambda r: r.key == key)


async def test_a_dead_letter_replayed_to_its_topic_is_still_a_structured_mode_cloudevent(
    settings: ServiceSettings, engine: AsyncEngine
) -> None:
    """The relay publishes with `content-type: application/cloudevents+json` (structured mode,
    the contract); the copy in the DLQ and the copy `crm dlq replay` puts back on the origin
    topic keep the original message's headers, or other systems reading the topic per the
    CloudEvents Kafka binding no longer recognise it as a CloudEvent."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    key = str(customer).encode()
    group = f"g-{uuid.uuid4().hex}"
    poison = purchase_event(customer, POISON_ORDER)
    before = await dlq_ends(settings)

    async def ours() -> list[Any]:
        return [
            r
            for r in await read_dlq(settings, before)
            if r.key == key and dict(r.headers)["dlq.consumer.group"] == group.encode()
        ]

    try:
        await write_outbox(engine, [poison])
        async with relay(settings, producer):
            await eventually(
                lambda: _when(_outbox_empty(engine), bool), timeout=30, what="published"
            )
        async with Worker(settings, engine, producer, group, max_attempts=1):
            letters = await eventually(ours, timeout=60, what="the poison dead-lettered")
        assert len(letters) == 1
        assert dict(letters[0].headers)["content-type"] == CONTENT_TYPE.encode()

        # (the group read the topic from its start: earlier tests' poison is replayed too)
        assert await dlq.replay(settings=settings, group=group) >= 1
        copies = await _records_with_key(settings, topics.PURCHASES, key)
        assert [c.value for c in copies] == [poison.to_bytes()] * 2  # the original, the replay
        for copy in copies:
            assert dict(copy.headers)["content-type"] == CONTENT_TYPE.encode()
        assert "dlq.replayed_from" in dict(copies[1].headers)
        assert dict(copies[1].headers)["dlq.replay.group"] == group.encode()
    finally:
        await producer.stop()


async def test_a_dead_letter_replayed_long_after_is_applied_by_the_group_that_failed_it_alone(
    settings: ServiceSettings, engine: AsyncEngine, postgres_server: PostgresServer
) -> None:
    """`crm dlq replay` puts a dead letter back on its topic, which every consumer group of the
    topic reads. A group that applied the original drops the copy through its inbox only while
    the inbox remembers the id (INBOX_RETENTION_HOURS): a replay after that, as an investigation
    of a week may need, must still not apply it twice there. The group that failed it applies
    it once its cause is fixed."""
    producer = await start_producer(settings)
    customer = uuid.uuid4()
    event = purchase_event(customer, "needs-a-fix")
    failing, applying = f"g-fails-{uuid.uuid4().hex}", f"g-applies-{uuid.uuid4().hex}"
    broken = [True]

    async def until_fixed(ctx: HandlerContext, e: CloudEvent[Any]) -> None:
        if broken[0] and e.data.order_id == "needs-a-fix":
            raise ValueError("a reference this service does not know yet")
        await count_purchases(ctx, e)

    def failing_worker() -> Worker:
        handlers = {ev.PURCHASE_RECORDED: until_fixed}
        return Worker(settings, engine, producer, failing, handlers=handlers, max_attempts=1)

    async with messaging_database(postgres_server, METADATA, prefix="other") as other:
        try:
            for group in (failing, applying):  # the topic's earlier messages are not theirs
                await skip_history(settings.kafka_bootstrap_servers, group, [topics.PURCHASES])
            await producer.send_and_wait(
                topics.PURCHASES, event.to_bytes(), key=str(customer).encode()
            )
            async with failing_worker(), Worker(settings, other, producer, applying):
                await eventually(lambda: totals(other, customer), what="applied by one group")
                await eventually(
                    lambda: dlq.read_all(settings=settings, group=failing),
                    timeout=30,
                    what="dead-lettered by the other",
                )
                assert await totals(engine, customer) is None
            async with other.begin() as conn:  # its inbox forgot the event (past its retention)
                await conn.execute(text("DELETE FROM inbox WHERE event_id = :id"), {"id": event.id})

            broken[0] = False  # the cause is fixed, and the dead letter replayed
            assert await dlq.replay(settings=settings, group=failing) == 1
            async with failing_worker(), Worker(settings, other, producer, applying) as applies:
                applied = await eventually(lambda: totals(engine, customer), what="the replay")
                await eventually(
                    lambda: _when(_processed(applies), bool),
                    what="the copy read by the group that had applied the original",
                )
            assert applied == (1, "needs-a-fix")
            assert await totals(other, customer) == (1, "needs-a-fix")  # not applied twice
        finally:
            await producer.stop()


async def _processed(worker: Worker) -> int:
    return worker.runner.processed
