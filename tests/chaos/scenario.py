"""One chaos run: the platform, its load, the faults, and the reconciliation after each fault."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from chaos.harness import Infrastructure, Services
from chaos.load import (
    BusinessClock,
    HttpPurchases,
    IngestLoad,
    Ledger,
    Load,
    ReadProbe,
    ReadSample,
    register_customers,
)
from chaos.reconcile import Poison, Progress, Reconciler, read_topic

from shared.events import topics

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class ChaosProfile:
    """How hard and how long: `full` for `make chaos`, `ci` for the fast subset."""

    name: str
    customers: int
    ingest_rate: float  # orders/s on the ingest topic
    http_rate: float  # purchases/s over HTTP
    kill_rounds: int  # kill -9 of every worker, this many times each
    steady_seconds: float  # load between faults
    outage_seconds: float  # how long a stopped broker or database stays down
    duplicate_batch: int  # records re-produced per topic
    settle_timeout: float  # bound on waiting for the platform to catch up

    @property
    def expected_orders(self) -> int:
        faults = 4 * self.kill_rounds * 6 + 2 * (self.outage_seconds + 40)
        return int((self.ingest_rate + self.http_rate) * (faults + 8 * self.steady_seconds))


PROFILES = {
    "full": ChaosProfile("full", 300, 150.0, 4.0, 3, 10.0, 8.0, 300, 180.0),
    "ci": ChaosProfile("ci", 100, 60.0, 2.0, 1, 5.0, 4.0, 100, 120.0),
}


def chosen_profile() -> ChaosProfile:
    name = os.environ.get("CRM_CHAOS_PROFILE", "full")
    if name not in PROFILES:
        raise ValueError(f"CRM_CHAOS_PROFILE={name!r}: one of {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass
class ChaosRun:
    profile: ChaosProfile
    infrastructure: Infrastructure
    services: Services
    database_urls: dict[str, str]  # {service: SQLAlchemy URL}
    client: httpx.AsyncClient
    ledger: Ledger = field(default_factory=Ledger)
    customers: list[uuid.UUID] = field(default_factory=list)
    ingest: IngestLoad | None = None
    http: HttpPurchases | None = None
    load: Load | None = None
    reconciler: Reconciler | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)
    duplicated: collections.Counter[str] = field(default_factory=collections.Counter)
    _exits_reported: int = 0
    _phase_reads: list[ReadSample] = field(default_factory=list)

    async def prepare(self) -> None:
        clock = BusinessClock(
            span=timedelta(days=365), expected_orders=self.profile.expected_orders
        )
        self.customers = await register_customers(
            self.client,
            self.services.url("profile"),
            self.profile.customers,
            registered_at=clock.start - timedelta(days=1),
        )
        self.ingest = IngestLoad(
            bootstrap_servers=self.infrastructure.bootstrap_servers,
            idempotence=self.infrastructure.kafka.supports_idempotence,
            ledger=self.ledger,
            customers=self.customers,
            clock=clock,
            rate=self.profile.ingest_rate,
        )
        self.http = HttpPurchases(
            client=self.client,
            profile_url=self.services.url("profile"),
            ledger=self.ledger,
            customers=self.customers,
            clock=clock,
            rate=self.profile.http_rate,
        )
        probe = ReadProbe(
            client=self.client,
            urls=self.services.url,
            ledger=self.ledger,
            customers=self.customers,
            services=self.services.services,
        )
        self.load = Load(self.ingest, self.http, probe)
        self.reconciler = Reconciler(
            self.database_urls, self.infrastructure.bootstrap_servers, self.ledger, self.customers
        )

    def mark(self, phase: str) -> None:
        self.ledger.phase = phase
        self.timeline.append((time.time(), phase))
        print(f"[chaos {time.strftime('%H:%M:%S')}] {phase}", flush=True)

    @contextlib.asynccontextmanager
    async def under_load(self, name: str) -> AsyncIterator[None]:
        assert self.load is not None
        first_read = len(self.ledger.reads)
        self.mark(f"steady:{name}")
        async with self.load.running():
            await asyncio.sleep(self.profile.steady_seconds)
            yield
            self.mark(f"steady:{name}")
            await asyncio.sleep(self.profile.steady_seconds)
        self.mark(f"drain:{name}")
        self._phase_reads = self.ledger.reads[first_read:]

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # -- faults ------------------------------------------------------------------------------

    async def kill_and_restart_worker(self, service: str) -> None:
        self.mark(f"recovery:kill-{service}")
        pid = await asyncio.to_thread(self.services.kill_worker, service)
        print(f"    killed {service} worker (pid {pid})", flush=True)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.services.restart_worker, service)

    async def restart_broker(self) -> None:
        self.mark("outage:kafka")
        await asyncio.to_thread(self.infrastructure.stop_kafka)
        await asyncio.sleep(self.profile.outage_seconds)
        await asyncio.to_thread(self.infrastructure.start_kafka)
        self.mark("recovery:kafka")

    async def restart_postgres(self) -> None:
        self.mark("outage:postgres")
        await asyncio.to_thread(self.infrastructure.stop_postgres, immediate=True)
        await asyncio.sleep(self.profile.outage_seconds)
        await asyncio.to_thread(self.infrastructure.start_postgres)
        self.mark("recovery:postgres")

    async def duplicate_batches(self) -> dict[str, int]:
        """Re-produce the same bytes (and keys) of the latest records of the input topics."""
        self.mark("recovery:duplicates")
        counts = {}
        producer = AIOKafkaProducer(
            bootstrap_servers=self.infrastructure.bootstrap_servers, acks="all"
        )
        await producer.start()
        try:
            for topic in (topics.INGEST_ORDERS, topics.PURCHASES, topics.CUSTOMERS):
                records = (await read_topic(self.infrastructure.bootstrap_servers, topic))[
                    -self.profile.duplicate_batch :
                ]
                records = [
                    r
                    for r in records
                    if not any(
                        p.offset == r.offset and p.partition == r.partition and p.topic == topic
                        for p in self._poison()
                    )
                ]
                for record in records:
                    await producer.send(
                        topic, value=record.value, key=record.key, partition=record.partition
                    )
                await producer.flush()
                counts[topic] = len(records)
                self.duplicated[topic] += len(records)
        finally:
            await producer.stop()
        return counts

    def _poison(self) -> list[Poison]:
        assert self.reconciler is not None
        return self.reconciler.poison

    async def inject_poison(self) -> list[Poison]:
        """Unparseable bytes and well-formed JSON with bad payloads, on the ingest topic and on
        a contract topic (every consumer group of that topic must dead-letter them)."""
        self.mark("recovery:poison")
        assert self.reconciler is not None
        now = datetime.now(UTC) - timedelta(days=1)
        customer = str(self.customers[0])
        envelope = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/crm/profile",
            "type": "crm.purchase.recorded.v1",
            "subject": customer,
            "time": now.isoformat(),
            "datacontenttype": "application/json",
            "data": {"customer_id": customer, "order_id": "", "amount": "-1"},
        }
        messages = [
            (topics.INGEST_ORDERS, b"{this is not json", "ingest: not JSON"),
            (
                topics.INGEST_ORDERS,
                orjson.dumps(
                    {
                        "order_id": f"poison-{uuid.uuid4().hex[:6]}",
                        "customer_id": customer,
                        "amount": "-5.00",
                        "currency": "USD",
                        "occurred_at": now.isoformat(),
                    }
                ),
                "ingest: negative amount",
            ),
            (
                topics.INGEST_ORDERS,
                orjson.dumps(
                    {
                        "order_id": f"poison-{uuid.uuid4().hex[:6]}",
                        "customer_id": str(uuid.uuid4()),
                        "amount": "5.00",
                        "currency": "USD",
                        "occurred_at": now.isoformat(),
                    }
                ),
                "ingest: unknown customer",
            ),
            (topics.PURCHASES, b"\x00\x01 garbage", "purchases: not JSON"),
            (topics.PURCHASES, orjson.dumps(envelope), "purchases: invalid payload"),
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=self.infrastructure.bootstrap_servers, acks="all"
        )
        await producer.start()
        injected = []
        try:
            for topic, value, why in messages:
                meta = await producer.send_and_wait(topic, value=value, key=customer.encode())
                injected.append(Poison(topic, meta.partition, meta.offset, value, why))
        finally:
            await producer.stop()
        self.reconciler.poison.extend(injected)
        return injected

    # -- reconciliation ----------------------------------------------------------------------

    async def reconcile(self, what: str) -> Progress:
        """Send what is still unacknowledged, wait until the platform settles, then check all."""
        assert self.ingest is not None and self.http is not None and self.reconciler is not None
        await self.ingest.drain_retries()
        await self.http.drain_retries()
        started = time.monotonic()
        progress = await self.reconciler.settle(timeout=self.profile.settle_timeout)
        print(
            f"    settled={progress.settled} in {time.monotonic() - started:.1f}s: "
            f"offered={len(self.ledger.orders)} acknowledged={len(self.ledger.acknowledged)} "
            f"lag={progress.lag} outbox={progress.outbox} mismatched={progress.mismatched}",
            flush=True,
        )
        problems = await self.reconciler.problems()
        if problems:
            # The platform's own scheduled work (lifecycle's sweep runs on the wall clock) may
            # publish between the settle and the checks: what it published must be applied
            # too, so settle once more and check again; a lost or misapplied event stays.
            print(
                f"    not settled at the checks ({problems[0][:200]}); settling again", flush=True
            )
            await self.reconciler.settle(timeout=self.profile.settle_timeout)
            problems = await self.reconciler.problems()
        problems += self.read_problems(self._phase_reads)
        # A process that dies on its own is restarted by the supervisor (as an orchestrator
        # would), but it is still a crash: reported once, with the tail of its log.
        fresh_exits = self.services.unexpected_exits[self._exits_reported :]
        self._exits_reported = len(self.services.unexpected_exits)
        problems += [f"{e.name} exited by itself ({e.code}):\n{e.log_tail}" for e in fresh_exits]
        assert not problems, f"after {what}:\n- " + "\n- ".join(problems)
        return progress

    @staticmethod
    def read_problems(reads: list[ReadSample]) -> list[str]:
        """/v1 reads never fail with 5xx, except an honest 503 (problem+json with Retry-After)
        while a dependency is down; readiness may say 503; an API process always answers."""
        bad = []
        for sample in reads:
            if sample.status is None:
                bad.append(sample)
            elif sample.path.startswith("/health"):
                if sample.status not in (200, 503):
                    bad.append(sample)
            elif sample.status >= 500:
                honest = (
                    sample.status == 503
                    and sample.content_type.startswith(PROBLEM_JSON)
                    and sample.retry_after is not None
                )
                if not (honest and sample.phase.startswith("outage:")):
                    bad.append(sample)
        if not bad:
            return []
        kinds = collections.Counter((s.phase, s.service, s.path, s.status) for s in bad)
        return [f"{len(bad)} bad reads {dict(kinds)}; first: {bad[0]}"]

    def read_summary(self) -> dict[tuple[str, str, str, int | None], int]:
        return dict(
            collections.Counter(
                (s.phase.split(":")[0], s.service, s.path, s.status) for s in self.ledger.reads
            )
        )
