"""Steady load for chaos and soak runs, and the ledger of what was offered and acknowledged.

- `IngestLoad`: orders as plain JSON on `crm.ingest.orders.v1` (key = customer id) at a fixed
  rate; an order whose produce was not acknowledged is sent again later (same bytes), like an
  outside system that retries, so the ledger knows which orders the platform *must* record.
- `HttpPurchases`: purchases posted to profile over HTTP, retried (same order_id) until a 2xx.
- `ReadProbe`: reads of the three read models and `/health/ready`, every response recorded with
  the phase it happened in (steady, outage:<what>, recovery:<what>).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.events import topics
from shared.http.auth import SCOPES, issue_dev_token
from shared.settings import ServiceSettings


def bearer() -> dict[str, str]:
    token = issue_dev_token(ServiceSettings(), scopes=list(SCOPES), subject="chaos")
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: uuid.UUID
    amount: Decimal
    occurred_at: datetime
    via: str  # "ingest" or "http"

    def ingest_json(self) -> bytes:
        return orjson.dumps(
            {
                "order_id": self.order_id,
                "customer_id": str(self.customer_id),
                "amount": str(self.amount),
                "currency": "USD",
                "occurred_at": self.occurred_at.isoformat(),
                "channel": "web",
                "items": [
                    {
                        "sku": "SKU-1",
                        "category": "apparel",
                        "quantity": 1,
                        "unit_price": str(self.amount),
                    }
                ],
            }
        )

    def http_body(self) -> dict[str, object]:
        return {
            "order_id": self.order_id,
            "amount": str(self.amount),
            "currency": "USD",
            "occurred_at": self.occurred_at.isoformat(),
            "channel": "store",
        }


@dataclass(frozen=True)
class ReadSample:
    at: float
    phase: str
    service: str
    path: str
    status: int | None  # None: no answer (connection refused, timeout)
    content_type: str
    error: str = ""
    retry_after: str | None = None  # the Retry-After header of a 503


@dataclass
class Ledger:
    """Everything the load offered, what was acknowledged, and how reads and writes answered."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    orders: dict[str, Order] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    produce_attempts: int = 0
    produce_failures: int = 0
    write_statuses: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )
    reads: list[ReadSample] = field(default_factory=list)
    phase: str = "steady"
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def next_order_id(self, via: str) -> str:
        return f"chaos-{self.run_id}-{via}-{next(self._sequence)}"


class BusinessClock:
    """Business times that grow with every order: a year of history compressed into the run,
    so that customers go prospect -> growth -> mature while the run lasts."""

    def __init__(
        self, *, span: timedelta, expected_orders: int, now: datetime | None = None
    ) -> None:
        self.end = (now or datetime.now(UTC)) - timedelta(hours=1)
        self.start = self.end - span
        self.step = span / max(1, expected_orders)
        self.issued = 0

    def next(self) -> datetime:
        at = min(self.start + self.step * self.issued, self.end)
        self.issued += 1
        return at


async def register_customers(
    client: httpx.AsyncClient,
    profile_url: str,
    count: int,
    *,
    registered_at: datetime,
    concurrency: int = 8,
) -> list[uuid.UUID]:
    """POST /v1/customers `count` times; retried on errors (bounded)."""
    headers = bearer()
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> uuid.UUID:
        body = {
            "kind": "person",
            "name": f"Chaos Customer {index}",
            "email": f"chaos-{uuid.uuid4().hex[:12]}@example.com",
            "registered_at": registered_at.isoformat(),
        }
        async with semaphore:
            for _ in range(20):
                try:
                    response = await client.post(
                        f"{profile_url}/v1/customers", json=body, headers=headers, timeout=10
                    )
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code == 201:
                    return uuid.UUID(response.json()["id"])
                if response.status_code < 500:
                    raise AssertionError(
                        f"registering a customer: {response.status_code} {response.text}"
                    )
                await asyncio.sleep(0.5)
        raise AssertionError("could not register a customer in 20 attempts")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


class IngestLoad:
    """Orders on the ingest topic at `rate` per second, in ticks of 100 ms."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        idempotence: bool,
        ledger: Ledger,
        customers: Sequence[uuid.UUID],
        clock: BusinessClock,
        rate: float,
        seed: int = 7,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.idempotence = idempotence
        self.ledger = ledger
        self.customers = list(customers)
        self.clock = clock
        self.rate = rate
        self.random = random.Random(seed)
        self.retry: collections.deque[Order] = collections.deque()
        self.sent = 0
        self.failed_in_a_row = 0

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            enable_idempotence=self.idempotence,
            linger_ms=5,
            request_timeout_ms=10000,
            retry_backoff_ms=200,
        )

    async def _start(self, stop: asyncio.Event) -> AIOKafkaProducer | None:
        while not stop.is_set():
            producer = self._producer()
            try:
                await asyncio.wait_for(producer.start(), timeout=15)
                return producer
            except Exception:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), timeout=5)
                await asyncio.sleep(1.0)
        return None

    def _new_order(self) -> Order:
        order = Order(
            order_id=self.ledger.next_order_id("ingest"),
            customer_id=self.random.choice(self.customers),
            amount=Decimal(self.random.randrange(100, 20000)) / 100,
            occurred_at=self.clock.next(),
            via="ingest",
        )
        self.ledger.orders[order.order_id] = order
        return order

    async def run(self, stop: asyncio.Event) -> None:
        """Every tick: hand the due orders to the producer; their acknowledgements are awaited
        by a task per tick, so a slow broker lowers the acknowledged rate, not the offered one
        (up to `max_in_flight` ticks, then the loop waits: back-pressure)."""
        producer = await self._start(stop)
        tick, carry, max_in_flight = 0.1, 0.0, 100
        in_flight: collections.deque[asyncio.Task[bool]] = collections.deque()
        loop = asyncio.get_running_loop()
        try:
            while producer is not None and not stop.is_set():
                started = loop.time()
                carry = min(carry + self.rate * tick, self.rate)  # no catching up after a stall
                due = int(carry)
                carry -= due
                retries = [self.retry.popleft() for _ in range(min(len(self.retry), max(due, 50)))]
                batch = retries + [self._new_order() for _ in range(due)]
                if batch:
                    in_flight.append(asyncio.create_task(self._send(producer, batch)))
                while in_flight and (in_flight[0].done() or len(in_flight) > max_in_flight):
                    await in_flight.popleft()
                if self.failed_in_a_row >= 3:
                    # A producer that keeps failing (e.g. fenced after a broker restart) is replaced.
                    while in_flight:
                        await in_flight.popleft()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), timeout=5)
                    producer = await self._start(stop)
                    self.failed_in_a_row = 0
                await asyncio.sleep(max(0.0, tick - (loop.time() - started)))
        finally:
            while in_flight:
                await in_flight.popleft()
            if producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), timeout=10)

    async def _send(self, producer: AIOKafkaProducer, batch: list[Order]) -> bool:
        """Send a batch and record which orders the broker acknowledged; the others are retried."""
        self.ledger.produce_attempts += len(batch)
        futures: list[asyncio.Future[object]] = []
        sent: list[Order] = []
        try:
            async with asyncio.timeout(20):
                for order in batch:
                    futures.append(
                        await producer.send(
                            topics.INGEST_ORDERS,
                            value=order.ingest_json(),
                            key=str(order.customer_id).encode(),
                        )
                    )
                    sent.append(order)
                results = await asyncio.gather(*futures, return_exceptions=True)
        except (TimeoutError, KafkaError, OSError):
            results = [None] * len(sent)
            for future in futures:
                future.cancel()
        all_ok = True
        for order, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException) or result is None:
                all_ok = False
                self.ledger.produce_failures += 1
                self.retry.append(order)
            else:
                self.ledger.acknowledged.add(order.order_id)
                self.sent += 1
        for order in batch[len(sent) :]:
            all_ok = False
            self.ledger.produce_failures += 1
            self.retry.append(order)
        self.failed_in_a_row = 0 if all_ok else self.failed_in_a_row + 1
        return all_ok

    async def drain_retries(self, timeout: float = 60.0) -> None:
        """After the load stopped: send what is still unacknowledged (bounded in time)."""
        if not self.retry:
            return
        stop = asyncio.Event()
        producer = await asyncio.wait_for(self._start(stop), timeout=timeout)
        assert producer is not None
        deadline = time.monotonic() + timeout
        try:
            while self.retry and time.monotonic() < deadline:
                batch = [self.retry.popleft() for _ in range(min(len(self.retry), 500))]
                if not await self._send(producer, batch):
                    await asyncio.sleep(0.5)
        finally:
            await asyncio.wait_for(producer.stop(), timeout=10)


class HttpPurchases:
    """Purchases over HTTP at `rate` per second; failed ones are retried with the same order_id."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        profile_url: str,
        ledger: Ledger,
        customers: Sequence[uuid.UUID],
        clock: BusinessClock,
        rate: float,
        seed: int = 11,
    ) -> None:
        self.client = client
        self.profile_url = profile_url
        self.ledger = ledger
        self.customers = list(customers)
        self.clock = clock
        self.rate = rate
        self.random = random.Random(seed)
        self.retry: collections.deque[Order] = collections.deque()
        self.headers = bearer()

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1.0 / self.rate
        while not stop.is_set():
            started = time.monotonic()
            order = self.retry.popleft() if self.retry else self._new_order()
            await self.post(order)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _new_order(self) -> Order:
        order = Order(
            order_id=self.ledger.next_order_id("http"),
            customer_id=self.random.choice(self.customers),
            amount=Decimal(self.random.randrange(100, 20000)) / 100,
            occurred_at=self.clock.next(),
            via="http",
        )
        self.ledger.orders[order.order_id] = order
        return order

    async def post(self, order: Order) -> bool:
        url = f"{self.profile_url}/v1/customers/{order.customer_id}/purchases"
        try:
            response = await self.client.post(
                url, json=order.http_body(), headers=self.headers, timeout=5
            )
            status = str(response.status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
            response = None
        self.ledger.write_statuses[(self.ledger.phase, status)] += 1
        if response is not None and response.status_code in (200, 201):
            self.ledger.acknowledged.add(order.order_id)
            return True
        if response is not None and 400 <= response.status_code < 500:
            raise AssertionError(f"purchase refused: {response.status_code} {response.text}")
        self.retry.append(order)
        return False

    async def drain_retries(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.retry and time.monotonic() < deadline:
            if not await self.post(self.retry.popleft()):
                await asyncio.sleep(0.5)


class ReadProbe:
    """GETs on profile, lifecycle and scoring read models plus readiness, every `interval`."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        urls: Callable[[str], str],
        ledger: Ledger,
        customers: Sequence[uuid.UUID],
        services: Sequence[str] = ("profile", "lifecycle", "complaints", "scoring"),
        interval: float = 0.1,
        seed: int = 13,
    ) -> None:
        self.services = list(services)
        self.reads = [(s, path) for s, path in self.READS if s in self.services]
        self.client = client
        self.urls = urls
        self.ledger = ledger
        self.customers = list(customers)
        self.interval = interval
        self.random = random.Random(seed)
        self.headers = bearer()

    READS = (
        ("profile", "/v1/customers/{id}"),
        ("profile", "/v1/customers/{id}/360"),  # the raw asyncpg read pool, not the ORM's
        ("lifecycle", "/v1/customers/{id}/lifecycle"),
        ("scoring", "/v1/customers/{id}/value"),
    )

    async def run(self, stop: asyncio.Event) -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            service, template = self.reads[turn % len(self.reads)]
            path = template.format(id=self.random.choice(self.customers))
            await self._get(service, path, self.headers)
            if turn % 10 == 0:
                for name in self.services:
                    await self._get(name, "/health/ready", {})
            await asyncio.sleep(self.interval)

    async def _get(self, service: str, path: str, headers: dict[str, str]) -> None:
        url = f"{self.urls(service)}{path}"
        try:
            try:
                response = await self.client.get(url, headers=headers, timeout=5)
            except httpx.RemoteProtocolError:
                # A kept-alive connection closed by the server as we reused it: retried once,
                # as HTTP clients do for idempotent requests.
                response = await self.client.get(url, headers=headers, timeout=5)
            sample = ReadSample(
                time.time(),
                self.ledger.phase,
                service,
                _template(path),
                response.status_code,
                response.headers.get("content-type", ""),
                response.text[:300] if response.status_code >= 500 else "",
                response.headers.get("retry-after"),
            )
        except httpx.HTTPError as error:
            sample = ReadSample(
                time.time(),
                self.ledger.phase,
                service,
                _template(path),
                None,
                "",
                repr(error)[:300],
            )
        self.ledger.reads.append(sample)


def _template(path: str) -> str:
    parts = path.split("/")
    return "/".join("{id}" if _is_uuid(part) else part for part in parts)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class Load:
    """The three load tasks together: `async with load.running(): ...`."""

    def __init__(self, *parts: IngestLoad | HttpPurchases | ReadProbe) -> None:
        self.parts = parts
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def running(self) -> collections.abc.AsyncIterator[None]:
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(part.run(self.stop)) for part in self.parts]
        try:
            yield
            self.raise_failures()
        finally:
            self.stop.set()
            _done, pending = await asyncio.wait(self.tasks, timeout=40)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.raise_failures()

    def raise_failures(self) -> None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
