"""`driver_connection` on real PostgreSQL: it begins the session's transaction on the driver, and
a connection lost underneath (a database restart) surfaces as SQLAlchemy's disconnect error,
which consumers retry, with the pool told to drop the connection."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from shared.db import create_engine, driver_connection, session_factory
from shared.devstack import PostgresServer
from shared.messaging.consumer import is_transient

pytestmark = pytest.mark.integration


async def test_raw_statements_run_in_the_sessions_transaction(
    postgres_server: PostgresServer,
) -> None:
    engine = create_engine(postgres_server.url("postgres"), pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            db = await driver_connection(session)
            assert db.is_in_transaction()
            await db.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
            await db.execute("INSERT INTO t VALUES (1)")
            count = (await session.execute(text("SELECT count(*) FROM t"))).scalar_one()
            assert count == 1  # the ORM session sees the driver's writes: one transaction
    finally:
        await engine.dispose()


async def test_a_lost_connection_is_a_transient_disconnect(postgres_server: PostgresServer) -> None:
    engine = create_engine(postgres_server.url("postgres"), pool_size=1)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # The pooled connection's server process ends, as in a database restart.
        other = create_engine(postgres_server.url("postgres"), pool_size=1)
        async with other.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await other.dispose()
        with pytest.raises(sa_exc.DBAPIError) as raised:
            async with session_factory(engine)() as session, session.begin():
                await driver_connection(session)
        assert raised.value.connection_invalidated
        assert is_transient(raised.value)
        async with session_factory(engine)() as session, session.begin():
            db = await driver_connection(session)  # the pool made a new connection
            assert await db.fetchval("SELECT 1") == 1
    finally:
        await engine.dispose()
