"""`crm replay lifecycle` rebuilds the lifecycle database from the Kafka log with the same stages
and the same history as live processing gave.

This module runs its own service instance: the replay needs the workers stopped. It empties
the lifecycle tables of the session database (every customer is rebuilt from the log).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from integration.lifecycle.lifecycle_helpers import T0, Lifecycle, caught_up, day
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import eventually, running

from services.lifecycle import service
from services.lifecycle.main import create_app
from shared.clock import FixedClock
from shared.db import create_engine, session_factory
from shared.devstack import Broker
from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.replay import rebuild

pytestmark = pytest.mark.integration

History = list[tuple[str | None, str, str, datetime]]


async def snapshot(
    engine: AsyncEngine, customers: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Stage, since, reason, due times and the history (from, to, reason, at) per customer."""
    async with engine.connect() as conn:
        states = {
            r.customer_id: r
            for r in await conn.execute(
                text(
                    "SELECT customer_id, stage, since, reason, decline_due_at, churn_due_at, "
                    "decline_causes FROM customer_lifecycles WHERE customer_id = ANY(:ids)"
                ),
                {"ids": customers},
            )
        }
        history: dict[uuid.UUID, History] = {c: [] for c in customers}
        for r in await conn.execute(
            text(
                "SELECT customer_id, from_stage, to_stage, reason, at FROM stage_transitions "
                "WHERE customer_id = ANY(:ids) ORDER BY customer_id, at, id"
            ),
            {"ids": customers},
        ):
            history[r.customer_id].append((r.from_stage, r.to_stage, r.reason, r.at))
    return {
        c: (
            states[c].stage,
            states[c].since,
            states[c].reason,
            states[c].decline_due_at,
            states[c].churn_due_at,
            sorted(states[c].decline_causes),
            history[c],
        )
        for c in customers
    }


async def test_replay_rebuilds_the_same_stages_and_history(
    service_settings: Callable[..., Any], kafka_broker: Broker
) -> None:
    settings = service_settings("lifecycle", consumer_batch_size=200, sweep_interval_seconds=3600)
    clock = FixedClock(T0)
    app = create_app(settings=settings, configure_logs=False, clock=clock)
    engine = create_async_engine(settings.database_url, pool_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        async with running(app) as client:
            await eventually(lambda: caught_up(app), timeout=120, what="consumer caught up")
            live = Lifecycle(
                client, settings, engine, kafka_broker.bootstrap_servers, clock, producer
            )
            customers = await live_history(live)
            await eventually(live.outbox_empty, timeout=30, what="outbox published")
        before = await snapshot(engine, customers)
        assert [before[c][0] for c in customers] == ["growth", "growth", "churned", "churned"]

        summary = await rebuild(
            "lifecycle",
            service_settings("lifecycle", consumer_batch_size=10_000),
            progress=lambda _: None,
        )
        assert summary["messages"] > 0
        assert summary["rederived_events_dropped"] > 0
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one() == 0

        # Time rules after a customer's last event come from sweeps, not from the log: the
        # last live sweep, run again, re-derives them (changes dated at their due times).
        replay_engine = create_engine(settings.database_url, pool_size=2)
        try:
            await service.evaluate(
                session_factory(replay_engine), as_of=day(300), requested_by="test", now=day(300)
            )
        finally:
            await replay_engine.dispose()
        after = await snapshot(engine, customers)
        for customer in customers:
            assert after[customer] == before[customer], customer
    finally:
        await producer.stop()
        await engine.dispose()


async def live_history(live: Lifecycle) -> list[uuid.UUID]:
    """Four customers through most rules, events arriving as they happen: an event on one topic
    is published once the earlier events of the customer on other topics were consumed (the
    consumer does not order topics against each other; a batch is ordered by business time)."""
    mature = await live.register(day(0))
    for n in (1, 46, 91):
        purchase = await live.purchase(mature, day(n))
    await live.processed(purchase)
    complaint = uuid.uuid4()
    await live.complaint_opened(mature, complaint, day(100), severity="critical")
    await live.complaint_closed(mature, complaint, day(103), satisfaction=5, severity="critical")
    lapsing = await live.register(day(0))
    await live.purchase(lapsing, day(10))
    modelled = await live.register(day(0))
    await live.purchase(modelled, day(5))
    refunded = await live.register(day(0))
    await live.purchase(refunded, day(250), order_id=f"r-{refunded}", amount="80.00")
    low = await live.complaint_opened(refunded, uuid.uuid4(), day(251), severity="low")
    # everything refunded: idle since registration, so lapsing and inactive are due at once
    refund = await live.refund(
        refunded, f"r-{refunded}", day(252), total="80.00", order_amount="80.00"
    )
    await live.processed(low, refund)
    await live.wait_for(mature, "mature", changes=5)

    await live.evaluate(day(200))  # lapsing: mature at 181, lapsing at 130, modelled at 125
    await live.wait_for(lapsing, "decline")
    reactivation = await live.purchase(lapsing, day(150))
    score = await live.publish(
        new_event(
            type=ev.VALUE_SCORED,
            source="/crm/scoring",
            subject=modelled,
            time=day(210),
            data=p.ValueScored(
                customer_id=modelled,
                score=3.0,
                dimensions=p.ValueDimensions(current=1, future=1, credit=100, loyalty=5, growth=0),
                tier=p.Tier.small,
                loyalty=p.LoyaltyScore(
                    index=5,
                    behavioural=5,
                    attitudinal=50,
                    dick_basu="none",
                    jones_sasser="defector",
                ),
                p_alive=0.04,
            ),
        )
    )
    await live.processed(reactivation, score)
    await live.evaluate(day(300))  # inactive: mature at 271; refunded: both rules at day 250
    await live.purchase(mature, day(320))  # winback
    await live.wait_for(mature, "growth", changes=8)
    await live.wait_for(modelled, "churned")
    return [mature, lapsing, modelled, refunded]
