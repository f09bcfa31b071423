"""Planner statistics only on the columns statements select rows by (scoring's customer_values,
lifecycle's customer_lifecycles): what the migrations set, what ANALYZE then computes, and
that the downgrade gives every column its statistics back. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import uuid

import asyncpg
import pytest
from alembic import command

from shared.db import alembic_config, migrate
from shared.devstack import PostgresServer

pytestmark = pytest.mark.integration

CASES = {
    # service: (table, migration module, revision before it)
    "scoring": ("customer_values", "0005_customer_values_statistics", "0004"),
    "lifecycle": ("customer_lifecycles", "0004_customer_lifecycles_statistics", "0003"),
}

# One row per table, enough for ANALYZE to compute statistics for every column it samples.
ROWS = {
    "customer_values": (
        "INSERT INTO customer_values (customer_id, tier, net_revenue, published_because) "
        "SELECT gen_random_uuid(), 'gold', 10.5, '[{\"type\": \"x\"}]' FROM generate_series(1, 50)"
    ),
    "customer_lifecycles": (
        "INSERT INTO customer_lifecycles (customer_id, stage, since, reason, registered_at, "
        "idle_since, gap_days, facts, purchase_days, decline_due_at) "
        "SELECT gen_random_uuid(), 'growth', now(), 'first_purchase', now(), now(), 30, '{}', "
        "ARRAY[current_date], now() FROM generate_series(1, 50)"
    ),
}


def selected_by(service: str) -> set[str]:
    module = importlib.import_module(f"services.{service}.migrations.versions.{CASES[service][1]}")
    return set(module.SELECTED_BY)


async def targets(url: str, table: str) -> dict[str, int]:
    """column -> statistics target (-1: the default)."""
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch(
            "SELECT attname, coalesce(attstattarget, -1) AS target FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
            table,
        )
    finally:
        await connection.close()
    return {r["attname"]: r["target"] for r in rows}


async def analyzed_columns(url: str, table: str) -> set[str]:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await connection.execute(ROWS[table])
        await connection.execute(f"ANALYZE {table}")
        rows = await connection.fetch(
            "SELECT attname FROM pg_stats WHERE schemaname = 'public' AND tablename = $1", table
        )
    finally:
        await connection.close()
    return {r["attname"] for r in rows}


@pytest.fixture
def fresh_database(postgres_server: PostgresServer):  # type: ignore[no-untyped-def]
    async def make(service: str) -> str:
        name = f"crm_{service}_stats_{uuid.uuid4().hex[:6]}"
        postgres_server.create_database(name)
        url = postgres_server.url(name)
        await asyncio.to_thread(migrate, service, url)
        return url

    return make


@pytest.mark.parametrize("service", sorted(CASES))
async def test_analyze_keeps_statistics_only_on_the_columns_rows_are_selected_by(
    service: str, service_databases: dict[str, str]
) -> None:
    table = CASES[service][0]
    url = service_databases[service]
    found = await targets(url, table)
    kept = selected_by(service)
    assert kept < set(found)
    assert {c for c, t in found.items() if t != 0} == kept
    # ANALYZE computes them for those columns and skips the payload (the JSON, the arrays).
    analyzed = await analyzed_columns(url, table)
    assert analyzed == kept


@pytest.mark.parametrize("service", sorted(CASES))
async def test_the_downgrade_gives_every_column_its_statistics_back(
    service: str, fresh_database
) -> None:  # type: ignore[no-untyped-def]
    table, _, before = CASES[service]
    url = await fresh_database(service)
    assert 0 in (await targets(url, table)).values()
    await asyncio.to_thread(command.downgrade, alembic_config(service, url), before)
    assert set((await targets(url, table)).values()) == {-1}
    await asyncio.to_thread(migrate, service, url)
    assert {c for c, t in (await targets(url, table)).items() if t != 0} == selected_by(service)
