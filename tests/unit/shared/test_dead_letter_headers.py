"""The headers a dead letter gets: its error cut to the header's size stays UTF-8 text."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiokafka.structs import ConsumerRecord
from support import kafka_record

from shared.events import topics
from shared.messaging.consumer import ConsumerRunner, Message


class _Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **message: Any) -> None:
        self.sent.append({"topic": topic, **message})


def _record(value: bytes) -> ConsumerRecord[bytes, bytes]:
    return kafka_record(value, topic=topics.PURCHASES, partition=3, offset=41)


async def test_a_long_error_in_any_script_is_cut_to_whole_characters() -> None:
    producer = _Producer()
    runner = ConsumerRunner(
        service="dlq-test",
        consumer=cast(Any, None),
        producer=cast(Any, producer),
        sessions=cast(Any, None),
        tables=cast(Any, None),
        handlers={},
        group_id="g",
    )
    # As `_one` keeps it: 2,000 characters, here of three bytes each in UTF-8.
    error = f"ValueError: {'顧客' * 1000}"[:2000]
    failed = Message(_record(b"{}"), error=error, error_type="ValueError", attempts=3)
    await runner._dead_letter([failed], asyncio.Event())

    [letter] = producer.sent
    headers = dict(letter["headers"])
    text = headers["dlq.error"].decode()  # strict: the whole header is UTF-8
    assert len(headers["dlq.error"]) <= 4000
    assert error.startswith(text) and len(text) > 1000
    assert headers["dlq.origin.topic"] == topics.PURCHASES.encode()
    assert (headers["dlq.origin.partition"], headers["dlq.origin.offset"]) == (b"3", b"41")
