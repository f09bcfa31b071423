"""Consumer runner: batches, one DB transaction per batch, inbox dedup, DLQ, commit after DB.

Fast path: the whole batch in one transaction, no savepoints. If a handler raises, the batch is
rolled back and redone message by message, each in a savepoint with bounded retries and backoff
(none for a `NotRetryable` error, which the same event raises every time); a message that still
fails goes to the DLQ (after the DB commit, before the offset commit), so the partition keeps
moving. Infrastructure failures (database or broker down) never send to the DLQ: the batch is
retried until they heal, without committing offsets. A batch that keeps failing with such an
error while the database answers a probe is not waiting on the infrastructure: it is redone
message by message, each in a transaction of its own, and the message that fails that way
`max_attempts` times goes to the DLQ like any other (the partition must not stall on it).

Customer locks: a batch locks its events' customers (sorted, in the statement that writes its
inbox rows; `lock_customers` in the slow path) before its handlers run, so that what it emits
gets outbox ids in per-customer commit order. A consumer
that only maintains projections and never emits (`emits=False`) takes no such locks: its
batches then never wait for, or hold up, the service's writers; emitting from one is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import SessionFactory, driver_connection
from shared.errors import NotRetryable
from shared.events import EVENTS, CloudEvent, EnvelopeError
from shared.events import topics as topic_names
from shared.events.envelope import peek
from shared.events.registry import declared_type, parse_document, parse_fast
from shared.messaging.kafka import producer_is_broken, stop_producer
from shared.messaging.outbox import add_events, customer_lock_keys, lock_customers
from shared.messaging.tables import MessagingTables
from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger(__name__)

# The headers the DLQ adds to a dead letter; every other header is the message's own.
DLQ_HEADER_PREFIX = "dlq."
# On a message `crm dlq replay` put back on its topic: the consumer group that dead-lettered it.
# Only that group applies it; the topic's other groups applied the original and skip the copy,
# which their inboxes would drop only while they remember it (INBOX_RETENTION_HOURS).
REPLAY_GROUP_HEADER = "dlq.replay.group"
# On a dead letter too large for the DLQ with its message: the message's size. The letter holds
# no value; the message is at its origin (topic, partition, offset) while the topic retains it.
VALUE_OMITTED_HEADER = "dlq.value.omitted"


@dataclass
class HandlerContext:
    """What a handler gets besides the event: the batch's session and a way to emit events."""

    session: AsyncSession
    tables: MessagingTables
    service: str
    emitted: list[CloudEvent[Any]] = field(default_factory=list)
    # Named advisory locks the runner holds shared for the transaction (see `shared_locks`).
    held_shared: frozenset[str] = frozenset()

    def emit(self, event: CloudEvent[Any]) -> None:
        self.emitted.append(event)


Handler = Callable[[HandlerContext, CloudEvent[Any]], Awaitable[None]]
# A service may process a whole batch at once (set-based SQL); default: one handler per event.
BatchProcessor = Callable[[HandlerContext, Sequence[CloudEvent[Any]]], Awaitable[None]]
Decoder = Callable[[ConsumerRecord[bytes, bytes]], CloudEvent[Any]]


def decoding(event_type: str, decode: Decoder) -> Decoder:
    """A topic's own decoder (not CloudEvents of the contract), named by the event type it
    makes: what the dead letters of what it refuses say they were."""
    setattr(decode, "event_type", event_type)  # noqa: B010 (a function's attribute)
    return decode


def per_event(handlers: Mapping[str, Handler]) -> BatchProcessor:
    async def process(ctx: HandlerContext, events: Sequence[CloudEvent[Any]]) -> None:
        for event in events:
            await handlers[event.type](ctx, event)

    return process


def is_transient(exc: BaseException) -> bool:
    """Database/broker unavailability (also no pooled connection free in time), deadlocks,
    serialization failures: retry the whole batch."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
        cause = getattr(exc, "__cause__", None)
        if cause is not None:
            exc = cause
    return isinstance(
        exc,
        (
            OSError,
            ConnectionError,
            asyncio.TimeoutError,
            sa_exc.TimeoutError,  # the pool's: every connection busy (the API's too) past its timeout
            sa_exc.InterfaceError,
            sa_exc.OperationalError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
            asyncpg.AdminShutdownError,
            asyncpg.TooManyConnectionsError,
        ),
    )


def _keyed_by_its_customer(event: CloudEvent[Any]) -> CloudEvent[Any]:
    """The event, when its `subject` (the Kafka key) is the customer its data names. Under
    another key it would be applied out of order with that customer's other events (their
    partition, and the customer lock the runner takes, follow the subject): refused as an
    unreadable event is (DLQ, the reason naming the field). The topic is not checked: topics
    may be renamed or mirrored (tests read theirs from private ones)."""
    if event.type not in EVENTS:
        return event  # a service's own internal type (profile's ingested orders)
    customer_id = getattr(event.data, "customer_id", None)
    subject = event.subject
    # Spelled as `str(customer_id)` (hyphens at 8, 13, 18, 23, lower-case hex), checked for a
    # fraction of what `str(customer_id)` costs, on every event consumed.
    if customer_id is None or (
        len(subject) == 36
        and subject[8] == subject[13] == subject[18] == subject[23] == "-"
        and subject.replace("-", "") == customer_id.hex
    ):
        return event
    with contextlib.suppress(ValueError):
        if uuid.UUID(subject) == customer_id:
            # The same id spelled otherwise (upper case, braces, no hyphens): spelled as the
            # service's writers spell it, which the customer's lock is keyed by.
            return event.model_copy(update={"subject": str(customer_id)})
    raise EnvelopeError(
        f"invalid {event.type}: `subject` must be the customer id `data.customer_id` "
        f"({customer_id}), not {subject[:100]!r}"
    )


@dataclass(slots=True)
class Message:
    record: ConsumerRecord[bytes, bytes]
    event: CloudEvent[Any] | None = None
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    ignored_type: str | None = None  # a known event type this consumer has no handler for
    replay_for: str | None = None  # a DLQ replay meant for another consumer group
    declared_type: str | None = None  # the contract type an unreadable message claims to be


class _Revocation(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are only given up between batches: revocation waits for the batch lock, then
    commits what was applied of them (the next owner starts there)."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.runner.batch_lock:
            await self.runner.flush_offsets()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class ConsumerRunner:
    def __init__(
        self,
        *,
        service: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        sessions: SessionFactory,
        tables: MessagingTables,
        handlers: Mapping[str, Handler],
        process: BatchProcessor | None = None,
        decoders: Mapping[str, Decoder] | None = None,
        group_id: str,
        max_attempts: int = 3,
        backoff: float = 0.2,
        transient_failures_before_probe: int = 5,
        batch_size: int = 500,
        linger: float = 0.0,
        commit_offsets: bool = True,
        commit_interval: float = 0.0,
        emits: bool = True,
        shared_locks: Sequence[str] = (),
        producer_factory: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        every_replay: bool = False,
    ) -> None:
        """`producer` sends to the DLQ; with `producer_factory`, one that Kafka says is broken for
        good (see `producer_is_broken`) is replaced by a producer of the runner's own.
        `shared_locks`: advisory locks (by name, `hashtext`) that every batch's handlers take
        shared (a policy they read), taken by the runner after the customers' locks in the same
        round trip; handlers see them in `HandlerContext.held_shared`.
        `every_replay`: apply DLQ replays meant for any group (see REPLAY_GROUP_HEADER), as a
        rebuild from the log does: it reads the originals too, and its inbox drops the copies."""
        self.service = service
        self.consumer = consumer
        self.producer = producer
        self.sessions = sessions
        self.tables = tables
        self.handlers = handlers
        self.process = process or per_event(handlers)
        self.decoders = dict(decoders or {})
        self.group_id = group_id
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.transient_failures_before_probe = transient_failures_before_probe
        self.batch_size = batch_size
        self.linger = linger
        self.commit_offsets = commit_offsets
        self.commit_interval = commit_interval
        self.emits = emits
        self.shared_locks = tuple(shared_locks)
        self.producer_factory = producer_factory
        self._replays_for = None if every_replay else group_id.encode()
        self._own_producer = False
        self.batch_lock = asyncio.Lock()
        self.processed = 0
        self._lag_checked = 0.0
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()

    @functools.cached_property
    def _inbox_sql(self) -> str:
        """The batch's inbox rows, after its locks: the customers' ($3, when the consumer emits)
        in key order (see LOCK_CUSTOMERS_SQL), then the shared ones (the last parameter)."""
        # Each uncorrelated subquery is an init plan: it runs once, before the first row is
        # inserted, and the operands of `+` are evaluated left to right.
        locks = []
        if self.emits:
            locks.append(
                "(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k) "
                "FROM unnest($3::bigint[]) AS k ORDER BY k) AS locked)"
            )
        if self.shared_locks:
            locks.append(
                "(SELECT count(*) FROM (SELECT pg_advisory_xact_lock_shared(hashtext(name)) "
                f"FROM unnest(${3 + len(locks)}::text[]) AS name) AS shared)"
            )
        where = f"WHERE {' + '.join(locks)} >= 0 " if locks else ""
        return (
            f"INSERT INTO {self.tables.inbox.name} (event_id, event_type) "
            f"SELECT * FROM unnest($1::uuid[], $2::text[]) {where}"
            "ON CONFLICT DO NOTHING RETURNING event_id"
        )

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        return _Revocation(self)

    # -- main loop -------------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event, *, until: dict[TopicPartition, int] | None = None
    ) -> None:
        """Consume until `stop` is set (or, for replays, until every partition reaches `until`)."""
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                async with self.batch_lock:  # held while filling too: no revocation mid-batch
                    if batch:
                        if self.linger:
                            await self._fill(batch)
                        await self.handle_batch(batch, stop)
                    if time.monotonic() - self._committed_at >= self.commit_interval:
                        await self.flush_offsets()
                await self._update_lag()
                if until is not None and await self._caught_up(until):
                    return
        finally:
            with contextlib.suppress(Exception):
                async with self.batch_lock:
                    await self.flush_offsets()

    async def flush_offsets(self) -> None:
        """Commit the offsets of what was applied and not committed yet (of the partitions still
        assigned: a revoked one's next owner redoes the rest, which its inbox drops)."""
        self._committed_at = time.monotonic()
        if not self._uncommitted:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: at for tp, at in self._uncommitted.items() if tp in assigned}
        self._uncommitted = {}
        if offsets:
            await self._commit(offsets)

    async def _fill(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Top a partial batch up with what arrives within the linger, until it is full (order per
        partition kept: later records of a partition go after the earlier ones)."""
        room = self.batch_size - sum(len(records) for records in batch.values())
        deadline = time.monotonic() + self.linger
        # A full batch goes at once: a long linger must not cap a backlogged consumer's rate.
        while room > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            more = await self.consumer.getmany(timeout_ms=int(left * 1000) + 1, max_records=room)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                room -= len(records)

    async def _caught_up(self, until: dict[TopicPartition, int]) -> bool:
        for tp, end in until.items():
            if await self.consumer.position(tp) < end:
                return False
        return True

    async def handle_batch(
        self,
        batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        stop: asyncio.Event,
    ) -> None:
        started = time.perf_counter()
        oldest = min((records[0].timestamp for records in batch.values() if records), default=None)
        if oldest is not None and oldest > 0:
            metrics.CONSUMER_EVENT_AGE.labels(self.service, self.group_id).observe(
                max(0.0, time.time() - oldest / 1000)
            )
        messages = [self._decode(r) for records in batch.values() for r in records]
        backoff, failures, one_by_one = self.backoff, 0, False
        while True:
            try:
                await (self._apply_one_by_one(messages) if one_by_one else self._apply(messages))
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                if (
                    not one_by_one
                    and failures >= self.transient_failures_before_probe
                    and await self._database_answers()
                ):
                    # Not the infrastructure, or not any more: find the message it follows.
                    log.warning(
                        "consumer.transient_failure_with_the_database_up",
                        error=repr(exc),
                        failures=failures,
                        size=len(messages),
                    )
                    one_by_one = True
                    continue
                log.warning("consumer.transient_failure", error=repr(exc), retry_in=backoff)
                if stop.is_set():
                    return  # offsets not committed: the batch is redelivered after restart
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        failed = [m for m in messages if m.error is not None]
        await self._dead_letter(failed, stop)
        self._uncommitted.update({tp: records[-1].offset + 1 for tp, records in batch.items()})
        if failed:
            # Past dead letters at once: redone after a crash, they would be sent again.
            await self.flush_offsets()
        self.processed += len(messages)
        metrics.CONSUMER_BATCH_SECONDS.labels(self.service, self.group_id).observe(
            time.perf_counter() - started
        )

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> Message:
        message = Message(record)
        if record.headers and self._replays_for is not None:
            for name, value in record.headers:
                if name == REPLAY_GROUP_HEADER and value != self._replays_for:
                    message.replay_for = value.decode(errors="replace")
                    return message
        decoder = self.decoders.get(record.topic)
        try:
            if record.value is None:
                raise EnvelopeError("empty message (tombstone)")
            if decoder is not None:
                message.event = _keyed_by_its_customer(decoder(record))
                return message
            event = parse_fast(record.value, self.handlers)
            if event is not None:
                message.event = _keyed_by_its_customer(event)
                return message
            doc = peek(record.value)
            event_type = doc.get("type")
            if event_type in EVENTS and event_type not in self.handlers:
                # Read past it without validating the payload: a topic carries types this
                # consumer does not handle (scored events to a tier-only consumer).
                message.ignored_type = event_type
                return message
            message.event = _keyed_by_its_customer(parse_document(doc))
        except EnvelopeError as exc:
            message.error, message.error_type = str(exc), "unreadable"
        except Exception as exc:
            message.error, message.error_type = f"{type(exc).__name__}: {exc}", "unreadable"
        if message.error is not None:
            message.declared_type = (
                getattr(decoder, "event_type", None) if decoder else declared_type(record.value)
            )
        return message

    async def _apply(self, messages: list[Message]) -> None:
        """One transaction for the batch; redo message by message if a handler fails."""
        for m in messages:
            if m.error_type != "unreadable":
                m.error = m.error_type = None
        wanted = self._wanted(messages)
        if not wanted:
            return
        try:
            async with self.sessions() as session, session.begin():
                await self._fast(session, wanted)
            self._count(wanted, "ok")
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            log.info("consumer.batch_failed_retrying_singly", error=repr(exc), size=len(wanted))
        async with self.sessions() as session, session.begin():
            await self._lock(session, [m.event.subject for m in wanted if m.event])
            for m in wanted:
                await self._one(session, m)
        self._count([m for m in wanted if m.error is None], "ok")

    async def _database_answers(self) -> bool:
        """Whether the database answers a trivial query now (within 5 s, a pooled connection
        included)."""
        try:
            async with asyncio.timeout(5), self.sessions() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def _apply_one_by_one(self, messages: list[Message]) -> None:
        """Each message in a transaction of its own: one that fails with a transient error while
        the database answers is retried up to `max_attempts` times, then left for the DLQ. One
        that fails so while the database does not answer stops the batch (retried whole; those
        applied before it are in the inbox)."""
        for m in messages:
            if m.error_type != "unreadable":
                m.error = m.error_type = None
        for m in self._wanted(messages):
            assert m.event is not None
            for attempt in range(1, self.max_attempts + 1):
                m.error = m.error_type = None
                try:
                    async with self.sessions() as session, session.begin():
                        await self._lock(session, [m.event.subject])
                        await self._one(session, m)
                    break
                except Exception as exc:
                    if not is_transient(exc) or not await self._database_answers():
                        raise
                    m.attempts = attempt
                    m.error_type = type(exc).__name__
                    m.error = (
                        f"{type(exc).__name__}: {exc} (a transient error, {attempt} times in a "
                        "row while the database answered)"
                    )[:2000]
                    log.warning(
                        "consumer.handler_failed",
                        event_id=str(m.event.id),
                        event_type=m.event.type,
                        attempt=attempt,
                        error=m.error,
                        retried=attempt < self.max_attempts,
                    )
                    if attempt < self.max_attempts:
                        await asyncio.sleep(self.backoff * (2 ** (attempt - 1)))
            if m.error is None:
                self._count([m], "ok")

    def _wanted(self, messages: list[Message]) -> list[Message]:
        seen: set[uuid.UUID] = set()
        wanted = []
        ignored: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        replays: Counter[str] = Counter()
        for m in messages:
            if m.replay_for is not None:
                replays[m.replay_for] += 1
                continue
            if m.ignored_type is not None:
                ignored[m.ignored_type] += 1
                continue
            if m.event is None:
                continue
            if m.event.type not in self.handlers:
                ignored[m.event.type] += 1
                continue
            if m.event.id in seen:
                duplicates[m.event.type] += 1
                continue
            seen.add(m.event.id)
            wanted.append(m)
        self._count_types(ignored, "ignored")
        self._count_types(duplicates, "duplicate")
        for group, n in replays.items():
            log.info("consumer.replay_for_another_group", replay_group=group, skipped=n)
            metrics.EVENTS_CONSUMED.labels(
                self.service, "dlq-replay", "replay_for_another_group"
            ).inc(n)
        return wanted

    async def _fast(self, session: AsyncSession, wanted: list[Message]) -> None:
        events = [m.event for m in wanted if m.event is not None]
        db = await driver_connection(session)
        ids, types = [e.id for e in events], [e.type for e in events]
        # One array-bound statement, prepared once whatever the batch size; the batch's locks are
        # taken in the same round trip, before the first inbox row.
        locks: list[Any] = []
        if self.emits:
            locks.append(customer_lock_keys(e.subject for e in events))
        if self.shared_locks:
            locks.append(list(self.shared_locks))
        rows = await db.fetch(self._inbox_sql, ids, types, *locks)
        fresh = {row[0] for row in rows}
        new_events = [e for e in events if e.id in fresh]
        if len(new_events) < len(events):
            self._count_types(Counter(e.type for e in events if e.id not in fresh), "duplicate")
        ctx = self._context(session)
        if new_events:
            await self.process(ctx, new_events)
        await self._add_events(ctx)

    async def _one(self, session: AsyncSession, m: Message) -> None:
        assert m.event is not None
        event = m.event
        for attempt in range(1, self.max_attempts + 1):
            m.attempts = attempt
            try:
                async with session.begin_nested():
                    inserted = await session.execute(
                        pg_insert(self.tables.inbox)
                        .values(event_id=event.id, event_type=event.type)
                        .on_conflict_do_nothing()
                        .returning(self.tables.inbox.c.event_id)
                    )
                    if inserted.first() is None:
                        return
                    ctx = self._context(session)
                    await self.process(ctx, [event])
                    await self._add_events(ctx)
                m.error = None
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                m.error = f"{type(exc).__name__}: {exc}"[:2000]
                m.error_type = type(exc).__name__
                refused = isinstance(exc, NotRetryable)
                log.warning(
                    "consumer.handler_failed",
                    event_id=str(event.id),
                    event_type=event.type,
                    attempt=attempt,
                    error=m.error,
                    retried=not refused and attempt < self.max_attempts,
                    trace=None if refused else traceback.format_exc(limit=5),
                )
                if refused:
                    return  # fails the same way every time: to the DLQ now
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.backoff * (2 ** (attempt - 1)))

    def _context(self, session: AsyncSession) -> HandlerContext:
        return HandlerContext(
            session, self.tables, self.service, held_shared=frozenset(self.shared_locks)
        )

    async def _lock(self, session: AsyncSession, subjects: list[str]) -> None:
        if self.emits:
            await lock_customers(session, subjects)
        if self.shared_locks:
            await (await driver_connection(session)).execute(
                "SELECT pg_advisory_xact_lock_shared(hashtext(name)) FROM unnest($1::text[]) AS name",
                list(self.shared_locks),
            )

    async def _add_events(self, ctx: HandlerContext) -> None:
        if ctx.emitted and not self.emits:
            raise RuntimeError(
                f"{self.service}/{self.group_id} is declared emits=False but a handler emitted "
                f"{ctx.emitted[0].type}: without customer locks its events could be published "
                "out of order"
            )
        await add_events(ctx.session, self.tables, ctx.emitted)

    def _count(self, messages: list[Message], outcome: str) -> None:
        self._count_types(Counter(m.event.type for m in messages if m.event is not None), outcome)

    def _count_types(self, counts: Counter[str], outcome: str) -> None:
        # One increment per event type, not per event: finding the labelled child costs ~1 µs.
        for event_type, n in counts.items():
            metrics.EVENTS_CONSUMED.labels(self.service, event_type, outcome).inc(n)

    async def _dead_letter(self, failed: list[Message], stop: asyncio.Event) -> None:
        backoff = self.backoff
        for m in failed:
            r = m.record
            # Unreadable: the type it claims, if a contract one (an order in a currency the
            # deployment does not take is still an order), else "unreadable".
            event_type = m.event.type if m.event else (m.declared_type or "unreadable")
            headers = [
                # The message's own headers (the structured-mode `content-type`, ...) stay with
                # it: `crm dlq replay` puts them back on the origin topic. Ours are `dlq.*`.
                *((k, v) for k, v in (r.headers or ()) if not k.startswith(DLQ_HEADER_PREFIX)),
                ("dlq.origin.topic", r.topic.encode()),
                ("dlq.origin.partition", str(r.partition).encode()),
                ("dlq.origin.offset", str(r.offset).encode()),
                ("dlq.consumer.group", self.group_id.encode()),
                ("dlq.service", self.service.encode()),
                # Cut to whole characters: a header cut inside one is no UTF-8 text.
                ("dlq.error", (m.error or "").encode()[:4000].decode(errors="ignore").encode()),
                ("dlq.error.type", (m.error_type or "").encode()),
                ("dlq.attempts", str(m.attempts).encode()),
                ("dlq.failed_at", datetime.now(UTC).isoformat().encode()),
                ("dlq.event.type", event_type.encode()),
            ]
            value = r.value
            while True:
                try:
                    await self.producer.send_and_wait(
                        topic_names.DLQ, value=value, key=r.key, headers=headers
                    )
                    break
                except KafkaError as exc:
                    if isinstance(exc, MessageSizeTooLargeError) and value is not None:
                        # The message fits its topic but not with our headers (or not the DLQ):
                        # the letter names where it is instead, or the partition would stall.
                        log.warning("consumer.dlq_value_omitted", size=len(value), error=repr(exc))
                        headers.append((VALUE_OMITTED_HEADER, str(len(value)).encode()))
                        value = None
                        continue
                    if stop.is_set():
                        raise  # offsets stay uncommitted: the message is redone after restart
                    replace = self.producer_factory is not None and producer_is_broken(
                        self.producer, exc
                    )
                    log.warning(
                        "consumer.dlq_publish_failed",
                        error=repr(exc),
                        retry_in=backoff,
                        replace_producer=replace,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    if replace:
                        await self._replace_producer()
            metrics.EVENTS_FAILED.labels(self.service, event_type, m.error_type or "error").inc()
            log.error(
                "consumer.dead_lettered",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                event_type=event_type,
                error=m.error,
            )

    async def _replace_producer(self) -> None:
        assert self.producer_factory is not None
        if self._own_producer:  # the service's shared producer is stopped by its owner
            await stop_producer(self.producer)
        try:
            self.producer = await self.producer_factory()
            self._own_producer = True
        except Exception as exc:  # broker unreachable: retried on the next failed send
            log.warning("consumer.producer_replacement_failed", error=repr(exc))

    async def close(self) -> None:
        """Stop the producer the runner made for itself, if it had to."""
        if self._own_producer:
            await stop_producer(self.producer)
            self._own_producer = False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self.commit_offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Redelivery after a rebalance is harmless: the inbox drops what was already applied.
            log.warning("consumer.commit_failed", error=repr(exc))

    async def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_checked < 2.0:
            return
        self._lag_checked = now
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(Exception):
                position = await self.consumer.position(tp)
                metrics.CONSUMER_LAG.labels(self.service, tp.topic, str(tp.partition)).set(
                    max(0, high - position)
                )
