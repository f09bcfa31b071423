"""End to end: orders offered on the ingest topic (or posted over HTTP) through profile ->
lifecycle and scoring, at increasing load until saturation, checked by reconciliation; then
latency at half the saturation rate, matched per customer on the published events.

Reconciliation, not sleeping: a step is done when profile's `purchases` table holds every
order and the inboxes of lifecycle and scoring hold every `crm.purchase.recorded.v1` event
(each inbox row commits in the same transaction as the projection it fed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from bench.common import http_load, percentiles
from bench.stack import BenchStack
from shared.events import topics
from shared.messaging.kafka import DEFAULT_PARTITIONS

PURCHASE_RECORDED = "crm.purchase.recorded.v1"
STAGE_CHANGED = "crm.lifecycle.stage_changed.v1"
VALUE_SCORED = "crm.value.scored.v1"
STAGES = ("profile", "lifecycle", "scoring")


@dataclass
class Step:
    path: str  # "ingest" or "http"
    offered_rps: float
    orders: int
    produce_s: float = 0.0  # how long offering took (the offered rate actually achieved)
    done_s: dict[str, float | None] = field(default_factory=dict)  # per stage, from the first send
    # Orders/s the slowest stage kept up while it went from 10% to 90% of the step's orders
    # (the pipeline's fixed latency at the start and the drain at the end excluded).
    achieved_rps: float = 0.0
    completion_rps: float = 0.0  # orders / time until every projection reflected them all
    drain_lag_s: float | None = None  # last projection done - last order offered
    stage_rps: dict[str, float] = field(default_factory=dict)
    drained: bool = False
    http: dict[str, Any] | None = None
    series: list[tuple[float, int, int, int]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)  # per service: SQL per event, CPU

    @property
    def offered_actual_rps(self) -> float:
        return self.orders / self.produce_s if self.produce_s else self.offered_rps

    @property
    def saturated(self) -> bool:
        """Not keeping up: not drained, the steady rate under 80% of what was offered, or a
        backlog left when offering ended that takes more than max(2 s, 25% of the step) to drain."""
        if not self.drained or self.achieved_rps < 0.8 * self.offered_actual_rps:
            return True
        return self.drain_lag_s is not None and self.drain_lag_s > max(2.0, 0.25 * self.produce_s)


class Projections:
    """Counts in the services' own databases, on connections kept open for the whole run."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.connections: dict[str, asyncpg.Connection] = {}

    async def open(self) -> None:
        for service in STAGES:
            self.connections[service] = await asyncpg.connect(self.stack.service_db(service))

    async def close(self) -> None:
        for connection in self.connections.values():
            await connection.close()

    async def now(self) -> datetime:
        value: datetime = await self.connections["profile"].fetchval("SELECT now()")
        return value

    async def counts(self, since: datetime) -> dict[str, int]:
        """Purchases in profile (all), purchase events processed by lifecycle and scoring since."""
        profile = await self.connections["profile"].fetchval("SELECT count(*) FROM purchases")
        result = {"profile": int(profile)}
        for service in ("lifecycle", "scoring"):
            result[service] = int(
                await self.connections[service].fetchval(
                    "SELECT count(*) FROM inbox WHERE processed_at >= $1 AND event_type = $2",
                    since,
                    PURCHASE_RECORDED,
                )
            )
        return result

    async def totals(self) -> dict[str, int]:
        """Whole-run reconciliation: purchases known to each service."""
        result = {
            "profile": int(
                await self.connections["profile"].fetchval("SELECT count(*) FROM purchases")
            )
        }
        for service in ("lifecycle", "scoring"):
            result[f"{service}_inbox"] = int(
                await self.connections[service].fetchval(
                    "SELECT count(*) FROM inbox WHERE event_type = $1", PURCHASE_RECORDED
                )
            )
        if await self.connections["scoring"].fetchval(
            "SELECT to_regclass('purchases') IS NOT NULL"
        ):
            result["scoring_ledger"] = int(
                await self.connections["scoring"].fetchval("SELECT count(*) FROM purchases")
            )
        result["outbox_left"] = 0
        for service, connection in self.connections.items():
            left = int(await connection.fetchval("SELECT count(*) FROM outbox"))
            result["outbox_left"] += left
            result[f"{service}_outbox"] = left
        return result


async def start_producer(bootstrap: str, idempotent: bool) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30000,
    )
    await producer.start()
    return producer


async def offer(
    producer: AIOKafkaProducer,
    topic: str,
    messages: Sequence[tuple[bytes, bytes]],
    rate: float | None,
    sent_at: list[float] | None = None,
) -> float:
    """Send at `rate` messages/s (as fast as possible with None); return the seconds it took.

    Messages go out as one record batch per partition and tick (`create_batch`/`send_batch`):
    one `send()` per message costs the harness more CPU than the brokers and services.
    Partitions are the Java client's murmur2 of the key, computed before the clock starts.
    """
    partitions = sorted(await producer.partitions_for(topic))
    assigned = [partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)] for key, _ in messages]
    futures: list[asyncio.Future[Any]] = []
    started = time.perf_counter()
    sent = 0
    while sent < len(messages):
        if rate is None:
            target = min(len(messages), sent + 5000)
        else:
            target = min(len(messages), int((time.perf_counter() - started) * rate) + 1)
        batches: dict[int, Any] = {}
        stamp = time.time()
        for index in range(sent, target):
            key, value = messages[index]
            partition = assigned[index]
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if sent_at is not None:
                sent_at.append(stamp)
        for partition, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        sent = target
        if sent < len(messages):
            await asyncio.sleep(0.004 if rate is not None else 0)
    await asyncio.gather(*futures)
    return time.perf_counter() - started


async def reconcile(
    projections: Projections,
    step: Step,
    *,
    baseline_profile: int,
    since: datetime,
    started: float,
    offering: asyncio.Task[Any],
    timeout: float,
    expected: Callable[[], int],
) -> None:
    """Poll the projections until each reflects every order of the step (bounded by timeout)."""
    deadline = started + timeout
    while True:
        now = time.perf_counter()
        counts = await projections.counts(since)
        counts["profile"] -= baseline_profile
        elapsed = now - started
        step.series.append(
            (round(elapsed, 3), counts["profile"], counts["lifecycle"], counts["scoring"])
        )
        wanted = expected()
        if offering.done():
            for stage in STAGES:
                if step.done_s.get(stage) is None and counts[stage] >= wanted:
                    step.done_s[stage] = elapsed
            if all(step.done_s.get(s) is not None for s in STAGES):
                step.drained = True
                return
        if now > deadline:
            for stage in STAGES:
                step.done_s.setdefault(stage, None)
            return
        await asyncio.sleep(0.5 if not offering.done() else 0.2)


async def ingest_step(
    stack: BenchStack,
    projections: Projections,
    producer: AIOKafkaProducer,
    messages: Sequence[tuple[bytes, bytes]],
    rate: float,
    *,
    drain_timeout: float,
    echo: Callable[[str], None],
) -> Step:
    step = Step(path="ingest", offered_rps=rate, orders=len(messages))
    baseline = (await projections.counts(await projections.now()))["profile"]
    since = await projections.now()
    started = time.perf_counter()
    offering = asyncio.create_task(offer(producer, topics.INGEST_ORDERS, messages, rate))
    await reconcile(
        projections,
        step,
        baseline_profile=baseline,
        since=since,
        started=started,
        offering=offering,
        timeout=len(messages) / rate + drain_timeout,
        expected=lambda: len(messages),
    )
    step.produce_s = await offering
    _finish(step, len(messages))
    echo(_describe(step))
    return step


def steady_rate(series: Sequence[tuple[float, int, int, int]], orders: int) -> float | None:
    """Orders/s of the slowest stage between 10% and 90% of `orders` (None: too few samples)."""
    low = high = None
    for elapsed, *counts in series:
        slowest = min(counts)
        if low is None and slowest >= 0.1 * orders:
            low = (elapsed, slowest)
        if slowest >= 0.9 * orders:
            high = (elapsed, slowest)
            break
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def _finish(step: Step, orders: int) -> None:
    step.orders = orders
    done = [v for v in step.done_s.values() if v is not None]
    if step.drained and done:
        step.completion_rps = orders / max(done)
        step.drain_lag_s = max(0.0, max(done) - step.produce_s)
        steady = steady_rate(step.series, orders)
        step.achieved_rps = steady if steady is not None else step.completion_rps
    elif step.series:
        # Not drained in time: what the slowest projection got through, per second.
        elapsed, *counts = step.series[-1]
        step.achieved_rps = min(counts) / elapsed if elapsed > 0 else 0.0
        step.completion_rps = step.achieved_rps
    for stage, seconds in step.done_s.items():
        step.stage_rps[stage] = round(orders / seconds, 1) if seconds else 0.0


def _describe(step: Step) -> str:
    stages = "  ".join(
        f"{s} {step.done_s[s]:.1f}s" if step.done_s.get(s) is not None else f"{s} --"
        for s in STAGES
    )
    flag = "" if step.drained else "  (NOT DRAINED within the bound)"
    lag = f", drained {step.drain_lag_s:.1f}s after the last order" if step.drain_lag_s else ""
    return (
        f"    {step.path:<6} offered {step.offered_rps:>7.0f}/s "
        f"(actual {step.offered_actual_rps:>7.0f}/s) {step.orders:>7} orders -> "
        f"sustained {step.achieved_rps:>7.0f}/s (all done at {step.completion_rps:.0f}/s{lag})"
        f"   [{stages}]{flag}"
    )


async def http_step(
    stack: BenchStack,
    projections: Projections,
    requests: list[list[Any]],
    rate: float,
    token: str,
    *,
    duration: float,
    drain_timeout: float,
    echo: Callable[[str], None],
    connections: int = 48,
) -> Step:
    step = Step(path="http", offered_rps=rate, orders=len(requests))
    baseline = (await projections.counts(await projections.now()))["profile"]
    since = await projections.now()
    started = time.perf_counter()
    url = stack.url("profile")
    port = int(url.rsplit(":", 1)[1])
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "rate": rate,
        "duration": duration,
        "connections": connections,
        "headers": {"Authorization": f"Bearer {token}"},
    }
    load = asyncio.create_task(http_load(spec, requests, timeout=duration + 90))
    acknowledged: list[int] = []

    def expected() -> int:
        return acknowledged[0] if acknowledged else 1 << 62

    async def offering() -> None:
        result = await load
        step.http = {k: v for k, v in result.items() if k != "acks"}
        acknowledged.append(int(result["ok"]))

    task = asyncio.create_task(offering())
    await reconcile(
        projections,
        step,
        baseline_profile=baseline,
        since=since,
        started=started,
        offering=task,
        timeout=duration + drain_timeout,
        expected=expected,
    )
    await task
    step.produce_s = float(step.http["elapsed_s"]) if step.http else duration
    _finish(step, acknowledged[0] if acknowledged else 0)
    http = step.http or {}
    echo(
        _describe(step)
        + f"  http p99 {http.get('p99_ms') or 0:.0f} ms, statuses {http.get('statuses')}"
    )
    return step


async def sweep(
    run_step: Callable[[float], Any],
    rates: Sequence[float],
    *,
    deadline: float,
) -> list[Step]:
    """Steps at increasing offered load; stop at the first saturated one (or the deadline)."""
    steps: list[Step] = []
    for rate in rates:
        if time.monotonic() > deadline:
            break
        step: Step | None = await run_step(rate)
        if step is None:
            break
        steps.append(step)
        if step.saturated:
            break
    return steps


def saturation(steps: Sequence[Step]) -> float:
    return max((s.achieved_rps for s in steps), default=0.0)


# --- latency ---------------------------------------------------------------------------------


class EventWatch:
    """Consumes the lifecycle and value topics from their end and keeps, per customer, the
    broker timestamps of the first `stage_changed` to growth and the first `value.scored`."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.growth: dict[str, float] = {}
        self.recorded: dict[str, float] = {}  # first purchase.recorded: profile's hop
        self.scored: list[tuple[str, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            max_poll_records=2000,
        )
        await self.consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (topics.PURCHASES, topics.LIFECYCLE, topics.VALUE)
            for p in range(DEFAULT_PARTITIONS[topic])
        ]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        while not self._stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    document = orjson.loads(record.value)
                    kind = document.get("type")
                    data = document.get("data") or {}
                    customer = str(data.get("customer_id") or document.get("subject"))
                    stamp = record.timestamp / 1000
                    if kind == STAGE_CHANGED and data.get("to_stage") == "growth":
                        self.growth.setdefault(customer, stamp)
                    elif kind == PURCHASE_RECORDED:
                        self.recorded.setdefault(customer, stamp)
                    elif kind == VALUE_SCORED:
                        self.scored.append((customer, stamp))

    def first_scored_after(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for customer, stamp in self.scored:
            found.setdefault(customer, []).append(stamp)
        return found

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5)
            self._task.cancel()
        if self.consumer is not None:
            await self.consumer.stop()


def tail_bursts(
    timed: Sequence[tuple[float, float]],
    share: float = 0.01,
    gap: float = 1.0,
    first_hop: Callable[[float], float | None] | None = None,
) -> list[dict[str, Any]]:
    """Where the slowest `share` of (start, latency ms) pairs sit in time: runs of them whose
    starts are within `gap` seconds of the previous one, each with its start (seconds after the
    first start of all, and epoch seconds to match the services' logs), its count and its worst
    latency, worst first. A few bursts mean stalls; many single orders, a spread-out tail.
    With `first_hop` (start -> that order's first-hop latency, ms), each burst's worst first hop:
    near the worst latency, the stall was upstream of profile's event (ingest); far below it,
    downstream (lifecycle, scoring, their relays)."""
    if not timed:
        return []
    first = min(start for start, _ in timed)
    slowest = sorted(timed, key=lambda pair: pair[1], reverse=True)
    slowest = sorted(slowest[: max(1, round(len(timed) * share))])
    bursts: list[list[tuple[float, float]]] = []
    for pair in slowest:
        if bursts and pair[0] - bursts[-1][-1][0] <= gap:
            bursts[-1].append(pair)
        else:
            bursts.append([pair])
    found = [
        {
            "at_s": round(run[0][0] - first, 1),
            "epoch": round(run[0][0], 3),
            "span_s": round(run[-1][0] - run[0][0], 2),
            "orders": len(run),
            "worst_ms": round(max(latency for _, latency in run), 1),
            **_worst_first_hop(run, first_hop),
        }
        for run in bursts
    ]
    return sorted(found, key=lambda burst: burst["worst_ms"], reverse=True)


def _worst_first_hop(
    run: Sequence[tuple[float, float]], first_hop: Callable[[float], float | None] | None
) -> dict[str, float]:
    if first_hop is None:
        return {}
    hops = [h for h in (first_hop(start) for start, _ in run) if h is not None]
    return {"first_hop_worst_ms": round(max(hops), 1)} if hops else {}


def latency_summary(starts: dict[str, float], watch: EventWatch) -> dict[str, Any]:
    """Per customer: event time minus start time, in ms; customers without an event are missing."""
    growth_timed = [
        (t, (watch.growth[c] - t) * 1000) for c, t in starts.items() if c in watch.growth
    ]
    growth = [latency for _, latency in growth_timed]
    first_hop = {
        t: (watch.recorded[c] - t) * 1000 for c, t in starts.items() if c in watch.recorded
    }
    recorded = [(watch.recorded[c] - t) * 1000 for c, t in starts.items() if c in watch.recorded]
    scored_by = watch.first_scored_after()
    scored_timed = []
    for customer, started in starts.items():
        # The first score at or after the purchase (clocks are the same machine's; 5 ms of slack).
        later = [s for s in scored_by.get(customer, []) if s >= started - 0.005]
        if later:
            scored_timed.append((started, (min(later) - started) * 1000))
    scored = [latency for _, latency in scored_timed]
    return {
        "customers": len(starts),
        "stage_changed_ms": percentiles(growth),
        "value_scored_ms": percentiles(scored),
        # The first hop alone: to profile's purchase.recorded (its consumer and relay).
        "purchase_recorded_ms": percentiles(recorded),
        "missing_stage_changed": len(starts) - len(growth),
        "missing_value_scored": len(starts) - len(scored),
        # Where the slowest 1% sit in time: stalls or a spread-out tail.
        "tail_bursts": {
            "stage_changed": tail_bursts(growth_timed, first_hop=first_hop.get),
            "value_scored": tail_bursts(scored_timed, first_hop=first_hop.get),
        },
    }


# Per hop, from the services' own histograms: how old a batch's oldest event was when the batch
# started (broker, fetch, the batch before it, the linger), how long the batch took, and how
# long the relay took from the writing transaction's start to the broker's acknowledgement.
_HOP_HISTOGRAMS = {
    "crm_consumer_event_age_seconds": "oldest_event_age_ms",
    "crm_consumer_batch_seconds": "batch_ms",
    "crm_outbox_publish_delay_seconds": "relay_ms",
    # Per process: how late its event loop ran what was due (every task waited as long), and
    # the shares of its 50 ms wake-ups that came 50 ms or more, and 250 ms or more, late.
    "crm_event_loop_lag_seconds": "loop_lag_ms",
}
# The histogram's `le` below which a wake-up was not late -> the share of those that were.
_LATE_BUCKETS = {"0.05": "loop_late_pct", "0.25": "loop_long_pct"}
_SCALES = dict.fromkeys(_LATE_BUCKETS.values(), 100.0)  # the other figures: seconds, in ms
HopTotals = dict[tuple[str, str], dict[str, tuple[float, float]]]


async def hop_totals(
    stack: BenchStack, services: Sequence[str] = ("profile", "lifecycle", "scoring")
) -> HopTotals:
    """(service, consumer group, "relay" or "loop") -> figure -> (count, sum), scraped from
    /metrics."""
    totals: HopTotals = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for service in services:
            response = await client.get(stack.url(service) + "/metrics")
            response.raise_for_status()
            add_hop_totals(totals, service, response.text)
    return totals


def add_hop_totals(totals: HopTotals, service: str, exposition: str) -> None:
    """Add the hop figures of one service's /metrics text to `totals`."""
    on_time: dict[str, float] = {}  # the event loop's wake-ups under each late bucket
    for family in text_string_to_metric_families(exposition):
        figure = _HOP_HISTOGRAMS.get(family.name)
        if figure is None:
            continue
        loop = figure == "loop_lag_ms"
        for sample in family.samples:
            kind = sample.name.removeprefix(family.name)
            if loop and kind == "_bucket" and sample.labels.get("le") in _LATE_BUCKETS:
                figure_of_bucket = _LATE_BUCKETS[sample.labels["le"]]
                on_time[figure_of_bucket] = on_time.get(figure_of_bucket, 0.0) + sample.value
            if kind not in ("_count", "_sum"):
                continue
            where = (service, "loop" if loop else sample.labels.get("group", "relay"))
            count, total = totals.setdefault(where, {}).get(figure, (0.0, 0.0))
            if kind == "_count":
                count += sample.value
            else:
                total += sample.value
            totals[where][figure] = (count, total)
    loop_figures = totals.get((service, "loop"), {})
    if "loop_lag_ms" in loop_figures:
        wakeups = loop_figures["loop_lag_ms"][0]
        for late, in_time in on_time.items():
            loop_figures[late] = (wakeups, wakeups - in_time)


async def loop_lag_totals(stack: BenchStack, service: str) -> HopTotals:
    """The event loop lag figures of one service, for `hop_means`."""
    totals = await hop_totals(stack, (service,))
    return {where: figures for where, figures in totals.items() if where[1] == "loop"}


def hop_means(before: HopTotals, after: HopTotals) -> dict[str, dict[str, float]]:
    """Mean of each figure between two scrapes, in ms (the late wake-ups in % of them), with
    the batches counted."""
    means: dict[str, dict[str, float]] = {}
    for (service, group), figures in after.items():
        for figure, (count, total) in figures.items():
            count_before, total_before = before.get((service, group), {}).get(figure, (0.0, 0.0))
            if count > count_before:
                where = means.setdefault(f"{service}/{group}", {})
                scale = _SCALES.get(figure, 1000.0)
                where[figure] = round((total - total_before) / (count - count_before) * scale, 1)
                if figure == "batch_ms":
                    where["batches"] = count - count_before
    return means


class AutovacuumWatch:
    """Samples PostgreSQL's background work while a measurement runs: autovacuum workers, and
    client backends running VACUUM or ANALYZE (the relays vacuum their outboxes). Gives the
    share of samples with an autovacuum worker at work, the tables, and each sample's time, to
    put beside the latency tail's bursts (`background_near`)."""

    def __init__(self, dsn: str, interval: float = 0.25) -> None:
        self.dsn = dsn
        self.interval = interval
        self.samples = 0
        self.busy = 0
        self.tables: set[str] = set()
        self.seen: list[tuple[float, str]] = []  # (epoch seconds, what was at work)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AutovacuumWatch:
        connection = await asyncpg.connect(self.dsn)

        async def sample() -> None:
            try:
                while True:
                    rows = await connection.fetch(
                        "SELECT datname, backend_type, query FROM pg_stat_activity "
                        "WHERE backend_type = 'autovacuum worker' OR (state = 'active' "
                        "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                        "AND query ~* '^\\s*(vacuum|analyze)')"
                    )
                    now = time.time()
                    self.samples += 1
                    autovacuum = [r for r in rows if r["backend_type"] == "autovacuum worker"]
                    self.busy += bool(autovacuum)
                    for r in rows:
                        query = " ".join((r["query"] or "").split())
                        if r["backend_type"] == "autovacuum worker":
                            what = query.removeprefix("autovacuum: ")
                            self.tables.add(f"{r['datname']}: {what}"[:120])
                            self.seen.append((now, f"autovacuum {r['datname']}: {what}"[:120]))
                        else:
                            self.seen.append((now, f"{r['datname']}: {query}"[:120]))
                    await asyncio.sleep(self.interval)
            finally:
                await connection.close()

        self._task = asyncio.create_task(sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def summary(self) -> dict[str, Any]:
        return {
            "autovacuum_share": round(self.busy / self.samples, 3) if self.samples else None,
            "autovacuum_tables": sorted(self.tables),
        }


async def lifecycle_sweeps(stack: BenchStack, since: float) -> list[tuple[float, float, str]]:
    """Lifecycle's runs of the time rules that ran after `since` (epoch seconds): (start, end,
    what), the scheduled sweep once a minute among them."""
    connection = await asyncpg.connect(stack.service_db("lifecycle"))
    try:
        rows = await connection.fetch(
            "SELECT trigger, extract(epoch FROM started_at) AS started, "
            "extract(epoch FROM coalesce(finished_at, now())) AS finished, chunks, "
            "(SELECT coalesce(sum((m ->> 'customers')::int), 0) FROM jsonb_array_elements(moved) m) "
            "AS customers FROM evaluation_runs "
            "WHERE started_at IS NOT NULL AND coalesce(finished_at, now()) >= to_timestamp($1)",
            since,
        )
    finally:
        await connection.close()
    return [
        (
            float(r["started"]),
            float(r["finished"]),
            f"lifecycle {r['trigger']} sweep moving {r['customers']:,} in {r['chunks']} chunks",
        )
        for r in rows
    ]


def background_near(
    bursts: Sequence[dict[str, Any]],
    seen: Sequence[tuple[float, str]],
    spans: Sequence[tuple[float, float, str]],
    lead: float = 0.5,
) -> None:
    """Name, on each burst, the background work that overlapped it (`with`): what the sampler
    saw, and the spans (start, end, what), from `lead` seconds before the burst's first order
    until its last order's worst latency had passed. Each sample or span says how far from the
    burst's start it was."""
    for burst in bursts:
        start = burst["epoch"] - lead
        end = burst["epoch"] + burst["span_s"] + burst["worst_ms"] / 1000
        found: dict[str, float] = {}
        for at, what in seen:
            if start <= at <= end and what not in found:
                found[what] = at - burst["epoch"]
        for began, ended, what in spans:
            if began <= end and ended >= start and what not in found:
                found[what] = began - burst["epoch"]
        burst["with"] = [f"{what} ({offset:+.1f} s)" for what, offset in found.items()]


async def ids_by_ref(dsn: str, refs: Sequence[str]) -> dict[str, str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT external_ref, id FROM customers WHERE external_ref = ANY($1::text[])",
            list(refs),
        )
    finally:
        await connection.close()
    return {r["external_ref"]: str(r["id"]) for r in rows}


async def ingest_latency(
    stack: BenchStack,
    producer: AIOKafkaProducer,
    documents: list[dict[str, Any]],
    rate: float,
    *,
    settle: float,
    probes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The documents at `rate`; timed from their produce: the orders of the customers named in
    `probes` (each a new customer's first order), or every order (each a new customer's) without
    it, to stage_changed(growth) and the first value.scored."""
    watch = EventWatch(stack.bootstrap)
    await watch.start()
    sent_at: list[float] = []
    vacuum = AutovacuumWatch(stack.postgres_superuser_dsn())
    try:
        messages = [(d["external_ref"].encode(), orjson.dumps(d)) for d in documents]
        hops_before = await hop_totals(stack)
        async with vacuum:
            await offer(producer, topics.INGEST_ORDERS, messages, rate, sent_at)
        hops = hop_means(hops_before, await hop_totals(stack))
        timed = set(probes) if probes is not None else None
        sent_at = [
            t
            for d, t in zip(documents, sent_at, strict=True)
            if timed is None or d["external_ref"] in timed
        ]
        refs = [d["external_ref"] for d in documents if timed is None or d["external_ref"] in timed]
        deadline = time.monotonic() + settle
        ids: dict[str, str] = {}
        while time.monotonic() < deadline:
            ids = await ids_by_ref(stack.service_db("profile"), refs)
            if len(ids) == len(refs) and all(i in watch.growth for i in ids.values()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # late value events of the last customers
        starts = {ids[r]: t for r, t in zip(refs, sent_at, strict=True) if r in ids}
        summary = latency_summary(starts, watch)
    finally:
        await watch.stop()
    summary["offered_rps"] = rate
    summary["orders"] = len(documents)
    summary["hops"] = hops
    summary.update(vacuum.summary())
    if sent_at:
        sweeps = await lifecycle_sweeps(stack, since=min(sent_at) - 5)
        for bursts in summary["tail_bursts"].values():
            background_near(bursts, vacuum.seen, sweeps)
    return summary


async def http_latency(
    stack: BenchStack,
    prospects: list[str],
    rate: float,
    token: str,
    *,
    settle: float,
    run: str,
) -> dict[str, Any]:
    """Registered prospects' first purchases over HTTP at `rate`: HTTP ack -> events."""
    watch = EventWatch(stack.bootstrap)
    await watch.start()
    try:
        requests = [
            [
                "POST",
                f"/v1/customers/{customer}/purchases",
                orjson.dumps(
                    {
                        "order_id": f"{run}-http-lat-{i}",
                        "amount": "42.50",
                        "currency": "USD",
                        "items": [
                            {
                                "sku": "LAT-1",
                                "category": "books",
                                "quantity": 1,
                                "unit_price": "42.50",
                            }
                        ],
                    }
                ).decode(),
            ]
            for i, customer in enumerate(prospects)
        ]
        port = int(stack.url("profile").rsplit(":", 1)[1])
        duration = len(requests) / rate
        spec = {
            "host": "127.0.0.1",
            "port": port,
            "rate": rate,
            "duration": duration + 1,
            "connections": 32,
            "acks": True,
            "headers": {"Authorization": f"Bearer {token}"},
        }
        result = await http_load(spec, requests, timeout=duration + 120)
        acked = {prospects[i]: t for i, t in result.pop("acks") or []}
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if all(c in watch.growth for c in acked):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        summary = latency_summary(acked, watch)
    finally:
        await watch.stop()
    summary["offered_rps"] = rate
    summary["http"] = {k: v for k, v in result.items()}
    return summary


def step_dict(step: Step) -> dict[str, Any]:
    out = asdict(step)
    out["saturated"] = step.saturated
    return out


def new_uuid() -> str:
    return str(uuid.uuid4())
