"""Large populations loaded set-based straight into a service's tables, then the service's
batch endpoint over them, against a plain SQL scan of the same table.

Business times are set ahead of the wall clock, so the services' own periodic jobs (which
run at `now`) find nothing due while we load: only our call does the work we time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import numpy as np

from bench.common import columns
from bench.e2e import hop_means, loop_lag_totals
from bench.population import GammaGammaTruth, simulate_summary
from bench.scoring_models import SPEND, TRUTH
from bench.stack import BenchStack


async def _scan(connection: asyncpg.Connection, sql: str, *args: Any) -> tuple[float, int]:
    """Seconds and result of a query forced to a sequential scan (the baseline)."""
    async with connection.transaction():
        await connection.execute("SET LOCAL enable_indexscan = off")
        await connection.execute("SET LOCAL enable_bitmapscan = off")
        await connection.execute("SET LOCAL enable_indexonlyscan = off")
        started = time.perf_counter()
        value = await connection.fetchval(sql, *args)
        return time.perf_counter() - started, int(value or 0)


async def lifecycle_sweep(
    stack: BenchStack, customers: int, bearer: str, *, echo: Any
) -> dict[str, Any]:
    dsn = stack.service_db("lifecycle")
    table = await columns(dsn, "customer_lifecycles")
    needed = {
        "customer_id",
        "stage",
        "since",
        "reason",
        "registered_at",
        "idle_since",
        "gap_days",
        "decline_due_at",
        "churn_due_at",
        "facts",
    }
    if not needed <= set(table):
        return {"missing": f"customer_lifecycles lacks {sorted(needed - set(table))}"}
    connection = await asyncpg.connect(dsn)
    try:
        now: datetime = await connection.fetchval("SELECT now()")
        # One day's sweep: due times from an hour ahead of the wall clock over the next 200/400 days.
        as_of = now + timedelta(days=2)
        started = time.perf_counter()
        await connection.execute(
            """
            INSERT INTO customer_lifecycles (customer_id, stage, since, reason, registered_at,
              stage_before_decline, idle_since, gap_days, decline_due_at, churn_due_at, facts)
            SELECT gen_random_uuid(), s.stage, $1::timestamptz - interval '30 days',
              CASE s.stage WHEN 'growth' THEN 'first_purchase' WHEN 'mature' THEN 'established'
                           WHEN 'decline' THEN 'lapsing' ELSE 'inactive' END,
              $1::timestamptz - interval '400 days',
              CASE WHEN s.stage = 'decline' THEN 'growth' END,
              $1::timestamptz - interval '20 days', 45.0,
              CASE WHEN s.stage IN ('growth', 'mature')
                   THEN $1::timestamptz + interval '1 hour' + (i % 200) * interval '1 day' + (i % 86400) * interval '1 second' END,
              CASE WHEN s.stage = 'decline'
                   THEN $1::timestamptz + interval '1 hour' + (i % 400) * interval '1 day' + (i % 86400) * interval '1 second' END,
              '{}'::jsonb
            FROM (SELECT i, CASE WHEN i % 20 < 10 THEN 'growth' WHEN i % 20 < 16 THEN 'mature'
                                 WHEN i % 20 < 19 THEN 'decline' ELSE 'churned' END AS stage
                  FROM generate_series(1, $2) AS i) AS s
            """,
            now,
            customers,
        )
        await connection.execute("ANALYZE customer_lifecycles")
        load_s = time.perf_counter() - started
        scan_s, due = await _scan(
            connection,
            "SELECT count(*) FROM customer_lifecycles WHERE "
            "(stage IN ('growth', 'mature') AND decline_due_at < $1) OR (stage = 'decline' AND churn_due_at < $1)",
            as_of,
        )
        total = await connection.fetchval("SELECT count(*) FROM customer_lifecycles")
    finally:
        await connection.close()
    echo(
        f"  loaded {customers:,} customers in {load_s:.1f}s; plain SQL scan of {total:,} rows: {scan_s * 1000:.0f} ms ({due:,} due at as_of)"
    )
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        response = await client.post(
            f"{stack.url('lifecycle')}/v1/lifecycle/evaluate",
            json={"as_of": as_of.isoformat()},
            headers={"Authorization": f"Bearer {bearer}"},
        )
    evaluate_s = time.perf_counter() - started
    body = (
        response.json()
        if "json" in response.headers.get("content-type", "")
        else response.text[:300]
    )
    moved = body.get("total_moved") if isinstance(body, dict) else None
    echo(
        f"  POST /v1/lifecycle/evaluate: HTTP {response.status_code} in {evaluate_s:.1f}s, moved {moved}"
    )
    return {
        "customers": int(total),
        "loaded": customers,
        "due": due,
        "load_s": load_s,
        "baseline_scan_s": scan_s,
        "evaluate_s": evaluate_s,
        "status": response.status_code,
        "moved": moved,
        "result": body
        if not isinstance(body, dict)
        else {k: v for k, v in body.items() if k != "moved"},
    }


def _purchase_rows(
    n: int, *, seed: int, as_of: datetime
) -> tuple[list[uuid.UUID], list[tuple[Any, ...]]]:
    """Purchases of n simulated BG/NBD customers (weeks -> days), one row per purchase day."""
    summary = simulate_summary(
        n, seed=seed, bgnbd=TRUTH, spend=GammaGammaTruth(SPEND.p, SPEND.q, SPEND.gamma), max_T=78.0
    )
    rng = np.random.default_rng(seed + 1)
    as_of_day = (as_of.date() - date(1970, 1, 1)).days - 1
    first = as_of_day - np.floor(summary.T * 7).astype(np.int64)
    repeats = summary.x.astype(np.int64)
    owner = np.repeat(np.arange(n), repeats + 1)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(repeats + 1) - (repeats + 1), repeats + 1)
    span = np.repeat(np.floor(summary.t_x * 7), repeats + 1)
    count = np.repeat(repeats, repeats + 1)
    # first purchase on day 0, repeats on strictly later distinct days, the last near t_x
    room = np.maximum(span - count, 0)
    offset = rank + np.floor(room * rank / np.maximum(count, 1))
    day = np.minimum(np.repeat(first, repeats + 1) + offset.astype(np.int64), as_of_day)
    # Gamma-Gamma spend: each customer's own rate nu, each purchase Gamma(p, nu)
    nu = rng.gamma(SPEND.q, 1 / SPEND.gamma, n)
    amount = np.round(rng.gamma(SPEND.p, 1 / nu[owner]), 2) + 0.01
    customers = [uuid.uuid4() for _ in range(n)]
    epoch = date(1970, 1, 1)
    rows = []
    for i, (who, d, value) in enumerate(
        zip(owner.tolist(), day.tolist(), amount.tolist(), strict=True)
    ):
        at = datetime(1970, 1, 1, 12, tzinfo=UTC) + timedelta(days=d)
        rows.append(
            (
                uuid.uuid4(),
                customers[who],
                f"sim-{i}",
                at,
                epoch + timedelta(days=d),
                value,
                "USD",
                ["books"],
            )
        )
    return customers, rows


async def scoring_recompute(
    stack: BenchStack, customers: int, bearer: str, *, echo: Any
) -> dict[str, Any]:
    dsn = stack.service_db("scoring")
    if not {"customer_id", "facts_version"} <= set(await columns(dsn, "customer_values")):
        return {"missing": "scoring has no customer_values table"}
    if not {"purchase_id", "purchase_day"} <= set(await columns(dsn, "purchases")):
        return {"missing": "scoring has no purchases ledger"}
    as_of = datetime.now(UTC)
    started = time.perf_counter()
    ids, rows = await asyncio.to_thread(_purchase_rows, customers, seed=customers, as_of=as_of)
    build_s = time.perf_counter() - started
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await connection.copy_records_to_table(
            "customer_values", records=[(c,) for c in ids], columns=["customer_id"]
        )
        await connection.copy_records_to_table(
            "purchases",
            records=rows,
            columns=[
                "purchase_id",
                "customer_id",
                "order_id",
                "purchased_at",
                "purchase_day",
                "amount",
                "currency",
                "categories",
            ],
        )
        await connection.execute("ANALYZE customer_values; ANALYZE purchases")
        load_s = time.perf_counter() - started
        scan_s, scanned = await _scan(
            connection,
            "SELECT count(*) FROM (SELECT customer_id, sum(amount) FROM purchases GROUP BY customer_id) AS g",
        )
        total = await connection.fetchval("SELECT count(*) FROM customer_values")
    finally:
        await connection.close()
    echo(
        f"  loaded {customers:,} customers / {len(rows):,} purchases in {load_s:.1f}s (built in {build_s:.1f}s); "
        f"plain SQL per-customer aggregation: {scan_s:.2f}s over {scanned:,} customers"
    )
    headers = {"Authorization": f"Bearer {bearer}"}
    loop_before = await loop_lag_totals(stack, "scoring")
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        response = await client.post(
            f"{stack.url('scoring')}/v1/value/recompute",
            json={"as_of": as_of.isoformat()},
            headers=headers,
        )
        body = (
            response.json()
            if "json" in response.headers.get("content-type", "")
            else {"text": response.text[:300]}
        )
        run_id = body.get("id")
        # Bounded: a run still going after this is reported with its progress, not awaited.
        deadline = time.monotonic() + 300
        while (
            run_id and body.get("status") in ("pending", "running") and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.5)
            body = (
                await client.get(
                    f"{stack.url('scoring')}/v1/value/recompute/{run_id}", headers=headers
                )
            ).json()
    recompute_s = time.perf_counter() - started
    # What the worker's consumers and HTTP saw meanwhile: its event loop's lag.
    loop = hop_means(loop_before, await loop_lag_totals(stack, "scoring")).get("scoring/loop", {})
    echo(
        f"  POST /v1/value/recompute: HTTP {response.status_code}, {body.get('status')} after {recompute_s:.1f}s "
        f"(scored {body.get('customers_scored')}, events {body.get('events_published')}); timings {body.get('timings')}\n"
        f"    scoring's event loop meanwhile: mean lag {loop.get('loop_lag_ms')} ms, "
        f"{loop.get('loop_late_pct')}% of its wake-ups 50 ms late or more, "
        f"{loop.get('loop_long_pct')}% 250 ms or more"
    )
    return {
        "customers": int(total),
        "loaded": customers,
        "purchases": len(rows),
        "load_s": load_s,
        "baseline_scan_s": scan_s,
        "recompute_s": recompute_s,
        "event_loop": loop,
        "status": response.status_code,
        "finished": body.get("status") in ("succeeded", "failed"),
        "run": {
            k: v
            for k, v in body.items()
            if k
            in (
                "status",
                "phase",
                "progress",
                "customers_total",
                "customers_scored",
                "events_published",
                "model_version",
                "timings",
                "error",
            )
        },
    }
