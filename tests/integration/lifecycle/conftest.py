"""The lifecycle service running in-process on the session's PostgreSQL and Kafka, on a
FixedClock (business time is what the rules see). Module-scoped: the replay test stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from integration.lifecycle.lifecycle_helpers import T0, Lifecycle, caught_up
from sqlalchemy.ext.asyncio import create_async_engine
from support import eventually, running

from services.lifecycle.main import create_app
from shared.clock import FixedClock
from shared.devstack import Broker


@pytest.fixture(scope="module")
async def lifecycle(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> AsyncIterator[Lifecycle]:
    # The scheduled sweep is driven explicitly (POST evaluate) except in its own test.
    settings = service_settings(
        "lifecycle",
        consumer_batch_size=200,
        sweep_interval_seconds=3600,
        evaluation_poll_seconds=0.3,  # runs asked for with `Prefer: respond-async`
    )
    clock = FixedClock(T0)
    app = create_app(settings=settings, configure_logs=False, clock=clock)
    engine = create_async_engine(settings.database_url, pool_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        async with running(app) as client:
            # Events other tests left on the topics come first: wait until they are consumed.
            await eventually(
                lambda: caught_up(app), timeout=120, what="lifecycle consumer caught up"
            )
            yield Lifecycle(
                client, settings, engine, kafka_broker.bootstrap_servers, clock, producer
            )
    finally:
        await producer.stop()
        await engine.dispose()
