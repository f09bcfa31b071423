"""Messaging housekeeping on real PostgreSQL: exactly the inbox rows and idempotency keys past
their retention go, in chunks, capped per run, counted; what is retained still drops duplicates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from integration.shared.messaging_db import messaging_database
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, event, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from shared.clock import FixedClock
from shared.db import create_engine, make_metadata
from shared.devstack import PostgresServer
from shared.messaging.housekeeping import PruneResult, prune_messaging_tables
from shared.messaging.tables import messaging_tables
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration

METADATA: MetaData = make_metadata()
TABLES = messaging_tables(METADATA)
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
INBOX_RETENTION = timedelta(hours=168)
KEY_RETENTION = timedelta(hours=24)
SERVICE = "housekeeping-test"


@pytest.fixture(scope="module")
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    async with messaging_database(postgres_server, METADATA, prefix="housekeeping") as engine:
        yield engine


@pytest.fixture(autouse=True)
async def empty_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE inbox, idempotency_keys"))


async def add_inbox(engine: AsyncEngine, processed_at: list[datetime]) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in processed_at]
    async with engine.begin() as conn:
        await conn.execute(
            insert(TABLES.inbox),
            [
                {"event_id": i, "event_type": "crm.purchase.recorded.v1", "processed_at": at}
                for i, at in zip(ids, processed_at, strict=True)
            ],
        )
    return ids


async def add_keys(engine: AsyncEngine, created_at: list[datetime]) -> list[str]:
    keys = [f"key-{uuid.uuid4().hex}" for _ in created_at]
    async with engine.begin() as conn:
        await conn.execute(
            insert(TABLES.idempotency),
            [
                {
                    "scope": "POST /v1/things",
                    "key": k,
                    "request_hash": "0" * 64,
                    "status_code": 201,
                    "response": {"ok": True},
                    "created_at": at,
                }
                for k, at in zip(keys, created_at, strict=True)
            ],
        )
    return keys


async def inbox_ids(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(TABLES.inbox.c.event_id))).scalars())


async def stored_keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(TABLES.idempotency.c.key))).scalars())


def pruned_total(table: str) -> float:
    value = REGISTRY.get_sample_value(
        "crm_messaging_rows_pruned_total", {"service": SERVICE, "table": table}
    )
    return value or 0.0


@contextmanager
def deletes_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """The tables of the DELETE statements sent while inside."""
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("DELETE FROM "):
            sent.append(statement.split()[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def prune(engine: AsyncEngine, **options: int) -> PruneResult:
    return await prune_messaging_tables(
        engine=engine,
        tables=TABLES,
        service=SERVICE,
        now=NOW,
        inbox_retention=INBOX_RETENTION,
        idempotency_retention=KEY_RETENTION,
        **options,
    )


async def test_exactly_the_rows_past_their_retention_are_deleted_in_chunks(
    engine: AsyncEngine,
) -> None:
    inbox_cutoff, key_cutoff = NOW - INBOX_RETENTION, NOW - KEY_RETENTION
    old_events = await add_inbox(
        engine, [inbox_cutoff - timedelta(seconds=1 + i) for i in range(25)]
    )
    kept_events = await add_inbox(
        engine,
        [inbox_cutoff, inbox_cutoff + timedelta(seconds=1), NOW - timedelta(hours=1), NOW],
    )
    old_keys = await add_keys(engine, [key_cutoff - timedelta(minutes=1 + i) for i in range(12)])
    kept_keys = await add_keys(engine, [key_cutoff, NOW - timedelta(minutes=5)])
    inbox_before, keys_before = pruned_total("inbox"), pruned_total("idempotency_keys")

    # 25 old inbox rows with chunks of 10: three statements (10, 10, 5); 12 keys: two.
    with deletes_sent(engine) as deletes:
        result = await prune(engine, chunk_size=10)
    assert deletes == ["inbox"] * 3 + ["idempotency_keys"] * 2

    assert result == PruneResult(inbox=25, idempotency_keys=12, capped=False)
    assert await inbox_ids(engine) == set(kept_events)
    assert not set(old_events) & await inbox_ids(engine)
    assert await stored_keys(engine) == set(kept_keys)
    assert not set(old_keys) & await stored_keys(engine)
    assert pruned_total("inbox") - inbox_before == 25
    assert pruned_total("idempotency_keys") - keys_before == 12

    # Nothing left to prune: a second run deletes nothing and the counters stay.
    assert await prune(engine, chunk_size=10) == PruneResult(0, 0, capped=False)
    assert pruned_total("inbox") - inbox_before == 25


async def test_a_run_stops_at_its_cap_and_the_next_one_goes_on(engine: AsyncEngine) -> None:
    old = NOW - INBOX_RETENTION - timedelta(days=1)
    await add_inbox(engine, [old - timedelta(seconds=i) for i in range(12)])
    kept = await add_inbox(engine, [NOW])

    first = await prune(engine, chunk_size=5, max_rows_per_table=7)
    assert first == PruneResult(inbox=7, idempotency_keys=0, capped=True)
    assert len(await inbox_ids(engine)) == 6

    second = await prune(engine, chunk_size=5, max_rows_per_table=7)
    assert second == PruneResult(inbox=5, idempotency_keys=0, capped=False)
    assert await inbox_ids(engine) == set(kept)


async def test_a_retained_event_is_still_dropped_as_a_duplicate(engine: AsyncEngine) -> None:
    (retained,) = await add_inbox(engine, [NOW - INBOX_RETENTION + timedelta(minutes=1)])
    (expired,) = await add_inbox(engine, [NOW - INBOX_RETENTION - timedelta(minutes=1)])
    await prune(engine)

    # The consumer's inbox insert: a row back means "new, apply it"; none means "duplicate".
    async def consumer_would_apply(event_id: uuid.UUID) -> bool:
        async with engine.begin() as conn:
            inserted = await conn.execute(
                pg_insert(TABLES.inbox)
                .values(event_id=event_id, event_type="crm.purchase.recorded.v1")
                .on_conflict_do_nothing()
                .returning(TABLES.inbox.c.event_id)
            )
            return inserted.first() is not None

    assert not await consumer_would_apply(retained)
    assert await consumer_would_apply(expired)  # past retention: Kafka cannot redeliver it


async def test_the_worker_job_applies_the_retention_settings(engine: AsyncEngine) -> None:
    await add_inbox(engine, [NOW - timedelta(hours=169)])
    (kept_event,) = await add_inbox(engine, [NOW - timedelta(hours=167)])
    await add_keys(engine, [NOW - timedelta(hours=3)])
    (kept_key,) = await add_keys(engine, [NOW - timedelta(hours=1)])
    runtime = ServiceRuntime(
        settings=ServiceSettings(
            service_name=SERVICE,
            database_url=engine.url.render_as_string(hide_password=False),
            IDEMPOTENCY_KEY_RETENTION_HOURS=2,
        ),
        tables=TABLES,
        clock=FixedClock(NOW),
        configure_logs=False,
    )
    runtime.engine = engine  # the job needs only the engine, not start()'s Kafka producer

    assert await runtime.prune_messaging() == PruneResult(inbox=1, idempotency_keys=1, capped=False)
    assert await inbox_ids(engine) == {kept_event}
    assert await stored_keys(engine) == {kept_key}


async def test_the_migrated_service_databases_are_pruned(
    service_databases: dict[str, str],
) -> None:
    """The statements fit the tables each service's migrations create."""
    for service, url in service_databases.items():
        service_engine = create_engine(url)
        try:
            (event,) = await add_inbox(service_engine, [NOW - INBOX_RETENTION - timedelta(hours=1)])
            await add_keys(service_engine, [NOW - KEY_RETENTION - timedelta(hours=1)])
            result = await prune(service_engine)
            assert result.inbox >= 1 and result.idempotency_keys >= 1, service
            assert event not in await inbox_ids(service_engine), service
        finally:
            await service_engine.dispose()


async def test_a_periodic_job_logs_its_polls_that_found_nothing_at_debug(
    engine: AsyncEngine,
) -> None:
    """Jobs polled every second or two (scoring's recompute, lifecycle's requested evaluations)
    logged `job.done` at INFO each time, mostly with a result of 0: 174 lines in three minutes."""
    runtime = ServiceRuntime(
        settings=ServiceSettings(
            service_name=SERVICE, database_url=engine.url.render_as_string(hide_password=False)
        ),
        tables=TABLES,
        clock=FixedClock(NOW),
        configure_logs=False,
    )
    runtime.engine = engine
    results: list[object] = [0, 3, None, [], "moved 2"]

    async def poll() -> object:
        result = results.pop(0)
        if not results:
            runtime.stop_event.set()
        return result

    with capture_logs() as logs:
        await runtime.run_periodic("poll", 0.001, poll)

    done = [(e["log_level"], e["result"]) for e in logs if e["event"] == "job.done"]
    assert [entry for entry in done if entry[0] == "info"] == [("info", "3"), ("info", "moved 2")]
    assert all(level == "debug" for level, result in done if result in {"0", "None", "[]"})
