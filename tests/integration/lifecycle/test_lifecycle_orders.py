"""Orders on PostgreSQL: a purchase after the customer's latest order reads no stored order
(one at or before it, a possible redelivery, reads only itself), whatever the history; what
needs every order reads them all; and the migration moves the orders kept in ``facts`` to rows
with their facts computed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from integration.lifecycle.lifecycle_helpers import day
from integration.lifecycle.test_lifecycle_batches import apply, events_of, sessions

from services.lifecycle import domain, service
from services.lifecycle.domain import LifecyclePolicy
from shared.db import (
    SessionFactory,
    asyncpg_dsn,
    create_engine,
    migrate,
    session_factory,
)

pytestmark = pytest.mark.integration
__all__ = ["sessions"]  # the fixture, shared with the batch tests


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[set[uuid.UUID], list[Any]]]:
    """What each batch asked of the orders: (customers read whole, (customer, order) named)."""
    seen: list[tuple[set[uuid.UUID], list[Any]]] = []
    stored_orders = service._stored_orders

    async def spy(db: Any, every: set[uuid.UUID], named: Any) -> Any:
        if every or named:  # asked nothing: no statement
            seen.append((set(every), list(named)))
        return await stored_orders(db, every, named)

    monkeypatch.setattr(service, "_stored_orders", spy)
    return seen


async def test_a_purchase_in_order_reads_no_stored_order(
    sessions: SessionFactory, reads: list[tuple[set[uuid.UUID], list[Any]]]
) -> None:
    customer = uuid.uuid4()
    history = [("purchase", n, {"order": f"o{n}"}) for n in range(1, 400, 10)]
    await apply(sessions, events_of([("registered", 0, {}), *history], customer))
    reads.clear()

    await apply(sessions, events_of([("purchase", 401, {"order": "next"})], customer))
    assert reads == []  # after every stored order: a new order, nothing to read
    # An order at the latest's time may be a redelivery: it is looked up, found, ignored.
    redelivered = events_of([("purchase", 401, {"order": "next"})], customer)
    assert await apply(sessions, redelivered) == []
    assert reads == [(set(), [(customer, "next")])]

    reads.clear()
    await apply(sessions, events_of([("purchase", 5, {"order": "late"})], customer))
    await apply(
        sessions, events_of([("refund", 403, {"order": "o21", "total": "25.00"})], customer)
    )
    assert reads == [({customer}, []), ({customer}, [])]


async def test_a_policy_change_has_the_next_event_read_every_order(
    sessions: SessionFactory,
    reads: list[tuple[set[uuid.UUID], list[Any]]],
    service_databases: dict[str, str],
) -> None:
    customer = uuid.uuid4()
    stream = [("registered", 0, {}), *[("purchase", n, {"order": f"o{n}"}) for n in (1, 50, 300)]]
    await apply(sessions, events_of(stream, customer))
    db = await asyncpg.connect(asyncpg_dsn(service_databases["lifecycle"]))
    try:
        # The relationship start under the default policy: a 250-day gap churns (> 4 * 49).
        start = await db.fetchval(
            "SELECT relationship_start FROM customer_lifecycles WHERE customer_id = $1", customer
        )
        assert start == day(300)
        patient = LifecyclePolicy(churn_min_days=365)
        latest = await db.fetchval("SELECT coalesce(max(version), 0) FROM lifecycle_policies")
        await db.execute(
            "INSERT INTO lifecycle_policies (version, policy, changed_at, changed_by) "
            "VALUES ($1, $2::jsonb, now(), 'test')",
            latest + 1,
            patient.model_dump_json(),
        )
        reads.clear()
        await apply(sessions, events_of([("purchase", 310, {"order": "next"})], customer))
        assert reads == [({customer}, [])]
        row = await db.fetchrow(
            "SELECT relationship_start, relationship_policy_version FROM customer_lifecycles "
            "WHERE customer_id = $1",
            customer,
        )
        assert (row["relationship_start"], row["relationship_policy_version"]) == (
            day(1),  # under the patient policy the gap did not churn them
            latest + 1,
        )
    finally:
        await db.execute("DELETE FROM lifecycle_policies WHERE changed_by = 'test'")
        await db.close()


async def test_the_migration_moves_orders_to_rows_and_computes_their_facts(
    postgres_server: Any,
) -> None:
    name = f"crm_lifecycle_orders_{uuid.uuid4().hex[:6]}"
    postgres_server.create_database(name)
    url = postgres_server.url(name)
    await asyncio.to_thread(migrate, "lifecycle", url, "0002")
    customer = uuid.uuid4()
    db = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # Three orders: one fully refunded (not a purchase day), one free (always counts).
        await db.execute(
            """
            INSERT INTO customer_lifecycles (customer_id, stage, since, reason, registered_at,
                idle_since, gap_days, facts)
            VALUES ($1, 'growth', $2, 'first_purchase', $2, $3, 60, $4::jsonb)
            """,
            customer,
            day(1),
            day(40),
            json.dumps(
                {
                    "orders": {
                        "a": [day(1).isoformat(), "20.00", "0"],
                        "b": [day(20).isoformat(), "30.00", "30.00"],
                        "c": [day(40).isoformat(), "0.00", "0"],
                    },
                    "pending_refunds": {},
                    "complaints": {},
                }
            ),
        )
        await asyncio.to_thread(migrate, "lifecycle", url)
        orders = {
            r["order_id"]: domain.Order(r["placed_at"], r["amount"], r["refunded"])
            for r in await db.fetch(
                "SELECT * FROM lifecycle_orders WHERE customer_id = $1", customer
            )
        }
        assert orders == {
            "a": domain.Order(day(1), Decimal("20.00")),
            "b": domain.Order(day(20), Decimal("30.00"), Decimal("30.00")),
            "c": domain.Order(day(40), Decimal("0.00")),
        }
        row = await db.fetchrow(
            "SELECT * FROM customer_lifecycles WHERE customer_id = $1", customer
        )
        assert tuple(row["purchase_days"]) == (day(1).date(), day(40).date())
        assert (row["first_purchase_at"], row["last_purchase_at"], row["latest_order_at"]) == (
            day(1),
            day(40),
            day(40),
        )
        assert row["relationship_policy_version"] is None  # computed from every order next time
        assert "orders" not in (
            await db.fetchval(
                "SELECT facts::text FROM customer_lifecycles WHERE customer_id = $1", customer
            )
        )

        # The next event decides with every order and stores the relationship start.
        engine = create_engine(url, pool_size=1)
        try:
            await apply(
                session_factory(engine), events_of([("purchase", 50, {"order": "d"})], customer)
            )
        finally:
            await engine.dispose()
        row = await db.fetchrow(
            "SELECT * FROM customer_lifecycles WHERE customer_id = $1", customer
        )
        assert (row["relationship_start"], row["relationship_policy_version"]) == (day(1), 0)
        assert len(row["purchase_days"]) == 3

        await asyncio.to_thread(migrate_down, url)
        keys = await db.fetchval(
            "SELECT array_agg(k ORDER BY k) FROM customer_lifecycles, "
            "jsonb_object_keys(facts->'orders') AS k WHERE customer_id = $1",
            customer,
        )
        assert keys == ["a", "b", "c", "d"]
    finally:
        await db.close()


def migrate_down(url: str) -> None:
    from alembic import command

    from shared.db import alembic_config

    command.downgrade(alembic_config("lifecycle", url), "0002")
