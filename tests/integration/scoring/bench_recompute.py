"""Full recompute through the service layer on an embedded PostgreSQL, timed per phase.

    .venv/bin/python tests/integration/scoring/bench_recompute.py --customers 100000 --json out.json

Starts a throw-away PostgreSQL (fsync off), migrates the scoring database, loads a simulated
population set-based (purchase histories drawn from the BG/NBD and Gamma-Gamma processes in
NumPy, sent as a few arrays and expanded by INSERT ... SELECT FROM unnest; a few refunds,
complaints and referrals, and customers without a purchase), then runs recomputes exactly as
the worker does (`request_recompute`, `claim_pending_run`, `run_recompute`): the first one
publishes everyone's first score, the next ones (one day later) only the customers who moved.
The phases are the run's own `timings`; `--profile DIR` adds a pyinstrument report per run,
`--statements N` the N statements PostgreSQL spent most time on (pg_stat_statements).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from services.scoring import recompute, service
from services.scoring.config import ScoringSettings
from services.scoring.domain import TimeUnit
from services.scoring.models import RecomputeRun
from shared.clock import FixedClock
from shared.db import asyncpg_dsn, create_engine, migrate, session_factory, transaction
from shared.devstack import free_port, start_postgres

AS_OF = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
CATEGORIES = ["books", "music", "garden", "kitchen", "toys", "sports", "apparel", "home"]
# Arrays sent per INSERT ... SELECT FROM unnest (bounded statement size).
LOAD_CHUNK = 500_000


def simulate(rng: np.random.Generator, customers: int) -> dict[str, np.ndarray]:
    """Purchase instants (seconds before AS_OF), amounts (cents) and categories per customer.

    Daily rate ~ Gamma(0.9, scale 1/25), dropout after each repeat ~ Beta(0.8, 3), values ~
    Gamma(4, scale 1/nu) with nu ~ Gamma(3, rate 60); first purchases over the last 18 months.
    """
    rate = rng.gamma(0.9, 1 / 25, customers)
    dropout = rng.beta(0.8, 3.0, customers)
    spend_scale = 1 / rng.gamma(3.0, 1 / 60, customers)
    age = rng.uniform(1, 540, customers)
    owner = [np.arange(customers)]
    offset = [np.zeros(customers)]
    active = np.arange(customers)
    elapsed = np.zeros(customers)
    for _ in range(200):  # bounded: nobody buys more than 200 times
        elapsed[active] += rng.exponential(1 / rate[active])
        active = active[elapsed[active] <= age[active]]
        if active.size == 0:
            break
        owner.append(active)
        offset.append(elapsed[active].copy())
        active = active[rng.random(active.size) >= dropout[active]]
    who = np.concatenate(owner)
    since_first = np.concatenate(offset)
    seconds_before = np.maximum((age[who] - since_first) * 86_400, 60).astype(np.int64)
    cents = np.maximum(rng.gamma(4.0, spend_scale[who]) * 100, 100).astype(np.int64)
    preferred = rng.integers(0, len(CATEGORIES), customers)
    category = np.where(
        rng.random(who.size) < 0.7, preferred[who], rng.integers(0, len(CATEGORIES), who.size)
    )
    return {"customer": who, "seconds_before": seconds_before, "cents": cents, "category": category}


async def load_population(dsn: str, customers: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    history = simulate(rng, customers)
    purchases = len(history["customer"])
    conn = await asyncpg.connect(dsn)
    try:
        # Customer k of the simulation gets a random uuid (so id order is not purchase order);
        # 5% more are registered without a purchase.
        registered = customers + customers // 20
        await conn.execute(
            "CREATE UNLOGGED TABLE bench_customers AS "
            "SELECT k - 1 AS k, gen_random_uuid() AS customer_id "
            "FROM generate_series(1, $1::int) AS k",
            registered,
        )
        await conn.execute("CREATE UNIQUE INDEX ON bench_customers (k)")
        for start in range(0, purchases, LOAD_CHUNK):
            part = slice(start, start + LOAD_CHUNK)
            await conn.execute(
                "INSERT INTO purchases (purchase_id, customer_id, order_id, purchased_at, "
                "purchase_day, amount, currency, categories) "
                "SELECT gen_random_uuid(), c.customer_id, 'order-' || ($6::bigint + n), t.at, "
                "(t.at AT TIME ZONE 'UTC')::date, s.cents / 100.0, 'USD', ARRAY[($5::text[])[s.category + 1]] "
                "FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::int[]) "
                "WITH ORDINALITY AS s(k, seconds_before, cents, category, n) "
                "JOIN bench_customers c ON c.k = s.k "
                "CROSS JOIN LATERAL (SELECT $7::timestamptz - s.seconds_before * interval '1 second' AS at) t",
                history["customer"][part].tolist(),
                history["seconds_before"][part].tolist(),
                history["cents"][part].tolist(),
                history["category"][part].tolist(),
                CATEGORIES,
                start,
                AS_OF,
            )
        # 3% of purchases partly refunded (one in ten of those a chargeback), 3% of customers
        # with a complaint (half closed with a CSAT), 5% referred by another customer.
        await conn.execute(
            "INSERT INTO refunds (refund_id, purchase_id, customer_id, refunded_at, amount, "
            "currency, chargeback) "
            "SELECT gen_random_uuid(), purchase_id, customer_id, "
            "least(purchased_at + interval '3 days', $1::timestamptz), round(amount * 0.5, 2), "
            "currency, random() < 0.1 FROM purchases WHERE random() < 0.03",
            AS_OF,
        )
        await conn.execute(
            "INSERT INTO complaints (complaint_id, customer_id, opened_at, closed_at, "
            "satisfaction, status, status_at) "
            "SELECT gen_random_uuid(), customer_id, at, closed, "
            "CASE WHEN closed IS NULL THEN NULL ELSE 1 + floor(random() * 5)::int END, "
            "CASE WHEN closed IS NULL THEN 'received' ELSE 'closed' END, coalesce(closed, at) "
            "FROM (SELECT customer_id, max(purchased_at) AS at, "
            "CASE WHEN random() < 0.5 THEN least(max(purchased_at) + interval '2 days', $1::timestamptz) END AS closed "
            "FROM purchases GROUP BY customer_id HAVING random() < 0.03) AS s",
            AS_OF,
        )
        await conn.execute(
            "INSERT INTO referrals (customer_id, referrer_id, registered_at) "
            "SELECT c.customer_id, r.customer_id, $2::timestamptz - interval '30 days' "
            "FROM bench_customers c JOIN bench_customers r "
            "ON r.k = (c.k::int8 * 7919 + 13) % $1::int8 WHERE c.k % 20 = 0 AND r.k <> c.k",
            customers,
            AS_OF,
        )
        # Every customer has a value row; its facts version counts its ledger changes.
        await conn.execute(
            "INSERT INTO customer_values (customer_id, facts_version) "
            "SELECT c.customer_id, 1 + coalesce(p.n, 0) FROM bench_customers c "
            "LEFT JOIN (SELECT customer_id, count(*) AS n FROM purchases GROUP BY customer_id) p "
            "USING (customer_id)"
        )
        await conn.execute("DROP TABLE bench_customers")
        await conn.execute("VACUUM ANALYZE")
        counts = {}
        for table in ("customer_values", "purchases", "refunds", "complaints", "referrals"):
            counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        return counts
    finally:
        await conn.close()


def server_cpu_seconds(data_dir: Path) -> float:
    """CPU used by the PostgreSQL server so far: postmaster, live backends, reaped children."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid, parent = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15]) / tick
        elif parent == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run_once(
    url: str,
    settings: ScoringSettings,
    as_of: datetime,
    profile_to: Path | None,
    data_dir: Path,
) -> dict[str, Any]:
    engine = create_engine(url, pool_size=4)
    sessions = session_factory(engine)
    clock = FixedClock(as_of)
    profiler: Any = None
    if profile_to is not None:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled", interval=0.005)
        profiler.start()
    try:
        async with transaction(sessions) as session:
            run = await service.request_recompute(
                session, as_of=as_of, time_unit=TimeUnit.DAY, trigger="bench", now=as_of
            )
        run_id = await recompute.claim_pending_run(sessions, now=as_of)
        assert run_id == run.id
        started, cpu, server_cpu = (
            time.perf_counter(),
            time.process_time(),
            server_cpu_seconds(data_dir),
        )
        await recompute.run_recompute(sessions, run_id, settings=settings, clock=clock)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        server_cpu = server_cpu_seconds(data_dir) - server_cpu
        async with transaction(sessions) as session:
            done = await session.get(RecomputeRun, run_id)
            assert done is not None
            outbox = (await session.execute(text("SELECT count(*) FROM outbox"))).scalar_one()
        if done.status != "succeeded":
            raise RuntimeError(f"recompute {done.status}: {done.error}")
        return {
            "as_of": as_of.isoformat(),
            "wall_seconds": round(wall, 2),
            # On a shared machine wall time varies with the load; CPU time much less.
            "python_cpu_seconds": round(cpu, 2),
            "postgres_cpu_seconds": round(server_cpu, 2),
            "load_average": os.getloadavg()[0],
            "timings": done.timings,
            "customers_scored": done.customers_scored,
            "events_published": done.events_published,
            "outbox_rows": outbox,
        }
    finally:
        if profiler is not None:
            profiler.stop()
            assert profile_to is not None
            report = profiler.output_text(unicode=True, color=False, show_all=False)
            await asyncio.to_thread(_write, profile_to, report)
        await engine.dispose()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def track_statements(dsn: str) -> None:
    """Load pg_stat_statements (the server is restarted after this)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await conn.close()


async def top_statements(dsn: str, limit: int) -> list[dict[str, Any]]:
    """The statements that took longest since the last call (then reset): where the server's
    time went. COPY (query) also counts as its inner query."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = await conn.fetch(
            "SELECT round(total_exec_time::numeric / 1000, 2)::float8 AS seconds, calls, rows, "
            "shared_blks_hit + shared_blks_read AS blocks, shared_blks_dirtied AS dirtied, "
            "wal_records, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS query "
            "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1",
            limit,
        )
        await conn.execute("SELECT pg_stat_statements_reset()")
        return [dict(row) for row in rows]
    finally:
        await conn.close()


async def clear_outbox(dsn: str) -> None:
    # Stands in for the relay, so each run writes into an empty outbox as in steady state.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE outbox")
        await conn.execute("VACUUM ANALYZE customer_values")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2, help="recomputes, one day apart")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--profile", type=Path, default=None, help="pyinstrument reports here")
    parser.add_argument(
        "--statements", type=int, default=0, help="report this many top statements per run"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
        data_dir = Path(tmp) / "pg"
        postgres = start_postgres(data_dir, free_port(), ephemeral=True)
        try:
            postgres.create_database("crm_scoring_bench")
            url = postgres.url("crm_scoring_bench")
            migrate("scoring", url)
            dsn = asyncpg_dsn(url)
            overrides: dict[str, Any] = {"database_url": url, "log_level": "WARNING"}
            if args.chunk_size:
                overrides["recompute_chunk_size"] = args.chunk_size
            settings = ScoringSettings(**overrides)
            started = time.perf_counter()
            counts = asyncio.run(load_population(dsn, args.customers, args.seed))
            loaded = time.perf_counter() - started
            print(f"loaded {counts} in {loaded:.1f}s", flush=True)
            if args.statements:
                asyncio.run(track_statements(dsn))
                postgres.stop()
                postgres.start()
            runs = []
            for k in range(args.runs):
                as_of = AS_OF + timedelta(days=k)
                profile = args.profile / f"recompute-{k + 1}.txt" if args.profile else None
                if args.statements:
                    asyncio.run(top_statements(dsn, 0))
                result = asyncio.run(run_once(url, settings, as_of, profile, data_dir))
                if args.statements:
                    result["statements"] = asyncio.run(top_statements(dsn, args.statements))
                asyncio.run(clear_outbox(dsn))
                print(json.dumps({"run": k + 1, **result}), flush=True)
                if args.statements:
                    for row in result["statements"]:
                        print(
                            f"  {row['seconds']:8.2f}s {row['calls']:4}x {row['rows']:>9} rows "
                            f"{row['wal_records']:>9} WAL records  {row['query']}",
                            flush=True,
                        )
                runs.append(result)
        finally:
            postgres.stop()
    report = {
        "customers": args.customers,
        "rows": counts,
        "load_seconds": round(loaded, 1),
        "chunk_size": settings.recompute_chunk_size,
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
