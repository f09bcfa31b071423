"""`crm replay <service>`: rebuild a service's state from the Kafka log, from the earliest offsets.

The service declares in its models.py `REPLAY_TABLES` (its projection/state tables, emptied
first) and in handlers.py `HANDLERS` (and optionally `PROCESS`, `DECODERS`, `REPLAY_TOPICS`).
The service's workers must be stopped: replay holds the outbox-relay lock while it runs and
refuses to start when another process holds it or when the outbox still has unpublished events.
Events the handlers emit during replay are re-derivations of events already published: they must
never be published again. The replay's connections write them to a temporary `outbox` of their
own (see `_divert_outbox`), emptied at each commit, so they never reach the service's outbox: not
when the replay is interrupted half-way (the next worker would publish them as new events), and
what the service's API writes to its outbox meanwhile (the API may keep serving) stays there.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session

from shared.db import SessionFactory, asyncpg_dsn, create_engine
from shared.events import registry
from shared.messaging.consumer import ConsumerRunner
from shared.messaging.kafka import client_options, partitions_of, start_producer
from shared.messaging.outbox import advisory_key
from shared.settings import ServiceSettings


class ReplayRefused(RuntimeError):
    pass


# On each of the replay's connections, a temporary table named like the outbox: unqualified
# `outbox` (every writer's, ORM or SQL) resolves to it, pg_temp coming first in the search path.
_DIVERT_OUTBOX_SQL = (
    "CREATE TEMP TABLE outbox (LIKE outbox INCLUDING DEFAULTS INCLUDING IDENTITY) "
    "ON COMMIT DELETE ROWS"
)
_DIVERTED_SQL = "SELECT 'outbox'::regclass = 'pg_temp.outbox'::regclass"


def _divert_outbox(engine: AsyncEngine) -> tuple[SessionFactory, list[int]]:
    """Sessions whose outbox rows go to a temporary table of their connection, and the count of
    the rows they committed (re-derived events, dropped)."""

    def on_connect(dbapi_connection: Any, _: Any) -> None:
        async def divert(conn: asyncpg.Connection) -> None:
            await conn.execute(_DIVERT_OUTBOX_SQL)
            if not await conn.fetchval(_DIVERTED_SQL):  # a search path that puts pg_temp last
                raise ReplayRefused("the replay cannot shadow the outbox (check search_path)")

        dbapi_connection.run_async(divert)

    event.listen(engine.sync_engine, "connect", on_connect)
    dropped = [0]

    class ReplaySession(Session):
        pass

    def before_commit(session: Session) -> None:
        dropped[0] += session.execute(text("SELECT count(*) FROM pg_temp.outbox")).scalar_one()

    event.listen(ReplaySession, "before_commit", before_commit)
    sessions = async_sessionmaker(engine, expire_on_commit=False, sync_session_class=ReplaySession)
    return sessions, dropped


async def rebuild(
    service: str, settings: ServiceSettings, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    handlers_mod = importlib.import_module(f"services.{service}.handlers")
    models_mod = importlib.import_module(f"services.{service}.models")
    handlers = handlers_mod.HANDLERS
    decoders = getattr(handlers_mod, "DECODERS", None) or {}
    topics = getattr(handlers_mod, "REPLAY_TOPICS", None) or sorted(
        {registry.topic_for(t) for t in handlers if t in registry.EVENTS} | set(decoders)
    )
    replay_tables: list[str] = list(models_mod.REPLAY_TABLES)
    started = time.perf_counter()

    lock_conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        if not await lock_conn.fetchval(
            "SELECT pg_try_advisory_lock($1)", advisory_key(f"outbox-relay:{service}")
        ):
            raise ReplayRefused(
                f"a {service} worker is running (it holds the relay lock): stop it first"
            )
        pending = await lock_conn.fetchval("SELECT count(*) FROM outbox")
        if pending:
            raise ReplayRefused(
                f"{pending} event(s) still wait in the {service} outbox: let a worker publish them first"
            )
        progress(f"emptying {', '.join(replay_tables)} and the inbox of {service} ...")
        await lock_conn.execute(f"TRUNCATE {', '.join([*replay_tables, 'inbox'])}")

        engine = create_engine(
            settings.database_url, pool_size=4, application_name=f"crm-{service}-replay"
        )
        sessions, dropped = _divert_outbox(engine)
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=settings.consumer_batch_size,
            isolation_level="read_committed",
        )
        await consumer.start()
        producer = await start_producer(settings)
        try:
            partitions = await partitions_of(consumer, *topics)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            total = sum(end.values())
            progress(f"replaying {total} message(s) from {', '.join(topics)} ...")
            runner = ConsumerRunner(
                service=service,
                consumer=consumer,
                producer=producer,
                sessions=sessions,
                tables=models_mod.MESSAGING,
                handlers=handlers,
                process=getattr(handlers_mod, "PROCESS", None),
                decoders=decoders,
                group_id=f"{service}-replay",
                commit_offsets=False,
                batch_size=settings.consumer_batch_size,
                # DLQ replays for each of the service's groups (it reads the originals too).
                every_replay=True,
            )
            stop = asyncio.Event()
            reporter = asyncio.create_task(_report(runner, total, progress))
            try:
                await runner.run(stop, until=end)
            finally:
                reporter.cancel()
        finally:
            await producer.stop()
            await consumer.stop()
            await engine.dispose()
    finally:
        await lock_conn.close()
    return {
        "service": service,
        "messages": runner.processed,
        "rederived_events_dropped": dropped[0],
        "seconds": round(time.perf_counter() - started, 2),
    }


async def _report(runner: ConsumerRunner, total: int, progress: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(2)
        progress(f"  {runner.processed}/{total} messages")
