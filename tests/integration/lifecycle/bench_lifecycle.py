"""Lifecycle benchmarks, each against a baseline measured in the same run on the same data.

1. Consumer throughput: events/s the lifecycle consumer sustains (batched, one transaction per
   batch, inbox, state, history, outbox) vs a raw consume of the same messages (bytes only);
   and the CPU each costs per event (in the consumer's process and in PostgreSQL), which
   compares better than rates on a shared, loaded machine.
2. Sweep: the set-based time rules over 1,000,000 customers vs a plain sequential scan of the
   same table.

Not collected by `pytest tests` (the file name does not start with test_); run it on purpose:

    .venv/bin/python -m pytest tests/integration/lifecycle/bench_lifecycle.py -q -s

Sizes: CRM_BENCH_EVENTS (default 20000), CRM_BENCH_CUSTOMERS (default 1000000).
CRM_BENCH_OUT=path writes the results as JSON as well.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text

from services.lifecycle import service
from services.lifecycle.handlers import HANDLERS, PROCESS
from services.lifecycle.models import MESSAGING
from shared.db import create_engine, migrate, session_factory
from shared.devstack import Broker, PostgresServer, create_topics
from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import ConsumerRunner

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("CRM_BENCH_EVENTS", "20000"))
CUSTOMERS = int(os.environ.get("CRM_BENCH_CUSTOMERS", "1000000"))
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def bench_database(postgres_server: PostgresServer) -> str:
    name = f"crm_lifecycle_bench_{uuid.uuid4().hex[:6]}"
    postgres_server.create_database(name)
    url = postgres_server.url(name)
    migrate("lifecycle", url)
    return url


@pytest.mark.timeout(3600)
async def test_bench_lifecycle(bench_database: str, kafka_broker: Broker) -> None:
    results: dict[str, Any] = {}
    results["consumer"] = await bench_consumer(bench_database, kafka_broker)
    print("consumer:", results["consumer"], flush=True)
    results["sweep"] = await bench_sweep(bench_database)
    print_table(results)
    if out := os.environ.get("CRM_BENCH_OUT"):
        await asyncio.to_thread(Path(out).write_text, json.dumps(results, indent=2))


# --- consumer -----------------------------------------------------------------------------


def workload(n_events: int) -> list[Any]:
    """Registrations, purchases (some refunded) and complaints, ~10 events per customer."""
    events: list[Any] = []
    while len(events) < n_events:
        customer = uuid.uuid4()
        start = T0 + timedelta(days=len(events) % 97)
        events.append(
            new_event(
                type=ev.CUSTOMER_REGISTERED,
                source="/crm/profile",
                subject=customer,
                time=start,
                data=p.CustomerRegistered(customer_id=customer, kind=p.CustomerKind.person),
            )
        )
        for k in range(8):
            events.append(
                new_event(
                    type=ev.PURCHASE_RECORDED,
                    source="/crm/profile",
                    subject=customer,
                    time=start + timedelta(days=1 + 23 * k),
                    data=p.PurchaseRecorded(
                        customer_id=customer,
                        purchase_id=uuid.uuid4(),
                        order_id=f"o-{k}",
                        amount=Decimal("25.00") + k,
                        currency="EUR",
                    ),
                )
            )
        complaint = uuid.uuid4()
        events.append(
            new_event(
                type=ev.COMPLAINT_OPENED,
                source="/crm/complaints",
                subject=customer,
                time=start + timedelta(days=200),
                data=p.ComplaintOpened(
                    complaint_id=complaint,
                    customer_id=customer,
                    severity=p.Severity.high,
                    channel=p.ComplaintChannel.email,
                    category=p.ComplaintCategory.delivery,
                    first_response_due=start + timedelta(days=200, hours=4),
                    resolution_due=start + timedelta(days=203),
                ),
            )
        )
    return events[:n_events]


async def produce(broker: Broker, topic_of: dict[str, str], events: list[Any]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic_of[ev.topic_for(e.type)], value=e.to_bytes(), key=e.subject.encode()
            )
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events)


async def bench_consumer(database_url: str, broker: Broker) -> dict[str, Any]:
    prefix = f"bench.{uuid.uuid4().hex[:6]}"
    topic_of = {
        "crm.customers.v1": f"{prefix}.customers",
        "crm.purchases.v1": f"{prefix}.purchases",
        "crm.complaints.v1": f"{prefix}.complaints",
    }
    await create_topics(broker.bootstrap_servers, {t: 6 for t in topic_of.values()})
    count = await produce(broker, topic_of, workload(EVENTS))
    # The produced events are not kept: the service holds no such heap, and the garbage
    # collector would scan it on every full collection during the consumer's run.
    gc.collect()

    # Baseline: consume the same messages, bytes only.
    raw_cpu_started = time.process_time()
    raw_seconds = await raw_consume(broker, list(topic_of.values()), count)
    raw_cpu = time.process_time() - raw_cpu_started

    engine = create_engine(database_url, pool_size=4)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=500,
    )
    await consumer.start()
    dlq_producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await dlq_producer.start()
    try:
        partitions = await assigned(consumer, list(topic_of.values()))
        end = await consumer.end_offsets(partitions)
        runner = ConsumerRunner(
            service="lifecycle",
            consumer=consumer,
            producer=dlq_producer,
            sessions=session_factory(engine),
            tables=MESSAGING,
            handlers=HANDLERS,
            process=PROCESS,
            group_id="lifecycle-bench",
            batch_size=500,
            commit_offsets=False,
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        await runner.run(asyncio.Event(), until=end)
        seconds = time.perf_counter() - started
        consumer_cpu = time.process_time() - cpu_started
        async with engine.connect() as conn:
            database_cpu = await backends_cpu_seconds(conn)
            stages = dict(
                (
                    await conn.execute(
                        text("SELECT stage, count(*) FROM customer_lifecycles GROUP BY stage")
                    )
                ).all()
            )
            changes = (
                await conn.execute(text("SELECT count(*) FROM stage_transitions"))
            ).scalar_one()
    finally:
        await dlq_producer.stop()
        await consumer.stop()
        await engine.dispose()
    assert runner.processed == count
    lifecycle_rate = count / seconds
    raw_rate = count / raw_seconds
    return {
        "events": count,
        "lifecycle_events_per_s": round(lifecycle_rate),
        "raw_consume_events_per_s": round(raw_rate),
        "ratio_lifecycle_to_raw": round(lifecycle_rate / raw_rate, 4),
        # CPU per event: steadier than rates on a shared machine (wall time includes waiting
        # for a core). The consumer's process; PostgreSQL's backends when the server is local.
        "consumer_cpu_us_per_event": round(1e6 * consumer_cpu / count, 1),
        "raw_consume_cpu_us_per_event": round(1e6 * raw_cpu / count, 1),
        "database_cpu_us_per_event": round(1e6 * database_cpu / count, 1)
        if database_cpu is not None
        else None,
        "stage_changes_written": changes,
        "stages": stages,
    }


async def backends_cpu_seconds(conn: Any) -> float | None:
    """CPU used so far by the PostgreSQL backends of this database (None unless local)."""
    pids = (
        await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
    ).scalars()
    return _cpu_seconds(list(pids))


def _cpu_seconds(pids: list[int]) -> float | None:
    total = 0.0
    try:
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
    return total


async def assigned(consumer: AIOKafkaConsumer, topics: list[str]) -> list[Any]:
    from aiokafka import TopicPartition

    cluster = await consumer._client.fetch_all_metadata()
    partitions = [
        TopicPartition(t, part)
        for t in topics
        for part in sorted(cluster.partitions_for_topic(t) or [])
    ]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    return partitions


async def raw_consume(broker: Broker, topics: list[str], expected: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=500,
    )
    await consumer.start()
    try:
        await assigned(consumer, topics)
        seen = 0
        started = time.perf_counter()
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            seen += sum(len(records) for records in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


# --- sweep --------------------------------------------------------------------------------

# One million customers in growth, mature and decline, with due columns exactly as
# domain.due_times_for computes them (g from 30 to 89 days, idle from 0 to 364 days before).
_POPULATE = """
INSERT INTO customer_lifecycles (customer_id, stage, since, reason, registered_at,
    stage_before_decline, idle_since, gap_days, decline_due_at, churn_due_at, facts,
    purchase_days, first_purchase_at, last_purchase_at, latest_order_at)
SELECT gen_random_uuid(), stage, since, reason, registered_at, before, idle, gap,
    CASE WHEN stage = 'decline' THEN NULL
         ELSE greatest(since, idle + make_interval(days => greatest(60, 2 * gap::int))) END,
    CASE WHEN stage = 'decline' THEN greatest(since, idle + make_interval(days => greatest(180, 4 * gap::int)))
         ELSE greatest(since, idle + make_interval(days => greatest(60, 2 * gap::int)),
                       idle + make_interval(days => greatest(180, 4 * gap::int))) END,
    jsonb_build_object('pending_refunds', '{}'::jsonb, 'complaints', '{}'::jsonb),
    -- Two orders, gap days apart (their rows are not needed by the sweep).
    ARRAY[CAST(idle - make_interval(days => gap::int) AS date), CAST(idle AS date)],
    idle - make_interval(days => gap::int), idle, idle
FROM (
    SELECT i,
        CASE WHEN i % 10 < 6 THEN 'growth' WHEN i % 10 < 8 THEN 'mature' ELSE 'decline' END AS stage,
        CASE WHEN i % 10 < 6 THEN 'first_purchase' WHEN i % 10 < 8 THEN 'established' ELSE 'lapsing' END AS reason,
        CASE WHEN i % 10 >= 8 THEN 'growth' END AS before,
        CAST(:t0 AS timestamptz) + make_interval(days => i % 365) AS idle,
        CAST(:t0 AS timestamptz) + make_interval(days => i % 365) - interval '400 days' AS registered_at,
        CAST(30 + i % 60 AS float8) AS gap,
        CAST(:t0 AS timestamptz) + make_interval(days => i % 365)
            + CASE WHEN i % 10 >= 8 THEN make_interval(days => greatest(60, 2 * (30 + i % 60))) ELSE interval '0' END
            AS since
    FROM generate_series(1, :n) AS i
) AS customers
"""


async def bench_sweep(database_url: str) -> dict[str, Any]:
    """A routine sweep (1% of the customers due) and a backfill (most of them due), each
    against a plain sequential scan of the same table."""
    engine = create_engine(database_url, pool_size=4)
    sessions = session_factory(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("TRUNCATE customer_lifecycles, stage_transitions, outbox, inbox")
            )
            started = time.perf_counter()
            await conn.execute(text(_POPULATE), {"t0": T0, "n": CUSTOMERS})
            populate_seconds = time.perf_counter() - started
        await vacuum(engine)
        scan_seconds = await plain_scan(engine)
        async with engine.connect() as conn:
            routine_as_of = (
                await conn.execute(
                    text(
                        "SELECT percentile_disc(0.01) WITHIN GROUP (ORDER BY decline_due_at) "
                        "FROM customer_lifecycles"
                    )
                )
            ).scalar_one()
        routine = await service.evaluate(
            sessions, as_of=routine_as_of, requested_by="bench", now=routine_as_of
        )
        await vacuum(engine)
        backfill_as_of = T0 + timedelta(days=420)
        backfill = await service.evaluate(
            sessions, as_of=backfill_as_of, requested_by="bench", now=backfill_as_of
        )
    finally:
        await engine.dispose()

    def summary(run: Any) -> dict[str, Any]:
        return {
            "moved": {f"{m.from_stage}->{m.to_stage}": m.customers for m in run.moved},
            "seconds": run.seconds,
            "ratio_to_scan": round(run.seconds / scan_seconds, 1),
            "microseconds_per_change": round(1e6 * run.seconds / max(1, run.total_moved), 1),
        }

    return {
        "customers": CUSTOMERS,
        "populate_seconds": round(populate_seconds, 2),
        "scan_seconds": round(scan_seconds, 3),
        "routine": summary(routine),
        "backfill": summary(backfill),
    }


async def vacuum(engine: Any) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE customer_lifecycles"))


async def plain_scan(engine: Any) -> float:
    """The baseline: a sequential scan of the whole table, best of three (warm cache)."""
    timings = []
    async with engine.connect() as conn:
        for _ in range(3):
            started = time.perf_counter()
            await conn.execute(
                text("SELECT count(*), max(since), sum(gap_days) FROM customer_lifecycles")
            )
            timings.append(time.perf_counter() - started)
    return min(timings)


def print_table(results: dict[str, Any]) -> None:
    c, s = results["consumer"], results["sweep"]
    lines = [
        "",
        "lifecycle benchmarks",
        f"  consumer  {c['events']} events: {c['lifecycle_events_per_s']} events/s "
        f"vs raw consume {c['raw_consume_events_per_s']} events/s "
        f"(ratio {c['ratio_lifecycle_to_raw']})",
        f"  consumer  CPU per event: {c['consumer_cpu_us_per_event']} us in the consumer, "
        f"{c['database_cpu_us_per_event']} us in PostgreSQL; raw consume "
        f"{c['raw_consume_cpu_us_per_event']} us",
        f"  plain scan of {s['customers']} customers: {s['scan_seconds']} s",
        *(
            f"  sweep     {name}: {sum(r['moved'].values())} changes {r['moved']} in "
            f"{r['seconds']} s (ratio to scan {r['ratio_to_scan']}, "
            f"{r['microseconds_per_change']} us per change)"
            for name, r in (("routine", s["routine"]), ("backfill", s["backfill"]))
        ),
    ]
    print("\n".join(lines))
