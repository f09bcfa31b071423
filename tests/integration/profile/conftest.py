"""The profile service running in-process on the session's PostgreSQL and Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from integration.profile.profile_helpers import Profile
from sqlalchemy.ext.asyncio import create_async_engine
from support import running

from services.profile.main import create_app
from shared.devstack import Broker


@pytest.fixture(scope="module")
async def profile(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> AsyncIterator[Profile]:
    settings = service_settings("profile", consumer_batch_size=200)
    app = create_app(settings=settings, configure_logs=False)
    engine = create_async_engine(settings.database_url, pool_size=2)
    async with running(app) as client:
        yield Profile(client, settings, engine, kafka_broker.bootstrap_servers)
    await engine.dispose()
