"""Each service's migrations build exactly the schema its ORM models describe, and go down to
nothing and up again. Real PostgreSQL, a fresh database per service."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import alembic_config, migrate
from shared.devstack import PostgresServer
from shared.platform import SERVICES

pytestmark = pytest.mark.integration


async def _differences(url: str, metadata: MetaData) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_build_the_models_schema_and_go_down_and_up(
    service: str, postgres_server: PostgresServer
) -> None:
    name = f"crm_{service}_schema_{uuid.uuid4().hex[:6]}"
    postgres_server.create_database(name)
    url = postgres_server.url(name)
    metadata = importlib.import_module(f"services.{service}.models").Base.metadata

    await asyncio.to_thread(migrate, service, url)
    assert await _differences(url, metadata) == []

    await asyncio.to_thread(command.downgrade, alembic_config(service, url), "base")
    await asyncio.to_thread(migrate, service, url)
    assert await _differences(url, metadata) == []
