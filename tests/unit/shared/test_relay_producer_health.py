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
