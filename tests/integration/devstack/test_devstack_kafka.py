"""The broker of the test session: topics, keyed produce, consumer groups, commits, restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.devstack import Broker, create_topics

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    """Topic and group names no earlier run (on a shared broker) has used."""
    return f"devstack.{name}.{uuid.uuid4().hex[:8]}"


async def produce(
    broker: Broker, topic: str, records: list[tuple[str, str]]
) -> dict[int, list[str]]:
    """Send (key, value) records with acks=all; return the values per partition, in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers,
        acks="all",
        enable_idempotence=broker.supports_idempotence,
    )
    await producer.start()
    try:
        by_partition: dict[int, list[str]] = defaultdict(list)
        for key, value in records:
            sent = await producer.send_and_wait(topic, value.encode(), key=key.encode())
            by_partition[sent.partition].append(value)
        return by_partition
    finally:
        await producer.stop()


async def consume(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> list[str]:
    """Read until count values arrived (or fail after timeout)."""
    values: list[str] = []
    deadline = time.monotonic() + timeout
    while len(values) < count:
        assert time.monotonic() < deadline, f"got {len(values)} of {count} records: {values}"
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            values.extend(record.value.decode() for record in records)
    return values


def group_consumer(broker: Broker, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Tansu paces group joins by the session timeout; 6 s is Apache Kafka's minimum.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


async def test_create_topics_creates_partitions_once(kafka_broker: Broker) -> None:
    topic = unique("created")
    first = await create_topics(kafka_broker.bootstrap_servers, {topic: 3})
    second = await create_topics(kafka_broker.bootstrap_servers, {topic: 3})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert first == [topic]
    assert second == []
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2]


async def test_keyed_records_reach_a_group_and_commits_are_kept(kafka_broker: Broker) -> None:
    topic, group = unique("orders"), unique("group")
    await create_topics(kafka_broker.bootstrap_servers, {topic: 3})
    records = [(f"customer-{n % 6}", f"event-{n}") for n in range(30)]
    by_partition = await produce(kafka_broker, topic, records)

    consumer = group_consumer(kafka_broker, topic, group)
    await consumer.start()
    try:
        received = await consume(consumer, len(records))
        await consumer.commit()
        committed = {
            partition: await consumer.committed(TopicPartition(topic, partition))
            for partition in range(3)
        }
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(value for _, value in records)
    assert len(by_partition) > 1, "six keys over three partitions should use more than one"
    # One key always maps to one partition, so a customer's events keep their order.
    key_partitions: dict[str, set[int]] = defaultdict(set)
    for partition, values in by_partition.items():
        for value in values:
            key_partitions[f"customer-{int(value.split('-')[1]) % 6}"].add(partition)
    assert all(len(partitions) == 1 for partitions in key_partitions.values())
    assert committed == {p: len(by_partition.get(p, [])) for p in range(3)}

    # The same group resumes after its commit: only records sent later arrive.
    await produce(kafka_broker, topic, [("customer-0", "late-1"), ("customer-1", "late-2")])
    resumed = group_consumer(kafka_broker, topic, group)
    await resumed.start()
    try:
        assert sorted(await consume(resumed, 2)) == ["late-1", "late-2"]
        assert await resumed.getmany(timeout_ms=1000) == {}
    finally:
        await resumed.stop()


async def test_idempotent_producer_works_exactly_when_the_broker_says_so(
    kafka_broker: Broker,
) -> None:
    topic = unique("idempotent")
    await create_topics(kafka_broker.bootstrap_servers, {topic: 1})
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap_servers, acks="all", enable_idempotence=True
    )
    try:
        if kafka_broker.supports_idempotence:
            await producer.start()
            sent = await producer.send_and_wait(topic, b"once", key=b"customer-1")
            assert sent.offset == 0
        else:
            with pytest.raises(KafkaError):
                await asyncio.wait_for(producer.start(), 30)
    finally:
        await producer.stop()


async def test_restart_keeps_topics_messages_and_committed_offsets(kafka_broker: Broker) -> None:
    if not (kafka_broker.restartable and kafka_broker.persistent):
        pytest.skip(f"{kafka_broker.kind} broker: not started by these tests or keeps no data")
    topic, group = unique("restart"), unique("group")
    await create_topics(kafka_broker.bootstrap_servers, {topic: 3})
    await produce(kafka_broker, topic, [(f"customer-{n}", f"before-{n}") for n in range(6)])
    consumer = group_consumer(kafka_broker, topic, group)
    await consumer.start()
    try:
        await consume(consumer, 6)
        await consumer.commit()
    finally:
        await consumer.stop()

    await asyncio.to_thread(kafka_broker.restart)

    await produce(kafka_broker, topic, [("customer-0", "after-0")])
    resumed = group_consumer(kafka_broker, topic, group)
    await resumed.start()
    try:
        assert await consume(resumed, 1) == ["after-0"]
    finally:
        await resumed.stop()
    everything = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker.bootstrap_servers, auto_offset_reset="earliest"
    )
    await everything.start()
    try:
        assert len(await consume(everything, 7)) == 7
    finally:
        await everything.stop()
