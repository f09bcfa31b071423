"""The relay's cached partitioner places every key where Kafka's default partitioner does:
one customer's events must stay on one partition whichever client wrote them."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner

from shared.messaging.kafka import key_partitioner


def test_same_partition_as_the_default_partitioner_for_every_key_and_partition_count() -> None:
    default = DefaultPartitioner()
    keys = [str(uuid.uuid4()).encode() for _ in range(500)] + [b"", b"x", "é".encode()]
    for count in (1, 3, 6, 7, 48):
        partitions = list(range(count))
        for key in keys:
            expected = default(key, partitions, partitions)
            assert key_partitioner(key, partitions, partitions) == expected
            assert key_partitioner(key, partitions, partitions) == expected  # cached


def test_a_missing_key_goes_to_an_available_partition() -> None:
    assert key_partitioner(None, [0, 1, 2], [2]) == 2
