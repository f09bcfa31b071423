"""Handler cost per event against the length of the customers' histories (scoring, lifecycle).

In the services' own databases (fresh customer ids, business times in the past), through each
service's `apply_events`, one transaction per batch as the consumer runs them (the inbox and
the broker left out): `customers` customers are registered, then get one purchase each per
round, a batch per round. At each history length in `lengths`, `rounds` rounds of each variant
are timed, interleaved: scoring with its stored purchase summaries (what the handlers do);
scoring with the summaries of the batch's customers deleted first (untimed), the same-run
baseline: the whole history read, as every event did before the summaries (and as customers
with fewer than `facts.SUMMARY_MIN_ORDERS` purchases still do); lifecycle.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.stack import BenchStack
from services.lifecycle import service as lifecycle
from services.scoring import service as scoring
from services.scoring.config import ScoringSettings
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev

Echo = Callable[[str], None]
CATEGORIES = ("books", "music", "garden", "kitchen", "toys", "sports")
_DROP_SUMMARIES = "DELETE FROM ledger_summaries WHERE customer_id = ANY($1::uuid[])"


def _registered(customer_id: uuid.UUID, at: datetime) -> CloudEvent[Any]:
    return new_event(
        type=ev.CUSTOMER_REGISTERED,
        source="/crm/profile",
        subject=customer_id,
        time=at,
        data=p.CustomerRegistered(customer_id=customer_id, kind=p.CustomerKind.person),
    )


def _purchase(customer_id: uuid.UUID, at: datetime, k: int) -> CloudEvent[Any]:
    amount = Decimal(20 + (k * 7919 + customer_id.int) % 180)
    category = CATEGORIES[(k + customer_id.int) % len(CATEGORIES)]
    return new_event(
        type=ev.PURCHASE_RECORDED,
        source="/crm/profile",
        subject=customer_id,
        time=at,
        data=p.PurchaseRecorded(
            customer_id=customer_id,
            purchase_id=uuid.uuid4(),
            order_id=f"history-{uuid.uuid4().hex[:16]}",
            amount=amount,
            currency="USD",
            items=[
                p.PurchaseItem(
                    sku=f"sku-{category}", category=category, quantity=1, unit_price=amount
                )
            ],
        ),
    )


async def measure(
    stack: BenchStack,
    *,
    customers: int = 400,
    lengths: Sequence[int] = (2, 20, 65, 200),
    rounds: int = 5,
    echo: Echo,
) -> dict[str, Any]:
    engines = {
        name: create_async_engine(
            stack.service_db(name).replace("postgresql://", "postgresql+asyncpg://", 1)
        )
        for name in ("scoring", "lifecycle")
    }
    sessions = {name: async_sessionmaker(engine) for name, engine in engines.items()}
    settings = ScoringSettings(currency="USD")
    ids = [uuid.uuid4() for _ in range(customers)]
    # Two days between rounds, from far enough back that 200 rounds end before now: the windows
    # of 180, 360 and 365 days are crossed on the way.
    start = datetime.now(UTC) - timedelta(days=2 * max(lengths) + 30 * rounds + 30)
    made = 0

    async def batch(name: str, events: list[CloudEvent[Any]]) -> float:
        session: AsyncSession
        async with sessions[name]() as session, session.begin():
            began = time.perf_counter()
            if name == "scoring":
                await scoring.apply_events(session, events, settings=settings)
            else:
                await lifecycle.apply_events(session, events)
        return time.perf_counter() - began

    def round_of(k: int) -> list[CloudEvent[Any]]:
        at = start + timedelta(days=2 * k, hours=k % 24)
        return [_purchase(c, at + timedelta(seconds=j), k) for j, c in enumerate(ids)]

    async def drop_summaries() -> None:
        async with engines["scoring"].connect() as connection:
            raw: Any = (await connection.get_raw_connection()).driver_connection
            await raw.execute(_DROP_SUMMARIES, ids)
            await connection.commit()

    async def timed() -> dict[str, float]:
        """Median µs per event of each variant, their rounds interleaved (load drifts)."""
        nonlocal made
        seconds: dict[str, list[float]] = {"scoring": [], "whole": [], "lifecycle": []}
        for _ in range(rounds):
            for variant in seconds:
                events = round_of(made)
                made += 1
                if variant == "whole":
                    await drop_summaries()
                timed_one = "lifecycle" if variant == "lifecycle" else "scoring"
                seconds[variant].append(await batch(timed_one, events))
                # The other service sees the same round, untimed.
                await batch("scoring" if timed_one == "lifecycle" else "lifecycle", events)
        return {k: statistics.median(v) / customers * 1e6 for k, v in seconds.items()}

    results: list[dict[str, Any]] = []
    try:
        registered = [_registered(c, start - timedelta(days=1)) for c in ids]
        for name in ("scoring", "lifecycle"):
            await batch(name, registered)
        for length in lengths:
            while made < length:
                events = round_of(made)
                made += 1
                for name in ("scoring", "lifecycle"):
                    await batch(name, events)
            orders_before = made
            us = await timed()
            row = {
                "orders_before": orders_before,
                "scoring_us": us["scoring"],
                "scoring_without_summaries_us": us["whole"],
                "lifecycle_us": us["lifecycle"],
            }
            results.append(row)
            echo(
                f"  history {row['orders_before']:>3} orders: scoring {row['scoring_us']:.0f} µs/event "
                f"(whole history read: {row['scoring_without_summaries_us']:.0f}), "
                f"lifecycle {row['lifecycle_us']:.0f} µs/event"
            )
    finally:
        for engine in engines.values():
            await engine.dispose()
    return {"customers": customers, "rounds": rounds, "by_history": results}
