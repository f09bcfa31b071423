"""A service process at run time: what its lifespan owns, and the worker building blocks.

Roles: `api` serves HTTP; `worker` runs consumers, the outbox relay and scheduled rules (plus
health and metrics over HTTP); `all` does both in one process (the default for `make run`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import Clock, SystemClock
from shared.db import SessionFactory, asyncpg_dsn, create_engine, session_factory
from shared.messaging.consumer import BatchProcessor, ConsumerRunner, Decoder, Handler
from shared.messaging.housekeeping import PruneResult, prune_messaging_tables
from shared.messaging.kafka import KafkaProbe, make_consumer, start_producer
from shared.messaging.outbox import OutboxRelay, advisory_key
from shared.messaging.tables import MessagingTables
from shared.observability import metrics
from shared.observability.logging import configure_logging, get_logger
from shared.observability.loop_lag import LoopLag
from shared.settings import ServiceSettings

log = get_logger(__name__)

# Run by every worker: retention of its inbox and idempotency keys (shared.messaging.housekeeping).
HOUSEKEEPING_JOB = "messaging-housekeeping"


class Role(StrEnum):
    api = "api"
    worker = "worker"
    all = "all"


@dataclass
class ServiceRuntime:
    settings: ServiceSettings
    tables: MessagingTables
    role: Role = Role.all
    clock: Clock = field(default_factory=SystemClock)
    configure_logs: bool = True
    engine: AsyncEngine = field(init=False)
    sessions: SessionFactory = field(init=False)
    producer: AIOKafkaProducer | None = field(init=False, default=None)
    kafka_probe: KafkaProbe = field(init=False)
    stop_event: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    producer_ready: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(init=False, default_factory=list)
    # Work an HTTP request started and answered before it ended (`Prefer: respond-async`).
    background: set[asyncio.Task[Any]] = field(init=False, default_factory=set)
    runners: list[ConsumerRunner] = field(init=False, default_factory=list)
    relay: OutboxRelay | None = field(init=False, default=None)

    @property
    def service(self) -> str:
        return self.settings.service_name

    async def start(self) -> None:
        s = self.settings
        if self.configure_logs:
            configure_logging(service=s.service_name, level=s.log_level, fmt=s.log_format)
        self.stop_event = asyncio.Event()
        self.producer_ready = asyncio.Event()
        self.engine = create_engine(
            s.database_url, pool_size=s.db_pool_size, application_name=f"crm-{s.service_name}"
        )
        self.sessions = session_factory(self.engine)
        self.kafka_probe = KafkaProbe(None)
        self.tasks.append(asyncio.create_task(self._connect_producer(), name="kafka-producer"))
        self.tasks.append(
            asyncio.create_task(LoopLag(s.service_name).run(self.stop_event), name="loop-lag")
        )
        log.info("service.starting", role=self.role.value)

    async def _connect_producer(self) -> None:
        """Keep trying: the API serves (and reports not ready) while Kafka is unreachable."""
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                self.producer = await start_producer(self.settings)
                self.kafka_probe.producer = self.producer
                self.producer_ready.set()
                log.info("kafka.producer_ready")
                return
            except Exception as exc:
                log.warning("kafka.producer_unavailable", error=repr(exc), retry_in=backoff)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), timeout=backoff)
                backoff = min(backoff * 2, 10.0)

    async def wait_producer(self) -> AIOKafkaProducer:
        await self.producer_ready.wait()
        assert self.producer is not None
        return self.producer

    def spawn_worker(self, start: Callable[[ServiceRuntime], Sequence[Awaitable[None]]]) -> None:
        """The service's worker jobs, plus what every worker runs: the messaging housekeeping."""
        jobs = [
            *start(self),
            self.run_periodic(
                HOUSEKEEPING_JOB, self.settings.housekeeping_interval_seconds, self.prune_messaging
            ),
        ]
        for job in jobs:
            self.tasks.append(asyncio.create_task(self._supervise(job), name="worker"))

    async def _supervise(self, job: Awaitable[None]) -> None:
        try:
            await job
        except asyncio.CancelledError:
            raise
        except Exception:
            # A crashed worker loop must not go unnoticed: log and stop the process (orchestrator restarts it).
            log.exception("worker.crashed")
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)

    def run_in_background(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run work a request answered before it ended; a failure is logged (the work records
        its own outcome), and stopping waits for it as for the worker's jobs."""
        task = asyncio.create_task(work, name=name)
        self.background.add(task)

        def finished(done: asyncio.Task[Any]) -> None:
            self.background.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("background.failed", work=name, exc_info=done.exception())

        task.add_done_callback(finished)
        return task

    async def stop(self, grace_seconds: float = 20.0) -> None:
        self.stop_event.set()
        if self.tasks or self.background:
            _, pending = await asyncio.wait([*self.tasks, *self.background], timeout=grace_seconds)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
        self.tasks.clear()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), timeout=10)
        await self.engine.dispose()
        log.info("service.stopped")

    # -- worker building blocks ---------------------------------------------------------------

    async def run_relay(self, *, batch_size: int = 1000) -> None:
        """The outbox relay, with a producer of its own: it replaces that producer when it is
        broken for good (see OutboxRelay), which the consumers' shared one must not undergo."""
        self.relay = OutboxRelay(
            service=self.service,
            dsn=asyncpg_dsn(self.settings.database_url),
            producer_factory=lambda: start_producer(self.settings),
            batch_size=batch_size,
        )
        await self.relay.run(self.stop_event)

    async def run_consumer(
        self,
        *,
        topics: list[str],
        handlers: Mapping[str, Handler],
        process: BatchProcessor | None = None,
        decoders: Mapping[str, Decoder] | None = None,
        group_id: str | None = None,
        emits: bool = True,
        read_model: bool = False,
        shared_locks: Sequence[str] = (),
    ) -> None:
        """Run a consumer until stop. `emits=False`: a projection-only consumer, which takes no
        customer locks (see shared.messaging.consumer). `read_model`: one off the path of a
        purchase's stage and value, which lingers CONSUMER_READ_MODEL_LINGER_MS per batch."""
        producer = await self.wait_producer()
        group = group_id or self.service
        consumer = make_consumer(self.settings, group_id=group, topics_=[])
        runner = ConsumerRunner(
            service=self.service,
            consumer=consumer,
            producer=producer,
            sessions=self.sessions,
            tables=self.tables,
            handlers=handlers,
            process=process,
            decoders=decoders,
            group_id=group,
            max_attempts=self.settings.consumer_max_attempts,
            batch_size=self.settings.consumer_batch_size,
            linger=(
                self.settings.consumer_read_model_linger_ms
                if read_model
                else self.settings.consumer_batch_linger_ms
            )
            / 1000,
            commit_interval=self.settings.consumer_commit_interval_ms / 1000,
            emits=emits,
            shared_locks=shared_locks,
            producer_factory=lambda: start_producer(self.settings),
        )
        consumer.subscribe(topics, listener=runner.rebalance_listener())
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                await consumer.start()
                break
            except Exception as exc:
                log.warning("kafka.consumer_unavailable", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self.runners.append(runner)
        log.info("consumer.started", topics=topics, group=group)
        try:
            await runner.run(self.stop_event)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), timeout=10)
            with contextlib.suppress(Exception):
                await runner.close()
            log.info("consumer.stopped", processed=runner.processed)

    async def prune_messaging(self) -> PruneResult:
        """Delete inbox rows and idempotency keys past their retention, as of the clock's now."""
        s = self.settings
        return await prune_messaging_tables(
            engine=self.engine,
            tables=self.tables,
            service=self.service,
            now=self.clock.now(),
            inbox_retention=timedelta(hours=s.inbox_retention_hours),
            idempotency_retention=timedelta(hours=s.idempotency_key_retention_hours),
        )

    async def run_periodic(
        self, name: str, interval_seconds: float, job: Callable[[], Awaitable[Any]]
    ) -> None:
        """Run `job` every interval on exactly one replica (a session advisory lock per job)."""
        from sqlalchemy import text

        key = advisory_key(f"job:{self.service}:{name}")
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=interval_seconds)
            if self.stop_event.is_set():
                return
            try:
                async with self.engine.connect() as connection:
                    # The lock is the session's, taken outside a transaction: one opened for it
                    # would stay "idle in transaction" for as long as the job works on its own
                    # connections (a minute for a large recompute), which monitoring flags and
                    # an idle_in_transaction_session_timeout ends, the lock with it.
                    conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    got = (
                        await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                    ).scalar()
                    if not got:
                        metrics.JOB_RUNS.labels(self.service, name, "skipped").inc()
                        continue
                    try:
                        result = await job()
                        metrics.JOB_RUNS.labels(self.service, name, "ok").inc()
                        # A poll that found nothing to do (0, None, empty) is not news: jobs
                        # polled every second or two would fill the log with it.
                        (log.info if result else log.debug)(
                            "job.done", job=name, result=str(result)[:300]
                        )
                    finally:
                        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception:
                metrics.JOB_RUNS.labels(self.service, name, "error").inc()
                log.exception("job.failed", job=name)
