"""Planner statistics only on the columns statements select rows by (scoring's customer_values,
lifecycle's customer_lifecycles, profile's hot tables): what the migrations set, what ANALYZE
then computes, and that the downgrade gives every column its statistics back. Real PostgreSQL."""

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

MIGRATIONS = {
    # service: (migration module, revision before it)
    "scoring": ("0005_customer_values_statistics", "0004"),
    "lifecycle": ("0004_customer_lifecycles_statistics", "0003"),
    "profile": ("0004_hot_tables_statistics", "0003"),
}
TABLES = {
    "customer_values": "scoring",
    "customer_lifecycles": "lifecycle",
    "customers": "profile",
    "purchases": "profile",
    "purchase_items": "profile",
    "customer_stage": "profile",
    "customer_value": "profile",
}

_CUSTOMERS = (
    "INSERT INTO customers (id, kind, name, email, addresses, tags, custom_attributes, "
    "registered_at) SELECT gen_random_uuid(), 'person', 'Zoë ' || g, 'c' || g || '@example.com', "
    "'[{\"city\": \"Oslo\"}]', ARRAY['vip'], '{\"segment\": 1}', now() "
    "FROM generate_series(1, 50) g RETURNING id"
)
_NEW_PURCHASES = (
    "p AS (INSERT INTO purchases (id, customer_id, order_id, amount, currency, occurred_at, "
    "channel) SELECT gen_random_uuid(), id, 'o-' || id, 12.5, 'EUR', now(), 'web' FROM c "
    "RETURNING id)"
)
# Enough rows per table for ANALYZE to compute statistics for every column it samples.
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
    "customers": _CUSTOMERS,
    "purchases": f"WITH c AS ({_CUSTOMERS}), {_NEW_PURCHASES} SELECT count(*) FROM p",
    "purchase_items": (
        f"WITH c AS ({_CUSTOMERS}), {_NEW_PURCHASES} INSERT INTO purchase_items (purchase_id, position, sku, "
        "category, quantity, unit_price) SELECT id, 1, 'sku-1', 'books', 2, 6.25 FROM p"
    ),
    "customer_stage": (
        "INSERT INTO customer_stage (customer_id, stage, since, reason, event_id) "
        "SELECT gen_random_uuid(), 'growth', now(), 'first_purchase', gen_random_uuid() "
        "FROM generate_series(1, 50)"
    ),
    "customer_value": (
        "INSERT INTO customer_value (customer_id, score, tier, loyalty_index, p_alive, clv, "
        "model_version, scored_at) SELECT gen_random_uuid(), 50.0, 'gold', 0.5, 0.9, 100, 'v1', "
        "now() FROM generate_series(1, 50)"
    ),
}


def selected_by(table: str) -> set[str]:
    service = TABLES[table]
    module = importlib.import_module(
        f"services.{service}.migrations.versions.{MIGRATIONS[service][0]}"
    )
    kept = module.SELECTED_BY
    return set(kept[table] if isinstance(kept, dict) else kept)


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


async def analyze(url: str, table: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    await connection.execute(ROWS[table])
    await connection.execute(f"ANALYZE {table}")
    return connection


async def analyzed_columns(url: str, table: str) -> set[str]:
    connection = await analyze(url, table)
    try:
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


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_analyze_keeps_statistics_only_on_the_columns_rows_are_selected_by(
    table: str, fresh_database
) -> None:  # type: ignore[no-untyped-def]
    url = await fresh_database(TABLES[table])
    found = await targets(url, table)
    kept = selected_by(table)
    assert kept < set(found)
    assert {c for c, t in found.items() if t != 0} == kept
    # ANALYZE computes them for those columns and skips the payload (the JSON, the arrays).
    analyzed = await analyzed_columns(url, table)
    assert analyzed == kept


async def test_the_accent_folded_names_keep_their_statistics(fresh_database) -> None:  # type: ignore[no-untyped-def]
    """name has none of its own, but search's estimates come from the folded names', which
    the index and the statistics object of profile's migration 0003 keep."""
    url = await fresh_database("profile")
    assert (await targets(url, "customers"))["name"] == 0
    connection = await analyze(url, "customers")
    try:
        index = await connection.fetchrow(
            "SELECT n_distinct, most_common_vals IS NOT NULL OR histogram_bounds IS NOT NULL "
            "AS described FROM pg_stats WHERE tablename = 'ix_customers_unaccent_lower_name'"
        )
        extended = await connection.fetchrow(
            "SELECT n_distinct, histogram_bounds::text AS bounds FROM pg_stats_ext_exprs "
            "WHERE statistics_name = 'customers_unaccent_lower_name'"
        )
    finally:
        await connection.close()
    assert index is not None and index["described"]
    assert index["n_distinct"] == -1  # 50 different names in 50 rows
    assert extended is not None and extended["n_distinct"] == -1
    assert "zoe 1" in extended["bounds"]  # folded: "Zoë 1" -> "zoe 1"


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_the_downgrade_gives_every_column_its_statistics_back(
    table: str, fresh_database
) -> None:  # type: ignore[no-untyped-def]
    service = TABLES[table]
    url = await fresh_database(service)
    assert 0 in (await targets(url, table)).values()
    before = MIGRATIONS[service][1]
    await asyncio.to_thread(command.downgrade, alembic_config(service, url), before)
    assert set((await targets(url, table)).values()) == {-1}
    await asyncio.to_thread(migrate, service, url)
    assert {c for c, t in (await targets(url, table)).items() if t != 0} == selected_by(table)
