"""A throw-away database with the messaging tables (and the outbox NOTIFY trigger) for tests of
the shared messaging pieces."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine
from shared.devstack import PostgresServer
from shared.messaging.tables import NOTIFY_FUNCTION_SQL, NOTIFY_TRIGGER_SQL


@asynccontextmanager
async def messaging_database(
    postgres_server: PostgresServer, metadata: MetaData, *, prefix: str
) -> AsyncIterator[AsyncEngine]:
    name = f"crm_{prefix}_{uuid.uuid4().hex[:6]}"
    postgres_server.create_database(name)
    engine = create_engine(postgres_server.url(name))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(text(NOTIFY_FUNCTION_SQL))
        await conn.execute(text(NOTIFY_TRIGGER_SQL))
    try:
        yield engine
    finally:
        await engine.dispose()
