"""Transactional outbox: events are written in the business transaction and published by a relay.

Writers call `lock_customers` before touching a customer, so that one customer's events get
increasing outbox ids in commit order; the relay publishes in id order. The relay is woken by
NOTIFY on commit (a statement trigger on the outbox table) and polls as a fallback; only the
replica holding a PostgreSQL advisory lock relays, the others stand by. The relay vacuums the
table it empties (see `OutboxRelay.vacuum_after`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import driver_connection
from shared.events import CONTENT_TYPE, CloudEvent
from shared.events.registry import topic_for
from shared.messaging.kafka import producer_is_broken, stop_producer
from shared.messaging.tables import OUTBOX_CHANNEL, MessagingTables
from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger(__name__)

COPY_THRESHOLD = 500
# Rows the relay deletes between its VACUUMs of the outbox (a recompute's burst is far more).
VACUUM_AFTER_ROWS = 10_000
_LOCK_NOT_AVAILABLE: Final = "55P03"  # VACUUM (SKIP_LOCKED) warns with it when it skipped
_HEADERS: Final = [("content-type", CONTENT_TYPE.encode())]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg advisory locks."""
    value = zlib.crc32(name.encode()) | (zlib.adler32(name.encode()) << 32)
    return value - (1 << 64) if value >= (1 << 63) else value


def customer_lock_keys(customer_ids: Iterable[object]) -> list[int]:
    """The advisory-lock keys of these customers, sorted: every writer takes them in one order,
    so batches never deadlock on each other."""
    return sorted({advisory_key(f"customer:{c}") for c in customer_ids})


# A volatile function in the select list runs after the sort: the locks are taken in key order.
LOCK_CUSTOMERS_SQL: Final = (
    "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
)


async def lock_customers(session: AsyncSession, customer_ids: Iterable[object]) -> None:
    """Serialise writers per customer for this transaction (sorted: no deadlocks between batches)."""
    keys = customer_lock_keys(customer_ids)
    if not keys:
        return
    db = await driver_connection(session)
    await db.execute(LOCK_CUSTOMERS_SQL, keys)


# Deletes the batch just published ($1) and reads the next one in the same round trip; the read
# sees the rows as they were before the delete, so it leaves the deleted ones out itself.
_DRAIN_SQL: Final = """
    WITH published AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING id)
    SELECT id, event_type, topic, key, payload, created_at FROM outbox
     WHERE id NOT IN (SELECT id FROM published)
     ORDER BY id LIMIT $2
"""


def outbox_insert(table: str, first: int = 1) -> str:
    """The outbox INSERT bound to five arrays (`outbox_arrays`) from parameter `first` on, in
    their order (the outbox ids follow it). A writer may put it in its own statement as a
    data-modifying CTE: one round trip fewer per transaction."""
    k = first
    return (
        f"INSERT INTO {table} (event_id, event_type, topic, key, payload) "
        "SELECT event_id, event_type, topic, key, payload "
        f"FROM unnest(${k}::uuid[], ${k + 1}::text[], ${k + 2}::text[], ${k + 3}::text[], "
        f"${k + 4}::bytea[]) WITH ORDINALITY AS e(event_id, event_type, topic, key, payload, n) "
        "ORDER BY n"
    )


def _outbox_rows(events: Sequence[CloudEvent[Any]]) -> list[tuple[Any, ...]]:
    return [(e.id, e.type, topic_for(e.type), e.subject, e.to_bytes()) for e in events]


def outbox_arrays(events: Sequence[CloudEvent[Any]]) -> list[list[Any]]:
    """The events as the five arrays `outbox_insert` is bound to."""
    columns = zip(*_outbox_rows(events), strict=True)
    return [list(column) for column in columns] if events else [[] for _ in range(5)]


async def add_events(
    session: AsyncSession, tables: MessagingTables, events: Sequence[CloudEvent[Any]]
) -> None:
    """Write events to the outbox in the caller's transaction: one array-bound INSERT (the same
    prepared statement whatever the count), COPY for big batches."""
    if not events:
        return
    rows = _outbox_rows(events)
    raw = await driver_connection(session)
    if len(rows) >= COPY_THRESHOLD:
        # Big batches (a recompute re-scoring everyone) go through COPY on the same connection,
        # inside the same transaction; COPY fires the NOTIFY trigger like INSERT does.
        await raw.copy_records_to_table(
            tables.outbox.name,
            records=rows,
            columns=["event_id", "event_type", "topic", "key", "payload"],
        )
        return
    await raw.execute(
        outbox_insert(tables.outbox.name), *(list(c) for c in zip(*rows, strict=True))
    )


async def add_event(
    session: AsyncSession, tables: MessagingTables, event: CloudEvent[BaseModel]
) -> None:
    await add_events(session, tables, [event])


ProducerFactory = Callable[[], Awaitable[AIOKafkaProducer]]


class OutboxRelay:
    """Publishes outbox rows in id order and deletes them once the broker acknowledged them.

    With a `producer_factory` the relay owns its producer: it makes one when it first publishes,
    replaces it when it is broken for good (an idempotent producer out of sequence after a broker
    restart never recovers by itself), and stops it when the relay stops. A batch that failed is
    published again whole, in id order, once everything the failed attempt had queued has
    settled, so a retry never overtakes an earlier attempt on a partition; the rows it repeats are
    absorbed by the consumers' inbox. With a `producer` only, the caller owns it (no replacement).
    """

    def __init__(
        self,
        *,
        service: str,
        dsn: str,
        producer: AIOKafkaProducer | None = None,
        producer_factory: ProducerFactory | None = None,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        standby_interval: float = 2.0,
        settle_timeout: float = 30.0,
        vacuum_after: int = VACUUM_AFTER_ROWS,
    ) -> None:
        if (producer is None) == (producer_factory is None):
            raise ValueError("give the relay a producer or a producer_factory (not both)")
        self.service = service
        self.dsn = dsn
        self.producer = producer
        self.producer_factory = producer_factory
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.settle_timeout = settle_timeout
        self.vacuum_after = vacuum_after
        self._deleted_since_vacuum = 0
        self._may_vacuum: bool | None = None
        self.lock_key = advisory_key(f"outbox-relay:{service}")
        self._wake = asyncio.Event()
        self.published = 0
        self.producers_replaced = 0

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        try:
            while not stop.is_set():
                try:
                    await self._run_connected(stop)
                    backoff = 0.2
                except (
                    TimeoutError,
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                ) as exc:
                    metrics.RELAY_ACTIVE.labels(self.service).set(0)
                    log.warning("outbox.relay_db_error", error=repr(exc), retry_in=backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if self.producer_factory is not None and self.producer is not None:
                producer, self.producer = self.producer, None
                await stop_producer(producer)

    async def _run_connected(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection = await asyncio.wait_for(asyncpg.connect(self.dsn), timeout=10)
        try:
            while not stop.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                    break
                await _sleep_or_stop(stop, self.standby_interval)
            else:
                return
            metrics.RELAY_ACTIVE.labels(self.service).set(1)
            log.info("outbox.relay_active")
            await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
            while not stop.is_set():
                self._wake.clear()
                await self._drain(conn, stop)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait(stop), timeout=self.poll_interval)
        finally:
            metrics.RELAY_ACTIVE.labels(self.service).set(0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _drain(self, conn: asyncpg.Connection, stop: asyncio.Event) -> int:
        """Publish until the outbox is empty; returns how many rows were published.

        The rows of one batch are deleted by the statement that reads the next: one round trip
        per batch. What arrived while a batch was being published goes out at once, and the
        relay only waits for a NOTIFY once the outbox is empty and nothing published is left in it.
        """
        published = 0
        done: list[int] = []
        try:
            while True:
                rows = await conn.fetch(_DRAIN_SQL, done, self.batch_size)
                self._deleted_since_vacuum += len(done)
                done = []
                if not rows:
                    metrics.OUTBOX_BACKLOG.labels(self.service).set(0)
                    metrics.OUTBOX_AGE.labels(self.service).set(0)
                    if self.vacuum_after and self._deleted_since_vacuum >= self.vacuum_after:
                        await self._vacuum(conn)
                    return published
                if not await self._publish_until_acknowledged(rows, stop):
                    return published  # stopping: rows stay in the outbox; the next relay sends them
                done = [r["id"] for r in rows]
                for event_type, n in Counter(r["event_type"] for r in rows).items():
                    metrics.EVENTS_PRODUCED.labels(self.service, event_type).inc(n)
                published += len(rows)
                self.published += len(rows)
                oldest = min(r["created_at"] for r in rows).timestamp()
                metrics.OUTBOX_AGE.labels(self.service).set(max(0.0, time.time() - oldest))
                metrics.OUTBOX_PUBLISH_DELAY.labels(self.service).observe(
                    max(0.0, time.time() - oldest)
                )
                if stop.is_set():
                    return published
        finally:
            if done:  # published, not deleted yet: stopping, or the read failed
                try:
                    await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
                except Exception as exc:  # sent again by the next relay; the inbox drops them
                    log.warning("outbox.delete_failed", error=repr(exc), rows=len(done))

    async def _vacuum(self, conn: asyncpg.Connection) -> None:
        """VACUUM the outbox the relay has just emptied.

        Every drain reads the outbox in id order from its lowest id, through the index entries
        of the rows deleted since the table was last vacuumed: after a recompute's tens of
        thousands of events that cost the scoring relay 4.4 ms per drain (0.1-0.2 ms in the
        other services; 0.06 ms once vacuumed), and autovacuum had not come 30 s later.
        Without the right to (neither the owner nor granted MAINTAIN) the relay leaves it to
        autovacuum and says so once. SKIP_LOCKED: while another VACUUM holds the table
        (autovacuum, an operator) the relay does not wait for it, which would hold back every
        event behind it; it tries again after its next drain.
        """
        if self._may_vacuum is None:
            self._may_vacuum = bool(
                await conn.fetchval(
                    # The owner may; from PostgreSQL 17, so may a role granted MAINTAIN.
                    "SELECT pg_has_role(relowner, 'USAGE') OR CASE "
                    "WHEN current_setting('server_version_num')::int >= 170000 "
                    "THEN has_table_privilege('outbox', 'MAINTAIN') ELSE false END "
                    "FROM pg_class WHERE oid = 'outbox'::regclass"
                )
            )
            if not self._may_vacuum:
                log.warning("outbox.vacuum_not_permitted", hint="autovacuum cleans the outbox")
        if not self._may_vacuum:
            return
        deleted, self._deleted_since_vacuum = self._deleted_since_vacuum, 0
        skipped: list[str] = []

        def on_message(_: object, message: asyncpg.PostgresLogMessage) -> None:
            if getattr(message, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                skipped.append(str(message))

        started = time.perf_counter()
        conn.add_log_listener(on_message)
        try:
            # TRUNCATE false: no ACCESS EXCLUSIVE lock in the writers' way to shrink the file.
            await conn.execute("VACUUM (SKIP_LOCKED, TRUNCATE false) outbox")
        except asyncpg.PostgresError as exc:
            log.warning("outbox.vacuum_failed", error=repr(exc), deleted=deleted)
            return
        finally:
            await asyncio.sleep(0)  # the server's warning reaches listeners on the next tick
            conn.remove_log_listener(on_message)
        if skipped:
            self._deleted_since_vacuum += deleted  # not vacuumed: the next empty drain tries
            log.debug("outbox.vacuum_skipped", reason=skipped[0])
            return
        log.info(
            "outbox.vacuumed",
            deleted=deleted,
            ms=round(1000 * (time.perf_counter() - started), 1),
        )

    async def _publish_until_acknowledged(
        self, rows: Sequence[asyncpg.Record], stop: asyncio.Event
    ) -> bool:
        """Publish the rows, retrying (with a new producer when it broke) until the broker
        acknowledged all; False when `stop` came first."""
        backoff = 0.2
        while True:
            producer = await self._ready_producer(stop)
            if producer is None:
                return False
            try:
                await self._publish(producer, rows)
                return True
            except Exception as exc:
                if stop.is_set():
                    return False
                replace = self.producer_factory is not None and producer_is_broken(producer, exc)
                log.warning(
                    "outbox.publish_failed",
                    error=repr(exc),
                    rows=len(rows),
                    retry_in=backoff,
                    replace_producer=replace,
                )
                if replace:
                    await self._discard_producer(producer)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish(self, producer: AIOKafkaProducer, rows: Sequence[asyncpg.Record]) -> None:
        """Send every row in id order and wait for all acknowledgements.

        The rows go into one batch per partition, filled in id order and handed over whole
        (a full one before the next of its partition is started), so each partition receives
        them in id order, as with one `send` per row, for a fraction of the CPU: `send` picks
        the partition and makes a future per message.

        Without idempotence (Tansu, `KAFKA_ENABLE_IDEMPOTENCE=false`) a partition's next batch
        waits for the previous one's acknowledgement: aiokafka fails a batch that expired in
        its retries and then sends the partition's next one, which would land before the retry
        of the failed one. An idempotent producer keeps the order itself (sequence numbers).
        """
        futures: list[asyncio.Future[Any]] = []
        in_order = producer._txn_manager is None  # not idempotent
        last_sent: dict[tuple[str, int], asyncio.Future[Any]] = {}

        async def send(batch: BatchBuilder, topic: str, partition: int) -> None:
            previous = last_sent.get((topic, partition))
            if in_order and previous is not None:
                await previous  # its failure stops this attempt before anything overtakes it
            future = await producer.send_batch(batch, topic, partition=partition)
            futures.append(future)
            last_sent[topic, partition] = future

        try:
            open_batches: dict[tuple[str, int], BatchBuilder] = {}
            partitions: dict[str, tuple[list[int], list[int]]] = {}
            for r in rows:
                topic: str = r["topic"]
                key = r["key"].encode()
                value = bytes(r["payload"])
                known = partitions.get(topic)
                if known is None:
                    await producer.partitions_for(topic)  # waits for the topic's metadata
                    cluster = producer.client.cluster
                    known = partitions[topic] = (
                        list(cluster.partitions_for_topic(topic)),
                        list(cluster.available_partitions_for_topic(topic)),
                    )
                # The producer's own choice, as `send` makes it.
                partition: int = producer._partitioner(key, *known)
                batch = open_batches.get((topic, partition))
                if batch is None:
                    batch = open_batches[topic, partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=_HEADERS) is None:
                    await send(batch, topic, partition)
                    batch = open_batches[topic, partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=_HEADERS)
            for (topic, partition), batch in open_batches.items():
                # Closed, it is complete: the sender takes it at once instead of letting it
                # linger for more messages (linger_ms) that will never come.
                batch.close()
                await send(batch, topic, partition)
            await asyncio.gather(*futures)
        except Exception:
            # What this attempt queued must settle (delivered or failed) before anything is sent
            # again, or a retry could overtake it on a partition.
            pending = [f for f in futures if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.settle_timeout)
            for f in futures:
                if f.done() and not f.cancelled():
                    f.exception()  # retrieved: the failure is logged once, by the caller
            raise

    async def _ready_producer(self, stop: asyncio.Event) -> AIOKafkaProducer | None:
        """The relay's producer, made by the factory if it has none (retried until `stop`)."""
        backoff = 0.5
        while self.producer is None:
            assert self.producer_factory is not None
            if stop.is_set():
                return None
            try:
                self.producer = await self.producer_factory()
                log.info("outbox.producer_ready", replaced=self.producers_replaced)
            except Exception as exc:
                log.warning("outbox.producer_unavailable", error=repr(exc), retry_in=backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 10.0)
        return self.producer

    async def _discard_producer(self, producer: AIOKafkaProducer) -> None:
        """Stop a broken producer; the next attempt makes a fresh one (new id, sequences 0)."""
        self.producer = None
        self.producers_replaced += 1
        await stop_producer(producer)


async def outbox_stats(conn: asyncpg.Connection) -> tuple[int, float]:
    row = await conn.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age FROM outbox"
    )
    assert row is not None
    return int(row["n"]), float(row["age"] or 0.0)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
