"""The relay hands rows to the producer as one batch per partition: every row once, each partition
in outbox id order, on the partition `send` would choose, and nothing counts as published until
every batch is acknowledged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.events import CONTENT_TYPE
from shared.messaging.kafka import key_partitioner
from shared.messaging.outbox import OutboxRelay

PARTITIONS = 3


class _Batch:
    """Like aiokafka's BatchBuilder: full, it closes itself; closed, it takes nothing more."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        self.closed = False

    def append(
        self, *, key: bytes, value: bytes, timestamp: None, headers: list[tuple[str, bytes]]
    ) -> object | None:
        if self.closed or len(self.records) >= self.capacity:
            self.closed = True
            return None
        self.records.append((key, value, headers))
        return object()

    def close(self) -> None:
        self.closed = True


class _Producer:
    """What `_publish` uses of an AIOKafkaProducer; acknowledges each batch once released."""

    def __init__(
        self, capacity: int, fail_partition: int | None = None, *, idempotent: bool = True
    ) -> None:
        partitions = set(range(PARTITIONS))
        self._txn_manager = object() if idempotent else None  # aiokafka's, when idempotent
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(
                partitions_for_topic=lambda topic: partitions,
                available_partitions_for_topic=lambda topic: partitions,
            )
        )
        self._partitioner = key_partitioner
        self.capacity = capacity
        self.fail_partition = fail_partition
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]]] = []
        self.acks: list[asyncio.Future[None]] = []
        self.handed_over_behind_unacknowledged = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> _Batch:
        return _Batch(self.capacity)

    async def send_batch(
        self, batch: _Batch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        pending = [
            ack
            for (t, p, _), ack in zip(self.sent, self.acks, strict=True)
            if (t, p) == (topic, partition) and not ack.done()
        ]
        self.handed_over_behind_unacknowledged += bool(pending)
        self.sent.append((topic, partition, list(batch.records)))
        # A batch still open lingers in the producer for messages that never come.
        assert batch.closed, "handed over open"
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def settle(self) -> None:
        for (_, partition, _), ack in zip(self.sent, self.acks, strict=True):
            if partition == self.fail_partition:
                ack.set_exception(RuntimeError("broker said no"))
            else:
                ack.set_result(None)


def rows() -> list[dict[str, Any]]:
    topics = ["crm.purchases.v1", "crm.customers.v1"]
    return [
        {
            "id": i,
            "topic": topics[i % 2],
            "key": f"customer-{i % 7}",
            "payload": f'{{"n":{i}}}'.encode(),
        }
        for i in range(60)
    ]


def relay(producer: _Producer) -> OutboxRelay:
    return OutboxRelay(
        service="relay-test", dsn="unused", producer=cast(Any, producer), settle_timeout=1
    )


async def test_each_partition_gets_its_rows_in_id_order_in_batches_of_at_most_the_capacity() -> (
    None
):
    producer = _Producer(capacity=4)
    published = asyncio.create_task(relay(producer)._publish(producer, rows()))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not published.done()  # waits for the acknowledgements
    producer.settle()
    await published

    expected: dict[tuple[str, int], list[bytes]] = {}
    for r in rows():
        key = r["key"].encode()
        partition = key_partitioner(key, list(range(PARTITIONS)), list(range(PARTITIONS)))
        expected.setdefault((r["topic"], partition), []).append(r["payload"])
    received: dict[tuple[str, int], list[bytes]] = {}
    for topic, partition, records in producer.sent:
        assert 1 <= len(records) <= 4
        for key, value, headers in records:
            assert key_partitioner(key, list(range(PARTITIONS)), []) == partition
            assert headers == [("content-type", CONTENT_TYPE.encode())]
            received.setdefault((topic, partition), []).append(value)
    assert received == expected


async def test_a_failed_batch_fails_the_attempt_once_every_batch_has_settled() -> None:
    producer = _Producer(capacity=100, fail_partition=1)
    published = asyncio.create_task(relay(producer)._publish(producer, rows()))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    producer.settle()
    with pytest.raises(RuntimeError, match="broker said no"):
        await published
    assert all(ack.done() for ack in producer.acks)


async def _acknowledge_as_sent(producer: _Producer, failing: set[int]) -> None:
    """The broker: acknowledges (or fails, the batches numbered in `failing`) what is sent."""
    while True:
        for number, ack in enumerate(producer.acks):
            if not ack.done():
                if number in failing:
                    ack.set_exception(RuntimeError("expired in its retries"))
                else:
                    ack.set_result(None)
        await asyncio.sleep(0)


async def test_without_idempotence_a_partition_next_batch_waits_for_the_previous_ack() -> None:
    producer = _Producer(capacity=4, idempotent=False)
    broker = asyncio.create_task(_acknowledge_as_sent(producer, failing=set()))
    try:
        await relay(producer)._publish(producer, rows())  # type: ignore[arg-type]
    finally:
        broker.cancel()
    assert producer.handed_over_behind_unacknowledged == 0
    assert sum(len(records) for _, _, records in producer.sent) == len(rows())
    # The idempotent producer is trusted with the order: everything is handed over at once.
    idempotent = _Producer(capacity=4)
    published = asyncio.create_task(relay(idempotent)._publish(idempotent, rows()))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert idempotent.handed_over_behind_unacknowledged > 0
    idempotent.settle()
    await published


async def test_without_idempotence_a_failed_batch_is_overtaken_by_nothing() -> None:
    # aiokafka fails a batch that expired in its retries, then sends the partition's next one:
    # it would land before the relay's retry of the first.
    producer = _Producer(capacity=4, idempotent=False)
    broker = asyncio.create_task(_acknowledge_as_sent(producer, failing={0}))
    try:
        with pytest.raises(RuntimeError, match="expired"):
            await relay(producer)._publish(producer, rows())  # type: ignore[arg-type]
    finally:
        broker.cancel()
    first_topic, first_partition, _ = producer.sent[0]
    assert [(t, p) for t, p, _ in producer.sent].count((first_topic, first_partition)) == 1
