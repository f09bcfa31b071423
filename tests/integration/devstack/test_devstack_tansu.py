"""What the embedded Tansu broker does with aiokafka 0.14 (see shared/devstack/tansu.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownError

from shared.devstack import TansuBroker, create_topics, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path_factory.mktemp("tansu"), free_port())
    broker.start()
    yield broker
    broker.stop()


async def test_idempotent_producer_fails_to_start_with_unknown_error(tansu: TansuBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap_servers, enable_idempotence=True)
    try:
        with pytest.raises(UnknownError):
            await asyncio.wait_for(producer.start(), 30)
    finally:
        await producer.stop()
    assert tansu.supports_idempotence is False


async def test_two_group_members_share_the_partitions(tansu: TansuBroker) -> None:
    await create_topics(tansu.bootstrap_servers, {"shared-work": 4})
    members = [
        AIOKafkaConsumer(
            "shared-work",
            bootstrap_servers=tansu.bootstrap_servers,
            group_id="workers",
            enable_auto_commit=False,
            # Tansu completes a rebalance only after the session timeout: keep it short.
            session_timeout_ms=3000,
            heartbeat_interval_ms=500,
        )
        for _ in range(2)
    ]
    for member in members:
        await member.start()
    try:
        async with asyncio.timeout(30):
            while not all(member.assignment() for member in members):
                await asyncio.gather(*(member.getmany(timeout_ms=300) for member in members))
        assigned = [sorted(tp.partition for tp in member.assignment()) for member in members]
    finally:
        for member in members:
            await member.stop()
    assert sorted(assigned[0] + assigned[1]) == [0, 1, 2, 3]


async def test_producing_to_an_unknown_topic_creates_it(tansu: TansuBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap_servers)
    await producer.start()
    try:
        sent = await asyncio.wait_for(producer.send_and_wait("never-created", b"x"), 30)
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics(["never-created"])
    finally:
        await admin.close()
    assert sent.offset == 0
    assert described["error_code"] == 0
    assert len(described["partitions"]) >= 1


async def test_restart_forgets_everything(tansu: TansuBroker) -> None:
    await create_topics(tansu.bootstrap_servers, {"forgotten": 1})
    await asyncio.to_thread(tansu.restart)
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap_servers)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    assert "forgotten" not in topics
    assert tansu.persistent is False
