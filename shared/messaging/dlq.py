"""The dead-letter queue: list what is there, replay it to its origin topic.

Replay re-publishes each message (same key, same bytes, so the same event id, and its own
headers, such as the structured-mode `content-type`) to the topic it came from, addressed to
the consumer group that dead-lettered it (header `dlq.replay.group`): the topic's other groups
applied the original and skip the copy, however long ago that was; the group it is for applies
it unless its inbox holds the id. A consumer group `crm-dlq-replayer` remembers how far replay
went, so nothing is replayed twice by accident. A letter too large for the DLQ with its message
holds none (header `dlq.value.omitted`, the message's size): it is listed, not replayed; the
message is at the letter's origin (topic, partition, offset) while that topic retains it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import topics
from shared.messaging.consumer import DLQ_HEADER_PREFIX, REPLAY_GROUP_HEADER, VALUE_OMITTED_HEADER
from shared.messaging.kafka import client_options, partitions_of, start_producer
from shared.settings import ServiceSettings

REPLAYER_GROUP = "crm-dlq-replayer"


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    # The original message's headers (all but the DLQ's `dlq.*`), as they were.
    own_headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def origin_topic(self) -> str:
        return self.headers.get("dlq.origin.topic", "")

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The message's own headers (content-type: a structured-mode CloudEvent again), where it
        came from, and the group it is for: the one that failed it."""
        headers = [
            *self.own_headers,
            ("dlq.replayed_from", f"{self.partition}:{self.offset}".encode()),
        ]
        group = self.headers.get("dlq.consumer.group")
        if group:
            headers.append((REPLAY_GROUP_HEADER, group.encode()))
        return headers

    def summary(self) -> dict[str, Any]:
        h = self.headers
        return {
            "dlq_offset": f"{self.partition}:{self.offset}",
            "origin": f"{h.get('dlq.origin.topic')}[{h.get('dlq.origin.partition')}]@{h.get('dlq.origin.offset')}",
            "group": h.get("dlq.consumer.group"),
            "event_type": h.get("dlq.event.type"),
            "error_type": h.get("dlq.error.type"),
            "error": h.get("dlq.error"),
            "attempts": h.get("dlq.attempts"),
            "failed_at": h.get("dlq.failed_at"),
            # The message's size, when it was too large to be held here: see its origin.
            "value_omitted": h.get(VALUE_OMITTED_HEADER),
        }


def _to_letter(record: Any) -> DeadLetter:
    raw = record.headers or ()
    headers = {k: v.decode(errors="replace") for k, v in raw}
    own = tuple((k, v) for k, v in raw if not k.startswith(DLQ_HEADER_PREFIX))
    return DeadLetter(record.partition, record.offset, record.key, record.value, headers, own)


async def _drain(consumer: AIOKafkaConsumer, limit: int | None) -> list[Any]:
    """Read from the current positions up to the end offsets seen at the start."""
    partitions = consumer.assignment()
    end = await consumer.end_offsets(list(partitions))
    records: list[Any] = []
    while True:
        positions = {tp: await consumer.position(tp) for tp in partitions}
        if all(positions[tp] >= end[tp] for tp in partitions):
            return records
        batch = await consumer.getmany(timeout_ms=500, max_records=500)
        for tp_records in batch.values():
            records.extend(tp_records)
        if limit is not None and len(records) >= limit:
            return records[:limit]


@contextlib.asynccontextmanager
async def _started(consumer: AIOKafkaConsumer) -> AsyncIterator[AIOKafkaConsumer]:
    """The consumer started, and stopped afterwards: also when it could not start (a broker that
    does not answer), which would otherwise leave its client open."""
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_all(
    *, settings: ServiceSettings | None = None, limit: int | None = None, group: str | None = None
) -> list[DeadLetter]:
    settings = settings or ServiceSettings()
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    async with _started(consumer):
        partitions = await partitions_of(consumer, topics.DLQ)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        letters = [_to_letter(r) for r in await _drain(consumer, None)]
    if group is not None:
        letters = [
            letter for letter in letters if letter.headers.get("dlq.consumer.group") == group
        ]
    return letters[:limit] if limit is not None else letters


async def replay(
    *, settings: ServiceSettings | None = None, group: str | None = None, dry_run: bool = False
) -> int:
    settings = settings or ServiceSettings()
    consumer = AIOKafkaConsumer(
        topics.DLQ,
        **client_options(settings),
        group_id=REPLAYER_GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    replayed = 0
    async with _started(consumer):
        # A dry run only reads: no producer (an idempotent one registers with the broker).
        producer = None if dry_run else await start_producer(settings)
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not consumer.assignment():
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("no DLQ partition assigned within 30 s")
                await consumer.getmany(timeout_ms=200)
            for tp in consumer.assignment():
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
            records = await _drain(consumer, None)
            for record in records:
                letter = _to_letter(record)
                if group is not None and letter.headers.get("dlq.consumer.group") != group:
                    continue
                if not letter.origin_topic or VALUE_OMITTED_HEADER in letter.headers:
                    continue  # nothing to put back (a letter without the message it names)
                replayed += 1
                if producer is not None:
                    await producer.send_and_wait(
                        letter.origin_topic,
                        value=letter.value,
                        key=letter.key,
                        headers=letter.replay_headers(),
                    )
            if records and not dry_run and group is None:
                last: dict[TopicPartition, int] = {}
                for record in records:
                    last[TopicPartition(record.topic, record.partition)] = record.offset + 1
                await consumer.commit(last)
        finally:
            if producer is not None:
                await producer.stop()
    return replayed
