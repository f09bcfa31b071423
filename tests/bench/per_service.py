"""Per-service figures, each against a baseline measured in the same run.

- consumers: each service's batched consumer draining a backlog alone (events/s) vs raw
  aiokafka consumption of the same topics;
- profile: `GET /v1/customers/{id}/360` peak and p99 at half peak vs a minimal FastAPI +
  asyncpg single-query endpoint; `POST /v1/imports/purchases` of a CSV;
- complaints: intake requests/s vs a minimal insert + outbox endpoint; SLA evaluation over
  open complaints loaded set-based (the backlog of 2% overdue, escalations/s, then one scheduler
  interval later) vs a plain SQL scan for the overdue ones;
- lifecycle: the time-based sweep over customers loaded set-based vs a plain SQL scan;
- scoring: model fits and re-score at scale vs `lifetimes`; the service's recompute endpoint.

Pieces a service does not have yet are reported as missing, not skipped silently.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import orjson

from bench import e2e
from bench.common import BENCH_DIR, Helper, columns, http_load
from bench.profiling import diagnosis
from bench.stack import BENCH_DATABASE, HARNESS_ROLE, BenchStack
from shared.devstack import free_port
from shared.devstack.process import ManagedProcess
from shared.events import topics

if TYPE_CHECKING:
    from bench.run import Bench

Echo = Callable[[str], None]
READ_SCOPES = ["customers:read"]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _wait_ready(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/health/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


async def register_customers(stack: BenchStack, bearer: str, count: int, prefix: str) -> list[str]:
    """Register `count` prospects over HTTP; return their ids (looked up by external_ref)."""
    requests = [
        ["POST", "/v1/customers", json.dumps({"kind": "person", "external_ref": f"{prefix}-{i}"})]
        for i in range(count)
    ]
    spec = {
        "host": "127.0.0.1",
        "port": _port(stack.url("profile")),
        "rate": None,
        "duration": 120,
        "connections": 16,
        "headers": {"Authorization": f"Bearer {bearer}"},
    }
    await http_load(spec, requests, timeout=200)
    refs = [f"{prefix}-{i}" for i in range(count)]
    ids = await e2e.ids_by_ref(stack.service_db("profile"), refs)
    # Wait until lifecycle knows these customers as prospects: the latency then measures one
    # purchase, not the registrations still queued before it. (Counting recent registrations
    # instead was satisfied at once by the thousands the latency section had just made.)
    registered = [ids[r] for r in refs if r in ids]
    connection = await asyncpg.connect(stack.service_db("lifecycle"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            known = await connection.fetchval(
                "SELECT count(*) FROM customer_lifecycles WHERE customer_id = ANY($1::uuid[])",
                registered,
            )
            if known >= len(registered):
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"lifecycle knew {known} of {len(registered)} prospects after 60 s")
    finally:
        await connection.close()
    return registered


# --- consumers ---------------------------------------------------------------------------------


async def _inbox_rate(
    dsn: str, since: datetime, expected: int, timeout: float, *, event_type: str | None = None
) -> dict[str, Any]:
    """Wait until the inbox holds `expected` rows (of `event_type`, if given) since `since`;
    the rate counts every row, timed by the rows' own transaction times."""
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            done = await connection.fetchval(
                "SELECT count(*) FROM inbox WHERE processed_at >= $1 AND ($2::text IS NULL OR event_type = $2)",
                since,
                event_type,
            )
            if done >= expected:
                break
            await asyncio.sleep(0.3)
        row = await connection.fetchrow(
            "SELECT count(*) AS n, min(processed_at) AS first, max(processed_at) AS last, "
            "count(DISTINCT processed_at) AS batches FROM inbox WHERE processed_at >= $1",
            since,
        )
        assert row is not None
        # processed_at is each batch's transaction start: add one mean batch to the span.
        span = (row["last"] - row["first"]).total_seconds() if row["n"] else 0.0
        batches = int(row["batches"] or 0)
        seconds = span * batches / (batches - 1) if batches > 1 else span
        return {
            "events": int(row["n"]),
            "expected": expected,
            "seconds": seconds,
            "batches": batches,
            "rps": row["n"] / seconds if seconds > 0 else None,
            "complete": done >= expected,
        }
    finally:
        await connection.close()


async def consumer_drain(
    stack: BenchStack, documents: list[dict[str, Any]], *, echo: Echo, sample: bool = False
) -> dict[str, Any]:
    """Stop lifecycle and scoring, let profile ingest a backlog, then start each consumer alone
    and time how fast it drains; raw aiokafka consumption of the same topics for comparison.
    Each drain also reads pg_stat_statements (statements per event) and the process's CPU, and
    with `sample` py-spy samples it (bench/profiles/<service>-drain.txt)."""
    from bench.profiling import CpuProfile, StatementStats
    from shared.platform import DATABASES

    assert stack.platform is not None
    stats = StatementStats(stack.pg_url("postgres"), HARNESS_ROLE)
    with_stats = await stats.available()
    profiles = stack.work_dir / "profiles"
    out: dict[str, Any] = {"orders": len(documents)}
    for service in ("lifecycle", "scoring"):
        stack.platform.processes[service].stop(timeout=30)
    profile_db = await asyncpg.connect(stack.service_db("profile"))
    try:
        since = await profile_db.fetchval("SELECT now()")
        before = await profile_db.fetchval("SELECT count(*) FROM purchases")
        messages = [(d["external_ref"].encode(), orjson.dumps(d)) for d in documents]
        producer = await e2e.start_producer(stack.bootstrap, stack.kafka_kind == "apache")
        if with_stats:
            await stats.reset()
        pid = stack.platform.processes["profile"].pid
        cpu = CpuProfile(pid, profiles / "profile-drain.txt", sample=sample) if pid else None
        try:
            await e2e.offer(producer, topics.INGEST_ORDERS, messages, None)
        finally:
            await producer.stop()
        result = await _inbox_rate(stack.service_db("profile"), since, len(documents), 300)
        result["cpu"] = cpu.stop() if cpu else None
        if with_stats:
            result["db"] = await stats.read(DATABASES["profile"], result["events"])
        out["profile_ingest"] = result
        echo(f"  profile ingest consumer: {_rate(result)}")
        echo(diagnosis({"profile": result}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if await profile_db.fetchval("SELECT count(*) FROM outbox") == 0:
                break
            await asyncio.sleep(0.3)
        recorded = await profile_db.fetchval("SELECT count(*) FROM purchases") - before
    finally:
        await profile_db.close()
    # Raw consumption of everything lifecycle and scoring read, from the start of the topics.
    wanted = [topics.CUSTOMERS, topics.PURCHASES]
    spec = {
        "bootstrap": stack.bootstrap,
        "topics": wanted,
        "group": f"bench-raw-{uuid.uuid4()}",
        "count": None,
        "idle": 3.0,
        "timeout": 120,
    }
    helper = await Helper.start(
        [sys.executable, str(BENCH_DIR / "baselines.py"), "raw", json.dumps(spec)], timeout=180
    )
    raw = await helper.result()
    # From the first record to the last: the group join before it is not consumption.
    seconds = max(1e-6, raw["last"] - raw["first"])
    out["raw_consume"] = {**raw, "seconds": seconds, "rps": raw["count"] / seconds}
    echo(
        f"  raw aiokafka consume of {', '.join(wanted)}: {out['raw_consume']['rps']:,.0f} msg/s ({raw['count']} messages)"
    )
    for service in ("lifecycle", "scoring"):
        dsn = stack.service_db(service)
        connection = await asyncpg.connect(dsn)
        try:
            since = await connection.fetchval("SELECT now()")
        finally:
            await connection.close()
        if with_stats:
            await stats.reset()
        process = stack.platform.start_service(service)
        await _wait_ready(stack.url(service))
        # Sampling starts once the service is up: start-up imports are not consumption.
        cpu = (
            CpuProfile(process.pid, profiles / f"{service}-drain.txt", sample=sample)
            if process.pid
            else None
        )
        # Complete when every purchase is in; registrations of new customers count in the rate.
        result = await _inbox_rate(dsn, since, int(recorded), 300, event_type=e2e.PURCHASE_RECORDED)
        result["cpu"] = cpu.stop() if cpu else None
        if with_stats:
            result["db"] = await stats.read(DATABASES[service], result["events"])
        out[service] = result
        ratio = (result["rps"] or 0) / out["raw_consume"]["rps"]
        echo(f"  {service} consumer alone: {_rate(result)}  ({ratio:.1%} of raw consume)")
        echo(diagnosis({service: result}))
    return out


def _rate(result: dict[str, Any]) -> str:
    rps = result.get("rps") or 0
    return f"{rps:,.0f} events/s ({result['events']} events in {result['seconds']:.1f}s, {result['batches']} batches)"


# --- profile -----------------------------------------------------------------------------------


class BaselineApp:
    def __init__(self, stack: BenchStack) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "baseline-app",
            [
                sys.executable,
                str(BENCH_DIR / "baseline_app.py"),
                str(self.port),
                stack.service_db("profile"),
                stack.pg_url(BENCH_DATABASE),
            ],
            stack.work_dir / "logs" / "baseline-app.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process.start()
        await _wait_ready(self.url, 60)

    def stop(self) -> None:
        self.process.stop(timeout=10)


async def _read_load(
    port: int,
    requests: list[list[Any]],
    bearer: str | None,
    *,
    rate: float | None,
    seconds: float,
    connections: int = 32,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "rate": rate,
        "duration": seconds,
        "warmup": 2.0 if rate is None else 1.0,
        "connections": connections,
        "cycle": True,
        "headers": {"Authorization": f"Bearer {bearer}"} if bearer else {},
    }
    result: dict[str, Any] = await http_load(spec, requests, timeout=seconds + 60)
    return result


def _load_line(label: str, result: dict[str, Any]) -> str:
    return (
        f"  {label:<42} {result['rps']:>8,.0f} req/s  p50 {result['p50_ms'] or 0:6.1f} ms  "
        f"p99 {result['p99_ms'] or 0:6.1f} ms  statuses {result['statuses']} errors {result['errors']}"
    )


async def profile(stack: BenchStack, bench: Bench, *, echo: Echo) -> dict[str, Any]:
    from shared.http.auth import issue_dev_token
    from shared.settings import ServiceSettings

    out: dict[str, Any] = {}
    ids = await bench.customer_ids(5000)
    seconds = bench.sizes.read_seconds
    reader = issue_dev_token(ServiceSettings(), scopes=READ_SCOPES, subject="bench-reader")
    view = [["GET", f"/v1/customers/{c}/360", None] for c in ids]
    plain = [["GET", f"/customers/{c}", None] for c in ids]
    app = BaselineApp(stack)
    await app.start()
    try:
        observation = await bench.observed(("profile",), "view360")
        peak = await _read_load(
            _port(stack.url("profile")), view, reader, rate=None, seconds=seconds
        )
        peak["diagnostics"] = await observation.finish(max(1, peak["ok"]))
        echo(_load_line("360 peak, 32 connections (customers:read)", peak))
        echo(diagnosis(peak["diagnostics"]))
        base_peak = await _read_load(app.port, plain, None, rate=None, seconds=seconds)
        echo(_load_line("baseline FastAPI+asyncpg peak", base_peak))
        half = await _read_load(
            _port(stack.url("profile")),
            view,
            reader,
            rate=max(10.0, peak["rps"] / 2),
            seconds=seconds,
        )
        echo(_load_line(f"360 at half peak ({peak['rps'] / 2:,.0f}/s)", half))
        base_half = await _read_load(
            app.port, plain, None, rate=max(10.0, base_peak["rps"] / 2), seconds=seconds
        )
        echo(_load_line(f"baseline at half its peak ({base_peak['rps'] / 2:,.0f}/s)", base_half))
        few = await _read_load(
            _port(stack.url("profile")), view, reader, rate=None, seconds=seconds, connections=8
        )
        echo(_load_line("360 peak with 8 connections", few))
        base_few = await _read_load(
            app.port, plain, None, rate=None, seconds=seconds, connections=8
        )
        echo(_load_line("baseline peak with 8 connections", base_few))
        pii = await _read_load(
            _port(stack.url("profile")), view, bench.token, rate=None, seconds=max(5.0, seconds / 2)
        )
        echo(_load_line("360 peak with pii:read (audited reads)", pii))
        out["view_360"] = {
            "peak": peak,
            "half_peak": half,
            "baseline_peak": base_peak,
            "baseline_half_peak": base_half,
            "peak_with_pii_read": pii,
            "peak_8_connections": few,
            "baseline_peak_8_connections": base_few,
            "ratio_to_baseline_8_connections": few["rps"] / base_few["rps"]
            if base_few["rps"]
            else None,
            "ratio_to_baseline": peak["rps"] / base_peak["rps"] if base_peak["rps"] else None,
        }
        echo(f"  360 / baseline: {out['view_360']['ratio_to_baseline']:.1%}")
    finally:
        app.stop()
    out["import"] = await import_csv(stack, bench, echo=echo)
    return out


async def import_csv(stack: BenchStack, bench: Bench, *, echo: Echo) -> dict[str, Any]:
    rows = bench.sizes.import_rows
    documents = bench.next_orders(rows)
    lines = ["external_ref,order_id,occurred_at,amount,currency,sku,category,quantity"]
    for i, d in enumerate(documents):
        item = d["items"][0]
        lines.append(
            f"imp-{d['external_ref']},{bench.run_id}-imp-{i},{d['occurred_at']},{d['amount']},USD,"
            f"{item['sku']},{item['category']},{item['quantity']}"
        )
    body = ("\n".join(lines) + "\n").encode()
    projections = e2e.Projections(stack)
    await projections.open()
    try:
        since = await projections.now()
        before = (await projections.counts(since))["profile"]
        observation = await bench.observed(("profile",), "import")
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            response = await client.post(
                f"{stack.url('profile')}/v1/imports/purchases",
                content=body,
                headers={"Authorization": f"Bearer {bench.token}", "Content-Type": "text/csv"},
            )
            answered = time.perf_counter() - started
            summary = response.json()
            import_id = summary.get("id")
            deadline = time.monotonic() + 600
            while summary.get("status") == "running" and import_id and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                summary = (
                    await client.get(
                        f"{stack.url('profile')}/v1/imports/{import_id}",
                        headers={"Authorization": f"Bearer {bench.token}"},
                    )
                ).json()
        finished = time.perf_counter() - started
        diagnostics = await observation.finish(len(documents))
        echo(
            f"  import of {len(documents):,} CSV rows ({len(body) / 1e6:.1f} MB): HTTP {response.status_code} after {answered:.1f}s, finished after {finished:.1f}s; {_brief(summary)}"
        )
        created = int(summary.get("purchases_created") or 0)
        downstream = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and created:
            counts = await projections.counts(since)
            if counts["lifecycle"] >= created and counts["scoring"] >= created:
                downstream = time.perf_counter() - started
                break
            await asyncio.sleep(0.5)
        echo(diagnosis(diagnostics))
        echo(
            f"  ... reflected in lifecycle and scoring after {downstream:.1f}s"
            if downstream
            else "  ... NOT reflected downstream within the bound"
        )
        after = (await projections.counts(since))["profile"]
    finally:
        await projections.close()
    return {
        "rows": len(documents),
        "bytes": len(body),
        "diagnostics": diagnostics,
        "status": response.status_code,
        "http_answer_s": answered,
        "finished_s": finished,
        "rows_per_s": len(documents) / finished if finished else None,
        "summary": {k: v for k, v in summary.items() if k != "rejections"}
        if isinstance(summary, dict)
        else summary,
        "purchases_added": after - before,
        "downstream_reflected_s": downstream,
    }


def _brief(summary: Any) -> str:
    if not isinstance(summary, dict):
        return str(summary)[:200]
    keys = (
        "status",
        "rows_read",
        "orders_total",
        "purchases_created",
        "duplicates",
        "customers_created",
        "rejected",
    )
    return ", ".join(f"{k}={summary.get(k)}" for k in keys if k in summary) or str(summary)[:300]


# --- complaints --------------------------------------------------------------------------------


async def complaints(stack: BenchStack, bench: Bench, *, echo: Echo) -> dict[str, Any]:
    assert bench.population is not None
    from bench.population import COMPLAINT_CATEGORIES, COMPLAINT_CHANNELS, SEVERITIES

    out: dict[str, Any] = {}
    ids = await bench.customer_ids(5000)
    pop = bench.population.complaints
    bodies = []
    for i in range(min(len(pop), 20_000)):
        # low/medium only: a high one would also move the customer's lifecycle stage
        severity = SEVERITIES[min(1, int(pop.severity[i]))]
        bodies.append(
            {
                "customer_id": ids[i % len(ids)],
                "channel": COMPLAINT_CHANNELS[int(pop.channel[i])],
                "category": COMPLAINT_CATEGORIES[int(pop.category[i])],
                "severity": severity,
                "subject": "Parcel arrived damaged",
                "description": "The box was crushed and one item is broken; please replace it.",
            }
        )
    view = [["POST", "/v1/complaints", json.dumps(b)] for b in bodies]
    plain = [["POST", "/complaints", json.dumps(b)] for b in bodies]
    seconds = bench.sizes.read_seconds
    app = BaselineApp(stack)
    await app.start()
    try:
        observation = await bench.observed(("complaints",), "intake")
        intake = await _read_load(
            _port(stack.url("complaints")),
            view,
            bench.token,
            rate=None,
            seconds=seconds,
            connections=16,
        )
        intake["diagnostics"] = await observation.finish(max(1, intake["ok"]))
        echo(_load_line("complaint intake peak (16 connections)", intake))
        echo(diagnosis(intake["diagnostics"]))
        # At most as many clients as the service's pool holds: no overflow connections opened.
        few = await _read_load(
            _port(stack.url("complaints")),
            view,
            bench.token,
            rate=None,
            seconds=seconds,
            connections=8,
        )
        echo(_load_line("complaint intake peak (8 connections)", few))
        base = await _read_load(app.port, plain, None, rate=None, seconds=seconds, connections=16)
        echo(_load_line("baseline insert+outbox peak", base))
    finally:
        app.stop()
    out["intake"] = {
        "peak": intake,
        "peak_8_connections": few,
        "baseline_peak": base,
        "ratio_to_baseline": intake["rps"] / base["rps"] if base["rps"] else None,
    }
    echo(f"  intake / baseline: {out['intake']['ratio_to_baseline']:.1%}")
    out["sla"] = await sla_sweep(stack, bench.sizes.sla_complaints, bench.token, echo=echo)
    return out


async def sla_sweep(stack: BenchStack, n: int, bearer: str, *, echo: Echo) -> dict[str, Any]:
    """Load n open complaints set-based (2% overdue at as_of), evaluate the SLA clocks."""
    dsn = stack.service_db("complaints")
    table = await columns(dsn, "complaints")
    needed = {
        "id",
        "customer_id",
        "status",
        "received_at",
        "first_response_due",
        "resolution_due",
        "next_sla_check_at",
    }
    if not needed <= set(table):
        return {"missing": f"complaints table lacks {sorted(needed - set(table))}"}
    connection = await asyncpg.connect(dsn)
    try:
        now = await connection.fetchval("SELECT now()")
        # Business time ahead of the wall clock: the service's own periodic check finds nothing due.
        as_of = now + timedelta(days=30)
        started = time.perf_counter()
        await connection.execute(
            """
            INSERT INTO complaints (id, customer_id, channel, category, severity, subject, description,
              status, received_at, first_response_due, resolution_due, resolution_due_effective,
              acknowledged_at, next_sla_check_at, last_step_at, opened_by)
            SELECT gen_random_uuid(), gen_random_uuid(), 'email', 'delivery', 'low', 'bench', 'bench',
              CASE WHEN i % 50 = 0 THEN 'received' ELSE 'acknowledged' END,
              r, r + interval '24 hours', r + interval '240 hours', r + interval '240 hours',
              CASE WHEN i % 50 = 0 THEN NULL ELSE r + interval '2 hours' END,
              CASE WHEN i % 50 = 0 THEN r + interval '24 hours' ELSE r + interval '240 hours' END,
              r, 'bench'
            FROM (SELECT i, CASE WHEN i % 50 = 0 THEN $1::timestamptz - interval '2 days'
                              ELSE $1::timestamptz - (i % 72) * interval '1 hour' END AS r
                  FROM generate_series(1, $2) AS i) AS g
            """,
            as_of,
            n,
        )
        await connection.execute("ANALYZE complaints")
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        overdue = await connection.fetchval(
            "SELECT count(*) FROM complaints WHERE status NOT IN ('resolved', 'closed') AND "
            "((acknowledged_at IS NULL AND first_response_due < $1) OR resolution_due_effective < $1)",
            as_of,
        )
        scan_s = time.perf_counter() - started
    finally:
        await connection.close()
    echo(
        f"  loaded {n:,} open complaints in {load_s:.1f}s; plain SQL scan for overdue ones: {scan_s * 1000:.0f} ms ({overdue:,} overdue)"
    )
    backlog = await _evaluate_sla(stack, bearer, as_of)
    echo(
        f"  POST /v1/complaints/sla/evaluate (backlog): HTTP {backlog['status']} in {backlog['seconds']:.1f}s: {backlog['result']}"
    )
    # One scheduler interval later: what the periodic checker costs once the backlog is cleared.
    interval = await _evaluate_sla(stack, bearer, as_of + timedelta(seconds=60))
    echo(
        f"  POST /v1/complaints/sla/evaluate (next interval): HTTP {interval['status']} in {interval['seconds'] * 1000:.0f} ms: {interval['result']}"
    )
    body = backlog["result"]
    escalations = body.get("escalations", 0) if isinstance(body, dict) else 0
    out: dict[str, Any] = {
        "open_complaints": n,
        "overdue": overdue,
        "load_s": load_s,
        "baseline_scan_s": scan_s,
        "evaluate_s": backlog["seconds"],
        "status": backlog["status"],
        "result": body,
        "escalations": escalations,
        "escalations_per_s": escalations / backlog["seconds"] if backlog["seconds"] else None,
        "ratio_to_baseline_scan": backlog["seconds"] / scan_s if scan_s else None,
        "interval_evaluate_s": interval["seconds"],
        "interval_status": interval["status"],
        "interval_result": interval["result"],
        "interval_ratio_to_baseline_scan": interval["seconds"] / scan_s if scan_s else None,
    }
    # The service's own time for the interval (the HTTP round trip above also waits for a
    # process still busy with the backlog's events).
    service_s = (
        interval["result"].get("duration_seconds") if isinstance(interval["result"], dict) else None
    )
    out["interval_service_s"] = service_s
    out["interval_service_ratio_to_baseline_scan"] = (
        service_s / scan_s if service_s and scan_s else None
    )
    if out["escalations_per_s"] is not None and out["ratio_to_baseline_scan"] is not None:
        echo(
            f"  backlog: {escalations:,} escalations, {out['escalations_per_s']:,.0f}/s, "
            f"{out['ratio_to_baseline_scan']:,.1f}x the plain scan; next interval: "
            f"{out['interval_ratio_to_baseline_scan']:,.2f}x the plain scan over HTTP, "
            f"{out['interval_service_ratio_to_baseline_scan'] or 0:,.2f}x in the service"
        )
    return out


async def _evaluate_sla(stack: BenchStack, bearer: str, as_of: datetime) -> dict[str, Any]:
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        response = await client.post(
            f"{stack.url('complaints')}/v1/complaints/sla/evaluate",
            json={"as_of": as_of.isoformat()},
            headers={"Authorization": f"Bearer {bearer}"},
        )
    seconds = time.perf_counter() - started
    body = (
        response.json()
        if response.headers.get("content-type", "").endswith("json")
        else response.text[:300]
    )
    return {"status": response.status_code, "seconds": seconds, "result": body}


# --- lifecycle ---------------------------------------------------------------------------------


async def lifecycle(stack: BenchStack, bench: Bench, *, echo: Echo) -> dict[str, Any]:
    from bench import sweeps

    return await sweeps.lifecycle_sweep(stack, bench.sizes.sweep_customers, bench.token, echo=echo)


# --- scoring -----------------------------------------------------------------------------------


async def scoring(stack: BenchStack, bench: Bench, *, echo: Echo) -> dict[str, Any]:
    from bench import scoring_models, sweeps

    out: dict[str, Any] = {}
    out["models"] = await scoring_models.measure(
        list(bench.sizes.fit_sizes), seed=bench.seed, echo=echo, lifetimes_timeout=600
    )
    out["recompute"] = await sweeps.scoring_recompute(
        stack, bench.sizes.rescore_customers, bench.token, echo=echo
    )
    return out


async def recompute(
    stack: BenchStack, bearer: str, *, echo: Echo, timeout: float = 300.0
) -> dict[str, Any]:
    """POST /v1/value/recompute (now) and wait for the run to finish."""
    headers = {"Authorization": f"Bearer {bearer}"}
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        response = await client.post(
            f"{stack.url('scoring')}/v1/value/recompute", json={}, headers=headers
        )
        body: dict[str, Any] = (
            response.json() if "json" in response.headers.get("content-type", "") else {}
        )
        run_id = body.get("id")
        deadline = time.monotonic() + timeout
        while (
            run_id and body.get("status") in ("pending", "running") and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.5)
            body = (
                await client.get(
                    f"{stack.url('scoring')}/v1/value/recompute/{run_id}", headers=headers
                )
            ).json()
    seconds = time.perf_counter() - started
    echo(
        f"  recompute of the population: HTTP {response.status_code}, {body.get('status')} in {seconds:.1f}s "
        f"({body.get('customers_scored')} customers, {body.get('events_published')} events)"
    )
    return {"status": response.status_code, "seconds": seconds, "run": body}
