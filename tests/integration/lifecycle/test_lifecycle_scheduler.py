"""The scheduled sweep applies the time rules on its own, as of the service clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from integration.lifecycle.lifecycle_helpers import T0, Lifecycle, caught_up, day, moves
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import eventually, running

from services.lifecycle.main import create_app
from shared.clock import FixedClock
from shared.devstack import Broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def swept(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> AsyncIterator[Lifecycle]:
    settings = service_settings("lifecycle", consumer_batch_size=200, sweep_interval_seconds=0.3)
    clock = FixedClock(T0)
    app = create_app(settings=settings, configure_logs=False, clock=clock)
    engine = create_async_engine(settings.database_url, pool_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        async with running(app) as client:
            await eventually(lambda: caught_up(app), timeout=120, what="consumer caught up")
            yield Lifecycle(
                client, settings, engine, kafka_broker.bootstrap_servers, clock, producer
            )
    finally:
        await producer.stop()
        await engine.dispose()


async def test_the_scheduled_sweep_moves_customers_as_of_the_clock(swept: Lifecycle) -> None:
    customer = await swept.register(day(0))
    await swept.purchase(customer, day(10))
    await swept.wait_for(customer, "growth")
    swept.clock.set(day(140))
    body = await swept.wait_for(customer, "decline", timeout=20)
    assert moves(body)[-1] == ("growth", "decline", "lapsing")
    assert datetime.fromisoformat(body["since"]) == day(130)
    run_id = body["history"][-1]["evaluation_run_id"]
    async with swept.engine.connect() as conn:
        run = (
            await conn.execute(
                text("SELECT requested_by, as_of FROM evaluation_runs WHERE run_id = :r"),
                {"r": run_id},
            )
        ).one()
    assert run.requested_by == "lifecycle-sweep"
    assert run.as_of == day(140)


async def test_the_sweep_prunes_its_empty_runs_past_their_retention(swept: Lifecycle) -> None:
    """One sweep a minute that moves nobody is noise after a week; what moved customers, was
    asked for or failed stays."""
    now = day(400)
    old, recent = now - timedelta(hours=200), now - timedelta(hours=1)
    runs = {
        "old empty sweep": ("schedule", "succeeded", "[]", old),
        "recent empty sweep": ("schedule", "succeeded", "[]", recent),
        "old sweep that moved": ("schedule", "succeeded", '[{"from": "growth"}]', old),
        "old empty request": ("request", "succeeded", "[]", old),
        "old failed sweep": ("schedule", "failed", "[]", old),
    }
    ids = {name: uuid.uuid4() for name in runs}
    async with swept.engine.begin() as conn:
        for name, (trigger, status, moved, at) in runs.items():
            await conn.execute(
                text(
                    "INSERT INTO evaluation_runs (run_id, status, trigger, as_of, requested_at, "
                    "requested_by, moved) VALUES (:id, :status, :trigger, :at, :at, 'test', "
                    "CAST(:moved AS jsonb))"
                ),
                {"id": ids[name], "status": status, "trigger": trigger, "at": at, "moved": moved},
            )

    async def left() -> set[str] | None:
        async with swept.engine.connect() as conn:
            found = {
                row[0]
                for row in await conn.execute(
                    text("SELECT run_id FROM evaluation_runs WHERE run_id = ANY(:ids)"),
                    {"ids": list(ids.values())},
                )
            }
        names = {name for name, run_id in ids.items() if run_id in found}
        return names if "old empty sweep" not in names else None

    assert swept.settings.empty_sweep_retention_hours == 168
    swept.clock.set(now)
    assert await eventually(left, timeout=20, what="the old empty sweep pruned") == set(runs) - {
        "old empty sweep"
    }


async def test_the_sweep_prunes_low_scores_whose_customer_never_came(swept: Lifecycle) -> None:
    """A low score waits for its customer's first lifecycle event; one of a customer lifecycle
    never hears of is deleted after `LIFECYCLE_LOW_SCORE_RETENTION_DAYS` (wall clock)."""
    now = day(500)
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    customers = {"old": uuid.uuid4(), "recent": uuid.uuid4()}
    async with swept.engine.begin() as conn:
        for name, remembered in (("old", old), ("recent", recent)):
            await conn.execute(
                text(
                    "INSERT INTO early_low_scores (customer_id, scored_at, p_alive, remembered_at)"
                    " VALUES (:c, :scored, 0.01, :remembered), (:c, :later, 0.02, :remembered)"
                ),
                {
                    "c": customers[name],
                    "scored": day(300),
                    "later": day(301),
                    "remembered": remembered,
                },
            )

    async def left() -> dict[str, int] | None:
        async with swept.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT customer_id, count(*) FROM early_low_scores"
                    " WHERE customer_id = ANY(:ids) GROUP BY customer_id"
                ),
                {"ids": list(customers.values())},
            )
            counts = {row[0]: row[1] for row in rows}
        found = {name: counts.get(cid, 0) for name, cid in customers.items()}
        return found if found["old"] == 0 else None

    assert swept.settings.low_score_retention_days == 30
    swept.clock.set(now)
    assert await eventually(left, timeout=20, what="the old low scores pruned") == {
        "old": 0,
        "recent": 2,
    }
