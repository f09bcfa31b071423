"""Which publish errors make the outbox relay replace its producer, and which it retries with
the same one (the broker restart behaviour itself is tested on a real broker in
tests/integration/shared/test_outbox_relay_recovery.py)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    UnknownProducerId,
)
from support import kafka_record

from shared.messaging.kafka import producer_is_broken
from shared.messaging.outbox import OutboxRelay

BROKEN_FOR_GOOD = [
    OutOfOrderSequenceNumber(),
    UnknownProducerId(),
    InvalidProducerEpoch(),
    ProducerFenced(),
    KafkaError("Unexpected error during batch delivery"),
    AssertionError("Unrecognized partition"),
]
HEALS_BY_ITSELF = [
    KafkaTimeoutError(),
    KafkaConnectionError("broker down"),
    RequestTimedOutError(),
    NotLeaderForPartitionError(),
]


@pytest.mark.parametrize("error", BROKEN_FOR_GOOD, ids=lambda e: type(e).__name__)
async def test_fatal_errors_replace_the_producer(error: BaseException) -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started
    assert producer_is_broken(producer, error)


@pytest.mark.parametrize("error", HEALS_BY_ITSELF, ids=lambda e: type(e).__name__)
async def test_retriable_errors_keep_the_producer(error: BaseException) -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    assert not producer_is_broken(producer, error)


def test_the_relay_takes_a_producer_or_a_factory() -> None:
    with pytest.raises(ValueError, match="producer or a producer_factory"):
        OutboxRelay(service="s", dsn="postgresql://x@127.0.0.1/x")


class _FakeProducer:
    """Records DLQ sends; fails each with `error` while it has one."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes | None]] = []
        self.stopped = False

    async def send_and_wait(self, topic: str, value: bytes | None = None, **_: object) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, value))

    async def stop(self) -> None:
        self.stopped = True


async def test_the_consumer_replaces_a_broken_dlq_producer_with_one_of_its_own() -> None:
    import asyncio

    from shared.events import topics
    from shared.messaging.consumer import ConsumerRunner, Message

    shared_producer = _FakeProducer(OutOfOrderSequenceNumber())
    made: list[_FakeProducer] = []

    async def factory() -> _FakeProducer:
        made.append(_FakeProducer())
        return made[-1]

    runner = ConsumerRunner(
        service="s",
        consumer=None,  # type: ignore[arg-type]
        producer=shared_producer,  # type: ignore[arg-type]
        sessions=None,  # type: ignore[arg-type]
        tables=None,  # type: ignore[arg-type]
        handlers={},
        group_id="g",
        backoff=0.001,
        producer_factory=factory,  # type: ignore[arg-type]
    )
    record = kafka_record(b"poison", topic=topics.PURCHASES, offset=7)
    failed = Message(record, error="bad", error_type="unreadable")
    await asyncio.wait_for(runner._dead_letter([failed], asyncio.Event()), 5)
    assert [p.sent for p in made] == [[(topics.DLQ, b"poison")]]
    assert not shared_producer.stopped  # the service's shared producer is its owner's to stop
    await runner.close()
    assert made[0].stopped
