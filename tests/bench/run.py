"""`make bench`: `.venv/bin/python tests/bench/run.py [--quick] [--only SECTION ...]`.

Starts PostgreSQL, Apache Kafka (Tansu without Java) and the four services on free loopback
ports, measures, prints a table and writes bench/results.json and bench/results.png.
Every loop is bounded in count and time; Ctrl-C or SIGTERM stops everything started.
The figures are measured without a sampling profiler; each sweep then repeats its highest rate
that kept up under py-spy, to show where the time goes (--profile samples every step instead).
The last run's service logs and py-spy samples stay in .cache/bench-run/{logs,profiles}/
(or --work-dir); one run per work directory at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import json
import os
import platform as host_platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench import e2e, history, per_service, report  # noqa: E402
from bench.common import Helper, consumer_lag, token  # noqa: E402
from bench.population import Population, generate  # noqa: E402
from bench.profiling import Observation, diagnosis  # noqa: E402
from bench.stack import BENCH_DATABASE, HARNESS_ROLE, BenchStack  # noqa: E402
from shared.devstack.process import Stop, signals_held, stop_on_signals, stoppable  # noqa: E402

SECTIONS = (
    "baselines",
    "ingest",
    "http",
    "latency",
    "consumers",
    "history",
    "profile",
    "complaints",
    "lifecycle",
    "scoring",
)


@dataclass(frozen=True)
class Sizes:
    customers: int
    step_seconds: float
    ingest_rates: tuple[float, ...]
    http_rates: tuple[float, ...]
    baseline_messages: int
    latency_seconds: float
    # The population's stream at half load times one order in PROBE_EVERY: offered longer than
    # the other latency runs, so that its p99 rests on ~50 orders rather than ~15.
    probe_seconds: float
    drain_orders: int
    read_seconds: float
    import_rows: int
    sweep_customers: int
    sla_complaints: int
    fit_sizes: tuple[int, ...]
    rescore_customers: int
    budget_s: float
    warmup_seconds: float
    warmup_rounds: int  # at most; they end once the broker's JIT has settled
    # Offered orders/s of the ingest latency runs; None: half the ingest saturation this run
    # measured. Fixed, it lets runs of two commits compare at the same load.
    latency_rate: float | None = None


QUICK = Sizes(
    customers=6_000,
    step_seconds=5,
    ingest_rates=(200, 400, 800, 1600),
    http_rates=(50, 100, 200, 400),
    baseline_messages=10_000,
    latency_seconds=6,
    probe_seconds=12,
    drain_orders=3_000,
    read_seconds=5,
    import_rows=5_000,
    sweep_customers=20_000,
    sla_complaints=20_000,
    fit_sizes=(20_000,),
    rescore_customers=20_000,
    budget_s=420,
    warmup_seconds=4,
    warmup_rounds=2,
)
FULL = Sizes(
    customers=60_000,
    step_seconds=12,
    ingest_rates=(500, 1000, 2000, 3000, 4500, 6500, 9000),
    http_rates=(100, 200, 400, 700, 1000, 1500),
    baseline_messages=100_000,
    latency_seconds=20,
    probe_seconds=60,
    drain_orders=30_000,
    read_seconds=15,
    import_rows=100_000,
    sweep_customers=1_000_000,
    sla_complaints=1_000_000,
    fit_sizes=(100_000, 1_000_000),
    rescore_customers=1_000_000,
    budget_s=2400,
    warmup_seconds=10,
    warmup_rounds=6,
)


# Warm-up rounds end once the broker's JIT compiler threads use less than this share of a core
# (or after the size's `warmup_rounds`).
WARMUP_SETTLED_JIT_SHARE = 0.03
# In the half-load latency run, one order in PROBE_EVERY is a new customer's first (the timed ones).
PROBE_EVERY = 10


def commit_id() -> str | None:
    """The checked-out commit, read from .git without running git."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        path = git / ref
        if path.exists():
            return path.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def echo(message: str) -> None:
    print(message, flush=True)


class Bench:
    def __init__(
        self,
        stack: BenchStack,
        sizes: Sizes,
        seed: int,
        results: dict[str, Any],
        *,
        sample_every_step: bool = False,
    ) -> None:
        self.stack = stack
        # py-spy on every measured step (--profile), or only on the sweeps' extra sampled steps.
        self.sample_every_step = sample_every_step
        self.sizes = sizes
        self.seed = seed
        self.results = results
        self.run_id = f"r{int(time.time())}"
        self.population: Population | None = None
        self.order_cursor = 0
        self.token = token()
        self.deadline = time.monotonic() + sizes.budget_s

    def next_orders(self, count: int) -> list[dict[str, Any]]:
        """The population's next `count` orders; past its last order it starts again from the
        first, with new order ids (the same customers buy again), so no section runs short."""
        assert self.population is not None
        total = len(self.population.orders)
        documents = []
        for position in range(self.order_cursor, self.order_cursor + count):
            lap, index = divmod(position, total)
            run = self.run_id if lap == 0 else f"{self.run_id}-lap{lap}"
            documents.append(self.population.order_document(index, run))
        self.order_cursor += count
        return documents

    async def settle(self, timeout: float = 120.0) -> float:
        """Wait until the previous section's events have flowed: outboxes empty, inboxes still,
        and every service consumer group caught up with its topics (a long batch in flight
        leaves the inboxes still for a while, not the lag)."""
        import asyncpg

        from shared.platform import SERVICES

        started = time.perf_counter()
        connections = [await asyncpg.connect(self.stack.service_db(s)) for s in SERVICES]
        try:
            last = -1
            while time.perf_counter() - started < timeout:
                pending = 0
                processed = 0
                for connection in connections:
                    pending += await connection.fetchval("SELECT count(*) FROM outbox")
                    processed += await connection.fetchval("SELECT count(*) FROM inbox")
                if (
                    pending == 0
                    and processed == last
                    and await consumer_lag(self.stack.bootstrap) == 0
                ):
                    break
                last = processed
                await asyncio.sleep(1.5)
        finally:
            for connection in connections:
                await connection.close()
        return time.perf_counter() - started

    async def observed(
        self, services: tuple[str, ...], label: str, *, sample: bool | None = None
    ) -> Observation:
        """Start CPU accounting and statement statistics for these services (stop with .finish);
        py-spy samples them when `sample` (default: --profile)."""
        from bench.profiling import CpuProfile, MachineCpu, StatementStats

        stats = StatementStats(self.stack.pg_url("postgres"), HARNESS_ROLE)
        available = await stats.available()
        if available:
            await stats.reset()
        assert self.stack.platform is not None
        profiles = {}
        for service in services:
            pid = self.stack.platform.processes[service].pid
            if pid:
                profiles[service] = CpuProfile(
                    pid,
                    self.stack.work_dir / "profiles" / f"{label}-{service}.txt",
                    sample=self.sample_every_step if sample is None else sample,
                )
        labels = {
            process.pid: name
            for name, process in self.stack.platform.processes.items()
            if process.pid
        }
        return Observation(stats if available else None, profiles, MachineCpu(labels))

    async def section(self, name: str, body: Callable[[], Awaitable[Any]]) -> None:
        echo(f"\n== {name} ==")
        waited = await self.settle()
        if waited > 5:
            echo(f"  (waited {waited:.0f}s for the previous section's events to flow)")
        self.results.setdefault("settle_s", {})[name] = round(waited, 1)
        started = time.perf_counter()
        try:
            self.results[name] = await body()
        except (Exception, asyncio.CancelledError) as error:
            self.results[name] = {"error": f"{type(error).__name__}: {error}"}
            echo(f"  section {name} failed: {type(error).__name__}: {error}")
            traceback.print_exc(limit=6)
        dead = self.stack.dead_services()
        if dead:
            echo(f"  WARNING: services not running after {name}: {dead}")
            self.results.setdefault("warnings", []).append(f"{dead} died during {name}")
        echo(f"  ({time.perf_counter() - started:.0f}s)")

    # -- baselines ----------------------------------------------------------------------------

    async def baselines(self) -> dict[str, Any]:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        n = self.sizes.baseline_messages
        documents = self.next_orders(n)
        messages = [(d["external_ref"].encode(), json.dumps(d).encode()) for d in documents]
        self.order_cursor -= len(documents)  # the same orders go through the platform later
        topic = f"bench.orders.{self.run_id}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 6, 1)])
        finally:
            await admin.close()
        await asyncio.sleep(1.0)
        producer = await e2e.start_producer(self.stack.bootstrap, self.stack.kafka_kind == "apache")
        out: dict[str, Any] = {"messages": len(messages)}
        try:
            for mode in ("raw", "batched"):
                spec = {
                    "bootstrap": self.stack.bootstrap,
                    "topic": topic,
                    "group": f"bench-{mode}-{self.run_id}",
                    "count": len(messages),
                    "timeout": 120,
                    "dsn": self.stack.pg_url(BENCH_DATABASE),
                }
                helper = await Helper.start(
                    [
                        sys.executable,
                        str(Path(__file__).with_name("baselines.py")),
                        mode,
                        json.dumps(spec),
                    ],
                    timeout=180,
                )
                if mode == "raw":
                    started = time.time()
                    produce_s = await e2e.offer(producer, topic, messages, None)
                    out["produce_rps"] = len(messages) / produce_s
                    echo(f"  aiokafka produce (acks=all): {out['produce_rps']:,.0f} msg/s")
                else:
                    started = time.time()  # the topic is full: consumption starts now
                result = await helper.result()
                seconds = max(1e-6, result["last"] - started)
                out[mode] = {**result, "seconds": seconds, "rps": result["count"] / seconds}
                label = (
                    "raw aiokafka produce->consume"
                    if mode == "raw"
                    else "batched consumer (inbox+upsert+outbox)"
                )
                echo(
                    f"  {label}: {out[mode]['rps']:,.0f} msg/s ({result['count']} in {seconds:.1f}s)"
                )
        finally:
            await producer.stop()
        return out

    # -- end to end ---------------------------------------------------------------------------

    async def ingest(self) -> dict[str, Any]:
        projections = e2e.Projections(self.stack)
        await projections.open()
        producer = await e2e.start_producer(self.stack.bootstrap, self.stack.kafka_kind == "apache")
        try:

            async def step(rate: float, sample: bool | None = None) -> e2e.Step | None:
                count = int(rate * self.sizes.step_seconds)
                documents = self.next_orders(count)
                messages = [(d["external_ref"].encode(), json.dumps(d).encode()) for d in documents]
                observation = await self.observed(
                    ("profile", "lifecycle", "scoring"), f"ingest-{rate:.0f}", sample=sample
                )
                result = await e2e.ingest_step(
                    self.stack,
                    projections,
                    producer,
                    messages,
                    rate,
                    drain_timeout=max(30.0, 3 * self.sizes.step_seconds),
                    echo=echo,
                )
                result.diagnostics = await observation.finish(len(messages))
                echo(diagnosis(result.diagnostics))
                return result

            await self.warm_up(projections, producer)
            steps = await e2e.sweep(step, self.sizes.ingest_rates, deadline=self.deadline)
            sampled = await self.sampled_step(steps, step)
        finally:
            await producer.stop()
            await projections.close()
        return {
            "steps": [e2e.step_dict(s) for s in steps],
            "saturation_rps": e2e.saturation(steps),
            "sampled_step": sampled,
        }

    async def sampled_step(
        self, steps: list[e2e.Step], run_step: Callable[[float, bool], Awaitable[e2e.Step | None]]
    ) -> dict[str, Any] | None:
        """Where the time goes: the sweep's highest rate that kept up, again, sampled by py-spy.

        The sweep's own steps run without the sampler, whose CPU would count against the
        figures (and not against the baselines'); with --profile every step was sampled.
        """
        if self.sample_every_step or not steps or time.monotonic() > self.deadline:
            return None
        kept_up = [s.offered_rps for s in steps if not s.saturated]
        rate = max(kept_up) if kept_up else steps[0].offered_rps / 2
        echo(f"  where the time goes: {rate:.0f}/s again, sampled by py-spy (not a figure above)")
        result = await run_step(rate, True)
        return e2e.step_dict(result) if result is not None else None

    async def warm_up(self, projections: e2e.Projections, producer: Any) -> None:
        """Unmeasured orders before the first step, in rounds, until the broker's JIT compiler
        has settled: a freshly started broker spends much of its first minutes' CPU compiling
        (its compiler threads took more than half of its CPU in the first step, and still 15%
        of a core after 20 s at 800 orders/s), which a long-running deployment does not pay.
        Caches and connection pools fill too. The second-lowest step rate: more invocations
        per second compile sooner, without building a backlog."""
        from bench.profiling import jvm_compiler_cpu_s

        rates = sorted(self.sizes.ingest_rates)
        rate = rates[1] if len(rates) > 1 else rates[0]
        for round_ in range(1, self.sizes.warmup_rounds + 1):
            documents = self.next_orders(int(rate * self.sizes.warmup_seconds))
            messages = [(d["external_ref"].encode(), json.dumps(d).encode()) for d in documents]
            compiled_before, started = jvm_compiler_cpu_s(), time.monotonic()
            await e2e.ingest_step(
                self.stack,
                projections,
                producer,
                messages,
                rate,
                drain_timeout=max(30.0, 3 * self.sizes.warmup_seconds),
                echo=lambda _: None,
            )
            share = (jvm_compiler_cpu_s() - compiled_before) / (time.monotonic() - started)
            echo(
                f"  warm-up round {round_}: {len(messages)} orders at {rate:.0f}/s (not measured); "
                f"broker JIT compiling {100 * share:.1f}% of a core"
            )
            if share < WARMUP_SETTLED_JIT_SHARE:
                break
        await self.settle()

    async def customer_ids(self, limit: int) -> list[str]:
        """Random registered customers; registers some over HTTP when a section runs alone."""
        import asyncpg

        connection = await asyncpg.connect(self.stack.service_db("profile"))
        try:
            known = await connection.fetchval("SELECT count(*) FROM customers")
        finally:
            await connection.close()
        if known < min(limit, 1000):
            await per_service.register_customers(
                self.stack, self.token, min(limit, 1000), f"{self.run_id}-c"
            )
        connection = await asyncpg.connect(self.stack.service_db("profile"))
        try:
            rows = await connection.fetch(
                "SELECT id FROM customers ORDER BY random() LIMIT $1", limit
            )
        finally:
            await connection.close()
        return [str(r["id"]) for r in rows]

    def purchase_requests(self, customers: list[str], count: int, tag: str) -> list[list[Any]]:
        documents = self.next_orders(count)
        requests = []
        for i, document in enumerate(documents):
            body = {k: v for k, v in document.items() if k != "external_ref"}
            body["order_id"] = f"{self.run_id}-{tag}-{i}"
            requests.append(
                [
                    "POST",
                    f"/v1/customers/{customers[i % len(customers)]}/purchases",
                    json.dumps(body),
                ]
            )
        return requests

    async def http(self) -> dict[str, Any]:
        customers = await self.customer_ids(20_000)
        if not customers:
            raise RuntimeError("no customers in profile (the ingest section creates them)")
        projections = e2e.Projections(self.stack)
        await projections.open()
        try:

            async def step(rate: float, sample: bool | None = None) -> e2e.Step | None:
                count = int(rate * self.sizes.step_seconds)
                requests = self.purchase_requests(
                    customers, count, f"h{int(rate)}{'s' if sample else ''}"
                )
                if len(requests) < count // 2:
                    return None
                observation = await self.observed(
                    ("profile", "lifecycle", "scoring"), f"http-{rate:.0f}", sample=sample
                )
                result = await e2e.http_step(
                    self.stack,
                    projections,
                    requests,
                    rate,
                    self.token,
                    duration=self.sizes.step_seconds,
                    drain_timeout=max(30.0, 3 * self.sizes.step_seconds),
                    echo=echo,
                )
                result.diagnostics = await observation.finish(max(1, result.orders))
                echo(diagnosis(result.diagnostics))
                return result

            steps = await e2e.sweep(step, self.sizes.http_rates, deadline=self.deadline)
            sampled = await self.sampled_step(steps, step)
        finally:
            await projections.close()
        return {
            "steps": [e2e.step_dict(s) for s in steps],
            "saturation_rps": e2e.saturation(steps),
            "sampled_step": sampled,
        }

    async def latency(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # Scores exist only against a fitted population: fit one, as production would have.
        out["recompute_before"] = await per_service.recompute(self.stack, self.token, echo=echo)
        # The recompute publishes a score per customer: let the other services take them in
        # first, or the latency measured is that of the queue behind them.
        out["settle_after_recompute_s"] = round(await self.settle(), 1)
        ingest_saturation = (
            float(self.results.get("ingest", {}).get("saturation_rps") or 0) or 1000.0
        )
        rate = self.sizes.latency_rate or max(20.0, ingest_saturation / 2)
        out["ingest_rate_basis"] = "fixed" if self.sizes.latency_rate else "half_saturation"
        producer = await e2e.start_producer(self.stack.bootstrap, self.stack.kafka_kind == "apache")
        try:
            # Half of the saturation measured with the population's order stream is half load
            # for that same stream: it is offered again, one order in PROBE_EVERY turned into a
            # new customer's first order, whose stage_changed (to growth) and first score are
            # certain and are timed.
            documents = self.next_orders(int(rate * self.sizes.probe_seconds))
            probes = []
            for i in range(0, len(documents), PROBE_EVERY):
                documents[i]["external_ref"] = f"{self.run_id}-lat-{i}"
                probes.append(documents[i]["external_ref"])
            out["ingest"] = await e2e.ingest_latency(
                self.stack, producer, documents, rate, settle=60, probes=probes
            )
            echo("  ingest produce -> " + report.latency_line(out["ingest"]))
            out["settle_between_s"] = round(await self.settle(), 1)
            # A heavier mix at the same rate, shown beside it: every order a new customer's first.
            documents = []
            for i, document in enumerate(self.next_orders(int(rate * self.sizes.latency_seconds))):
                document["external_ref"] = f"{self.run_id}-new-{i}"
                documents.append(document)
            out["ingest_new_customers"] = await e2e.ingest_latency(
                self.stack, producer, documents, rate, settle=60
            )
            echo(
                "  ingest produce, every order a new customer's -> "
                + report.latency_line(out["ingest_new_customers"])
            )
        finally:
            await producer.stop()
        http_saturation = float(self.results.get("http", {}).get("saturation_rps") or 0) or 200.0
        rate = max(10.0, http_saturation / 2)
        count = int(rate * self.sizes.latency_seconds)
        prospects = await per_service.register_customers(
            self.stack, self.token, count, f"{self.run_id}-prospect"
        )
        out["http"] = await e2e.http_latency(
            self.stack, prospects, rate, self.token, settle=60, run=self.run_id
        )
        echo("  HTTP ack -> " + report.latency_line(out["http"]))
        return out

    async def reconciliation(self) -> dict[str, Any]:
        projections = e2e.Projections(self.stack)
        await projections.open()
        try:
            totals: dict[str, int] = {}
            for _ in range(60):
                totals = await projections.totals()
                if (
                    totals["outbox_left"] == 0
                    and totals["lifecycle_inbox"] == totals["profile"]
                    and totals["scoring_inbox"] == totals["profile"]
                ):
                    break
                await asyncio.sleep(1.0)
        finally:
            await projections.close()
        totals["reconciled"] = int(
            totals["outbox_left"] == 0
            and totals["lifecycle_inbox"] == totals["profile"]
            and totals["scoring_inbox"] == totals["profile"]
            and totals.get("scoring_ledger", totals["profile"]) == totals["profile"]
        )
        echo(f"  {totals}")
        return totals

    async def consumers(self) -> dict[str, Any]:
        # About a minute of work at the measured ingest capacity, within the size's bounds.
        capacity = float(self.results.get("ingest", {}).get("saturation_rps") or 0)
        count = int(min(self.sizes.drain_orders, max(2000, 60 * capacity)))
        documents = self.next_orders(count)
        return await per_service.consumer_drain(
            self.stack, documents, echo=echo, sample=self.sample_every_step
        )

    async def measure(self, only: set[str]) -> None:
        self.population = await asyncio.to_thread(
            generate, self.sizes.customers, seed=self.seed, end=time.time() - 3600
        )
        self.results["population"] = {
            "seed": self.seed,
            "customers": self.sizes.customers,
            "orders": len(self.population.orders),
            "complaints": len(self.population.complaints),
            "model": "BG/NBD purchase process (rates per day r=0.9, alpha=45; dropout a=0.8, b=4), "
            "Gamma-Gamma spend (p=6, q=4, gamma=15), seasonal by hour, weekday and year (±30%, December peak)",
        }
        echo(
            f"population: {self.sizes.customers:,} customers, {len(self.population.orders):,} orders, "
            f"{len(self.population.complaints):,} complaints (seed {self.seed})"
        )
        plan: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("baselines", self.baselines),
            ("ingest", self.ingest),
            ("http", self.http),
            ("latency", self.latency),
            ("reconciliation", self.reconciliation),
            ("consumers", self.consumers),
            # Before the sections that leave millions of events flowing (import, recompute).
            ("history", lambda: history.measure(self.stack, echo=echo)),
            ("profile", lambda: per_service.profile(self.stack, self, echo=echo)),
            ("complaints", lambda: per_service.complaints(self.stack, self, echo=echo)),
            ("lifecycle", lambda: per_service.lifecycle(self.stack, self, echo=echo)),
            ("scoring", lambda: per_service.scoring(self.stack, self, echo=echo)),
        ]
        for name, body in plan:
            if (
                only
                and name not in only
                and not (name == "reconciliation" and only & {"ingest", "http"})
            ):
                continue
            if time.monotonic() > self.deadline:
                echo(f"\n== {name} == skipped: the run's time budget is spent")
                self.results[name] = {"error": "skipped: time budget spent"}
                continue
            await self.section(name, body)


def _lock_work_dir(work_dir: Path) -> IO[bytes]:
    """Hold ``<work-dir>.lock`` for the run: a second bench would wipe this one's data."""
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = (work_dir.parent / f"{work_dir.name}.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"another bench is running in {work_dir}; wait for it or pass --work-dir DIR"
        ) from None
    return lock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a couple of minutes")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--only", nargs="*", choices=SECTIONS, default=[], help="run only these sections"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / ".cache" / "bench-run",
        help="data, logs and py-spy profiles of this run (wiped at start; one run per directory)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every measured step with py-spy (where the time goes in each); its CPU then "
        "counts against the figures. Without it only one extra step per sweep is sampled",
    )
    parser.add_argument("--import-rows", type=int, help="CSV rows of the import (default by mode)")
    parser.add_argument(
        "--ingest-rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        help="offered orders/s of the ingest steps, comma-separated (default by mode)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="offered orders/s of the ingest latency runs (default: half the ingest saturation "
        "measured in the run); a fixed rate compares two commits at the same load",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.latency_rate:
        sizes = dataclasses.replace(sizes, latency_rate=args.latency_rate)
    if args.import_rows:
        sizes = dataclasses.replace(sizes, import_rows=args.import_rows)
    if args.ingest_rates:
        sizes = dataclasses.replace(sizes, ingest_rates=args.ingest_rates)

    stop_on_signals()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit_id(),
        "mode": "quick" if args.quick else "full",
        "machine": {
            "cpus": os.cpu_count(),
            "python": host_platform.python_version(),
            "platform": host_platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "command": " ".join([".venv/bin/python", "tests/bench/run.py", *sys.argv[1:]]),
    }
    work_lock = _lock_work_dir(args.work_dir)
    stack = BenchStack(args.work_dir, echo=echo)
    code = 0
    try:
        echo(
            f"crm bench ({results['mode']}), commit {str(results['commit'])[:12]}, {os.cpu_count()} CPUs"
        )
        echo("starting the infrastructure ...")
        stack.start_infrastructure()
        echo("starting the four services ...")
        stack.start_services()
        results["infrastructure"] = {
            "kafka": stack.kafka_kind,
            "postgres": "embedded PostgreSQL 18, fsync off (ephemeral)",
            "notes": stack.notes,
            "timings": stack.timings,
        }
        results["sampled_by_py_spy"] = "every step" if args.profile else "the sweeps' extra steps"
        bench = Bench(stack, sizes, args.seed, results, sample_every_step=args.profile)
        asyncio.run(stoppable(bench.measure(set(args.only))))
    except (Stop, KeyboardInterrupt) as stop:
        echo(f"\ninterrupted ({stop}): stopping ...")
        results["interrupted"] = True
        code = 130
    except BaseException as error:
        echo(f"\nbench failed: {type(error).__name__}: {error}")
        traceback.print_exc()
        results["error"] = f"{type(error).__name__}: {error}"
        code = 1
    finally:
        with signals_held():
            echo("stopping the services and the infrastructure ...")
            stack.stop()
            work_lock.close()
    results["duration_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=str))
    echo("")
    echo(report.table(results))
    chart = report.chart(results_path, args.out / "results.png")
    echo(
        f"\nwrote {results_path.relative_to(REPO) if results_path.is_relative_to(REPO) else results_path}"
        + (f" and {chart}" if chart else "")
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
