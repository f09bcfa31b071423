"""`crm dlq list` / `crm dlq replay` on the real broker: a dead letter is listed with its origin
and error, and replay puts the original bytes back on the origin topic, once."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from support import topic_records

from shared.devstack import Broker
from shared.events import topics
from shared.messaging import dlq
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def origin_messages(settings: ServiceSettings, topic: str, marker: bytes) -> list[bytes]:
    records = await topic_records(
        settings.kafka_bootstrap_servers, topic, lambda r: bool(r.value and marker in r.value)
    )
    return [r.value for r in records]


async def test_dead_letters_are_listed_and_replayed_once(
    kafka_broker: Broker, contract_topics: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServiceSettings(
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers, kafka_enable_idempotence="false"
    )
    group = f"dlq-test-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex.encode()
    value = b'{"broken": "' + marker + b'"}'
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.DLQ,
            value=value,
            key=b"customer-1",
            headers=[
                ("dlq.origin.topic", topics.INGEST_ORDERS.encode()),
                ("dlq.origin.partition", b"2"),
                ("dlq.origin.offset", b"41"),
                ("dlq.consumer.group", group.encode()),
                ("dlq.error", b"not JSON"),
                ("dlq.error.type", b"unreadable"),
                ("dlq.attempts", b"0"),
            ],
        )
    finally:
        await producer.stop()

    listed = await dlq.read_all(settings=settings, group=group)
    assert [letter.summary()["origin"] for letter in listed] == [f"{topics.INGEST_ORDERS}[2]@41"]
    assert listed[0].summary()["error"] == "not JSON" and listed[0].value == value

    async def no_producer_for_a_dry_run(_settings: ServiceSettings) -> None:
        raise AssertionError("a dry run only reads")

    with monkeypatch.context() as patched:
        patched.setattr(dlq, "start_producer", no_producer_for_a_dry_run)
        assert await dlq.replay(settings=settings, group=group, dry_run=True) == 1
    assert await origin_messages(settings, topics.INGEST_ORDERS, marker) == []
    assert await dlq.replay(settings=settings, group=group) == 1
    assert await origin_messages(settings, topics.INGEST_ORDERS, marker) == [value]
