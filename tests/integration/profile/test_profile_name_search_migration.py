"""Migration 0003 (names searched regardless of accents) run as operators run it: by the role
that owns the profile database, no superuser, on a database that already holds customers,
beside a service writing to it; then down and up again, and again after a failed build.
Real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from sqlalchemy.engine import make_url

from shared.db import alembic_config, migrate
from shared.devstack import PostgresServer

pytestmark = pytest.mark.integration

NAMES = ["Jürgen Müller", "José Núñez", "Jose Nunez", "François Lefèvre", None]


def _plain(url: str) -> str:
    return url.replace("+asyncpg", "")


@pytest.fixture
async def owned_database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """URL, as its owner (a role without superuser), of a profile database at revision 0002
    with a few customers in it."""
    suffix = uuid.uuid4().hex[:6]
    role, name, password = f"crm_profile_{suffix}", f"crm_profile_owned_{suffix}", suffix
    admin = await asyncpg.connect(_plain(postgres_server.url("postgres")))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {role}")
        url = (
            make_url(postgres_server.url(name))
            .set(username=role, password=password)
            .render_as_string(hide_password=False)
        )
        await asyncio.to_thread(migrate, "profile", url, "0002")
        owner = await asyncpg.connect(_plain(url))
        try:
            await owner.executemany(
                "INSERT INTO customers (id, kind, name, registered_at) VALUES ($1, 'person', $2, now())",
                [(uuid.uuid4(), customer) for customer in NAMES],
            )
        finally:
            await owner.close()
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def _names_matching(db: asyncpg.Connection, term: str) -> list[str]:
    """The whole-name match of search, through the index only."""
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in await db.fetch(
                "EXPLAIN SELECT name FROM customers WHERE unaccent_lower(name) = unaccent_lower($1)",
                term,
            )
        )
        assert "ix_customers_unaccent_lower_name" in plan, plan
        rows = await db.fetch(
            "SELECT name FROM customers WHERE unaccent_lower(name) = unaccent_lower($1) "
            "ORDER BY name",
            term,
        )
    return [row["name"] for row in rows]


async def _indexes(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'customers'")
    return {row["indexname"] for row in rows}


async def _functions(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'unaccent_lower%'")
    return {row["proname"] for row in rows}


async def test_the_database_owner_upgrades_a_database_with_customers(owned_database: str) -> None:
    await asyncio.to_thread(migrate, "profile", owned_database)
    db = await asyncpg.connect(_plain(owned_database))
    try:
        assert (
            await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        )
        # A trusted extension: created by the database's owner, who owns it.
        assert (
            await db.fetchval(
                "SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'unaccent'"
            )
            == make_url(owned_database).username
        )
        assert "ix_customers_lower_name" not in await _indexes(db)
        assert await _names_matching(db, "JURGEN MULLER") == ["Jürgen Müller"]
        assert await _names_matching(db, "jose nunez") == ["Jose Nunez", "José Núñez"]
        assert await _names_matching(db, "francois lefevre") == ["François Lefèvre"]
        # The twin the substring search scans with folds the same way, and ANALYZE keeps
        # statistics on it for the planner's estimates of a term's matches.
        assert await db.fetchval(
            "SELECT unaccent_lower_stable('Straße Ødegård') = unaccent_lower('STRASSE odegard')"
        )
        await db.execute("ANALYZE customers")
        assert await db.fetchval(
            "SELECT count(*) FROM pg_stats_ext_exprs "
            "WHERE statistics_name = 'customers_unaccent_lower_name'"
        )
    finally:
        await db.close()


async def test_an_extension_an_operator_installed_in_another_schema_is_used(
    owned_database: str, postgres_server: PostgresServer
) -> None:
    """Managed PostgreSQL often keeps extensions in a schema of their own, created beforehand
    by an administrator who lets the service's role use it: the functions call it there."""
    admin = await asyncpg.connect(
        _plain(postgres_server.url(make_url(owned_database).database or ""))
    )
    try:
        await admin.execute("CREATE SCHEMA extensions")
        await admin.execute("CREATE EXTENSION unaccent SCHEMA extensions")
        await admin.execute(
            f"GRANT USAGE ON SCHEMA extensions TO {make_url(owned_database).username}"
        )
    finally:
        await admin.close()
    await asyncio.to_thread(migrate, "profile", owned_database)
    db = await asyncpg.connect(_plain(owned_database))
    try:
        assert await _names_matching(db, "jurgen muller") == ["Jürgen Müller"]
    finally:
        await db.close()


async def test_the_downgrade_gives_lower_name_back_and_the_upgrade_runs_again(
    owned_database: str,
) -> None:
    await asyncio.to_thread(migrate, "profile", owned_database)
    await asyncio.to_thread(command.downgrade, alembic_config("profile", owned_database), "0002")
    db = await asyncpg.connect(_plain(owned_database))
    try:
        indexes = await _indexes(db)
        assert "ix_customers_lower_name" in indexes
        assert "ix_customers_unaccent_lower_name" not in indexes
        assert await _functions(db) == set()
        # The extension stays (an operator may have created it); the upgrade then finds it.
        assert await db.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'unaccent'")
        await asyncio.to_thread(migrate, "profile", owned_database)
        assert await _functions(db) == {"unaccent_lower", "unaccent_lower_stable"}
        assert await _names_matching(db, "José Núñez") == ["Jose Nunez", "José Núñez"]
    finally:
        await db.close()


async def _migration_waiting(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'crm-migrate' AND wait_event_type = 'Lock'"
        )
    )


async def test_writes_go_on_while_the_index_waits_for_a_writer(owned_database: str) -> None:
    """The index is built CONCURRENTLY: while the build waits for a transaction that is writing
    customers, other writes go through. A plain CREATE INDEX would queue its lock behind that
    transaction, and every later write behind its lock (here: the lock_timeout's error)."""
    writer = await asyncpg.connect(_plain(owned_database))
    other = await asyncpg.connect(_plain(owned_database))
    try:
        open_write = writer.transaction()
        await open_write.start()
        await writer.execute(
            "INSERT INTO customers (id, kind, name, registered_at) "
            "VALUES ($1, 'person', 'Åsa Öberg', now())",
            uuid.uuid4(),
        )
        migration = asyncio.create_task(asyncio.to_thread(migrate, "profile", owned_database))
        try:
            for _ in range(200):
                if await _migration_waiting(other) or migration.done():
                    break
                await asyncio.sleep(0.05)
            assert not migration.done(), "the build should wait for the open write"
            assert await _migration_waiting(other)
            await other.execute("SET lock_timeout = '3s'")
            await other.execute(
                "INSERT INTO customers (id, kind, name, registered_at) "
                "VALUES ($1, 'person', 'Łukasz Żółć', now())",
                uuid.uuid4(),
            )
        finally:
            await open_write.commit()
            await migration
        assert await _names_matching(other, "asa oberg") == ["Åsa Öberg"]
        assert await _names_matching(other, "LUKASZ ZOLC") == ["Łukasz Żółć"]
        assert "ix_customers_lower_name" not in await _indexes(other)
    finally:
        await writer.close()
        await other.close()


async def test_an_upgrade_whose_build_failed_runs_again(
    owned_database: str, postgres_server: PostgresServer
) -> None:
    """What a failed build leaves: the functions and statistics committed, the new index
    invalid, the old one still there, the revision still 0002. The next run finishes it."""
    await asyncio.to_thread(migrate, "profile", owned_database)
    admin = await asyncpg.connect(
        _plain(postgres_server.url(make_url(owned_database).database or ""))
    )
    try:
        head = await admin.fetchval("SELECT version_num FROM alembic_version")
        await admin.execute(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'ix_customers_unaccent_lower_name'::regclass"
        )
        await admin.execute("CREATE INDEX ix_customers_lower_name ON customers (lower(name))")
        await admin.execute("UPDATE alembic_version SET version_num = '0002'")
    finally:
        await admin.close()

    await asyncio.to_thread(migrate, "profile", owned_database)
    db = await asyncpg.connect(_plain(owned_database))
    try:
        assert await db.fetchval("SELECT version_num FROM alembic_version") == head
        assert await db.fetchval(
            "SELECT indisvalid FROM pg_index "
            "WHERE indexrelid = 'ix_customers_unaccent_lower_name'::regclass"
        )
        assert "ix_customers_lower_name" not in await _indexes(db)
        assert await _names_matching(db, "jurgen muller") == ["Jürgen Müller"]
    finally:
        await db.close()
