"""Every connection the services open runs in UTC, whatever the server's default time zone."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import text

from shared.db import asyncpg_dsn, create_engine, server_settings
from shared.devstack import PostgresServer

pytestmark = pytest.mark.integration


async def test_sessions_are_utc_on_a_database_set_to_another_zone(
    postgres_server: PostgresServer,
) -> None:
    name = f"tz_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(postgres_server.url("postgres")))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.execute(f"ALTER DATABASE {name} SET timezone TO 'Europe/Berlin'")
        url = postgres_server.url(name)
        plain = await asyncpg.connect(asyncpg_dsn(url))
        try:  # the database's own default, which a connection without the settings gets
            assert await plain.fetchval("SHOW timezone") == "Europe/Berlin"
        finally:
            await plain.close()
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                zone = (await conn.execute(text("SHOW timezone"))).scalar_one()
                as_json = (
                    await conn.execute(
                        text("SELECT json_build_object('at', '2026-03-01T09:00:00Z'::timestamptz)")
                    )
                ).scalar_one()
        finally:
            await engine.dispose()
        assert zone == "UTC"
        assert as_json == {"at": "2026-03-01T09:00:00+00:00"}
        pooled = await asyncpg.connect(asyncpg_dsn(url), server_settings=server_settings("t"))
        try:  # the settings profile's read pool opens its connections with
            assert await pooled.fetchval("SHOW timezone") == "UTC"
        finally:
            await pooled.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
