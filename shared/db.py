"""Database plumbing: engines made in the lifespan, naming conventions, per-service Alembic."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import MetaData, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SessionFactory = async_sessionmaker[AsyncSession]


def make_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def server_settings(application_name: str) -> dict[str, str]:
    """Session settings of every connection: UTC whatever the server's default (Debian's initdb
    takes the machine's zone), so times PostgreSQL writes as text, in JSON say, read alike."""
    return {"application_name": application_name, "timezone": "UTC"}


def create_engine(url: str, *, pool_size: int = 10, application_name: str = "crm") -> AsyncEngine:
    """No pre-ping (with asyncpg it costs three round trips on every checkout): a connection lost
    to a database restart fails its statement once, which SQLAlchemy reports as a disconnect and
    answers by invalidating the whole pool; HTTP turns that one failure into a 503 with
    Retry-After and consumers retry the batch, so nothing is lost."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"server_settings": server_settings(application_name)},
    )


def session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """One use case, one transaction: commit on success, roll back on any error."""
    async with factory() as session, session.begin():
        yield session


@asynccontextmanager
async def held_while_running(factory: SessionFactory, key: int) -> AsyncIterator[None]:
    """Hold the session advisory lock `key` on a connection of its own, outside any transaction,
    while the block runs: a long job's sign that it is at work. When its process stops, the
    connection closes and the lock is free, which `nobody_holds` tells; take it before the job's
    row says `running`."""
    async with factory() as session:
        connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost connection has released it already
                await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


async def nobody_holds(session: AsyncSession, key: int) -> bool:
    """Whether no process holds the lock `key` of `held_while_running` (tried for the rest of
    this transaction only)."""
    taken = await session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key})
    return bool(taken.scalar())


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session's transaction, for array-bound bulk SQL and COPY.

    SQLAlchemy begins the driver-level transaction on the session's first statement; when none
    ran yet, it is begun here (raw statements would otherwise run outside it, committed at once)
    the way that first statement would begin it, without a statement of its own.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    if not driver.is_in_transaction():
        adapter = raw.dbapi_connection
        if getattr(adapter, "_started", True) is False:
            # SQLAlchemy's asyncpg adapter: BEGIN as its cursor does before a first statement,
            # so that its commit and rollback end this transaction.
            try:
                await adapter._start_transaction()  # type: ignore[union-attr]
            except Exception:
                # A lost connection (a database restart): met again through a statement,
                # SQLAlchemy reports it as its own error, a disconnect that invalidates the pool
                # and that consumers retry, instead of the driver's, which they would not.
                await connection.execute(text("SELECT 1"))
        else:
            await connection.execute(text("SELECT 1"))
    return driver


def asyncpg_dsn(url: str) -> str:
    """SQLAlchemy URL -> plain libpq DSN for asyncpg (LISTEN connections, bulk COPY)."""
    parsed = make_url(url).set(drivername="postgresql")
    if "ssl" in parsed.query:  # SQLAlchemy's asyncpg `ssl=` is libpq's `sslmode=`
        mode = parsed.query["ssl"]
        parsed = parsed.difference_update_query(["ssl"]).update_query_dict(
            {"sslmode": mode if isinstance(mode, str) else mode[0]}
        )
    return parsed.render_as_string(hide_password=False)


def statistics_only_on(op: Any, table: str, keep: Iterable[str]) -> None:
    """For a migration: ANALYZE keeps statistics only on `keep` (the columns that statements
    filter, join, group or sort on) and none on the table's other columns as they are now.

    Statistics of a column serve only the planner's estimates of predicates over it, while
    computing them is CPU in one burst that autovacuum does not throttle (its cost limit meters
    page accesses, not the sorting of sample values): on a wide row of numerics, arrays and
    JSON it is most of an ANALYZE. Columns added later get statistics as usual."""
    keep = set(keep)
    columns = _columns(op, table)
    missing = keep - set(columns)
    if missing:
        raise ValueError(f"{table} has no column(s) {sorted(missing)} to keep statistics on")
    _set_statistics(op, table, [column for column in columns if column not in keep], 0)


def statistics_on_every_column(op: Any, table: str) -> None:
    """Undo `statistics_only_on`: every column back to the default statistics target."""
    _set_statistics(op, table, _columns(op, table), -1)


def _columns(op: Any, table: str) -> list[str]:
    rows = op.get_bind().execute(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        {"table": table},
    )
    return [row[0] for row in rows]


def _set_statistics(op: Any, table: str, columns: list[str], target: int) -> None:
    if columns:
        changes = ", ".join(f"ALTER COLUMN {c} SET STATISTICS {target}" for c in columns)
        op.execute(f"ALTER TABLE {table} {changes}")


def migrations_dir(service: str) -> Path:
    return Path(__file__).resolve().parent.parent / "services" / service / "migrations"


def alembic_config(service: str, url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(service)))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["service"] = service
    return cfg


def migrate(service: str, url: str, revision: str = "head") -> None:
    """Upgrade one service's database (blocking; call from a thread inside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(service, url), revision)


def run_alembic_env(target_metadata: MetaData) -> None:
    """Body of every service's migrations/env.py: online, async, one transaction per migration."""
    import asyncio

    from alembic import context
    from sqlalchemy.engine import Connection
    from sqlalchemy.pool import NullPool

    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set (use shared.db.migrate or `crm migrate`)"

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={"server_settings": server_settings("crm-migrate")},
        )
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(run())
