"""Profile benchmarks (run by `make bench`): the 360 view against a minimal baseline, and a bulk
import of 100,000 CSV rows.

    python tests/e2e/profile_bench.py [--seconds 8] [--customers 5000] [--rows 100000] [--json out.json]

Needs only PostgreSQL: `CRM_BENCH_DATABASE_URL` (a server URL, e.g.
postgresql://postgres@127.0.0.1:54320/postgres) or an embedded server started here. Both HTTP
servers run as separate processes with one uvicorn worker each; the load generator is a small
keep-alive HTTP/1.1 client on asyncio (a Python HTTP library would be the bottleneck).

- Peak: closed loop, `--connections` requests in flight, requests/s over `--seconds`, for the
  baseline (FastAPI + asyncpg, one indexed single-row query) and for `GET /v1/customers/{id}/360`
  (masked, token without `pii:read`), alternated twice to even out a shared machine's noise.
- Latency: open loop at half the 360's peak rate; each request's latency counts from its
  scheduled start (no coordinated omission); p50/p99 reported.
- Import: POST /v1/imports/purchases with a generated 100,000-row file (20,000 customers,
  multi-line orders), wall time of the request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# --- the baseline server -------------------------------------------------------------------------

BASELINE_APP = """
import os, asyncpg
from contextlib import asynccontextmanager
from fastapi import FastAPI, Response
import orjson

@asynccontextmanager
async def lifespan(app):
    app.state.pool = await asyncpg.create_pool(os.environ["BASELINE_DSN"], min_size=10, max_size=10)
    yield
    await app.state.pool.close()

app = FastAPI(lifespan=lifespan)

@app.get("/customers/{customer_id}")
async def customer(customer_id: str) -> Response:
    async with app.state.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, kind, name, email, registered_at FROM customers WHERE id = $1", customer_id
        )
    return Response(orjson.dumps(dict(row), default=str), media_type="application/json")
"""


def free_port() -> int:
    from shared.devstack import free_port as pick

    return pick()


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


# --- a small keep-alive HTTP client ---------------------------------------------------------------


class Connection:
    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{self.extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(
    port: int, paths: list[str], headers: dict[str, str], connections: int, seconds: float
) -> float:
    """Requests/s with `connections` requests always in flight."""
    done = 0
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failures
        connection = Connection(port, headers)
        try:
            while time.perf_counter() < stop_at:
                status = await connection.get(random.choice(paths))
                done += 1
                failures += status != 200
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} of {done} requests failed")
    return done / elapsed


async def open_loop(
    port: int, paths: list[str], headers: dict[str, str], rate: float, seconds: float
) -> list[float]:
    """Latencies (s) of requests sent at a fixed rate, counted from their scheduled start."""
    latencies: list[float] = []
    idle: list[Connection] = []
    total = int(rate * seconds)
    started = time.perf_counter()

    async def one(scheduled: float) -> None:
        connection = idle.pop() if idle else Connection(port, headers)
        status = await connection.get(random.choice(paths))
        latencies.append(time.perf_counter() - scheduled)
        idle.append(connection)
        if status != 200:
            raise RuntimeError(f"status {status}")

    tasks = []
    for n in range(total):
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), robust to a busy shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(
    pid: int, port: int, paths: list[str], headers: dict[str, str], connections: int, seconds: float
) -> tuple[float, float]:
    """(requests/s, server CPU ms per request) of one closed-loop run."""
    before = cpu_seconds(pid)
    started = time.perf_counter()
    rps = await closed_loop(port, paths, headers, connections, seconds)
    requests = rps * (time.perf_counter() - started)
    return rps, (cpu_seconds(pid) - before) * 1000 / max(requests, 1)


def post_json(request: urllib.request.Request) -> dict[str, object]:
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.loads(response.read()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- data ----------------------------------------------------------------------------------------


async def seed(dsn: str, customers: int) -> list[str]:
    """Customers with consents, purchases, a stage, a value score and an open complaint."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        ids = [uuid.uuid4() for _ in range(customers)]
        await conn.copy_records_to_table(
            "customers",
            records=[
                (
                    i,
                    "person",
                    f"Customer {n}",
                    f"c{n}-{i.hex[:6]}@example.com",
                    "+12025550173",
                    now - timedelta(days=400),
                    now,
                    now,
                )
                for n, i in enumerate(ids)
            ],
            columns=[
                "id",
                "kind",
                "name",
                "email",
                "phone",
                "registered_at",
                "created_at",
                "updated_at",
            ],
        )
        await conn.copy_records_to_table(
            "consents",
            records=[(i, "marketing_email", "granted", now, "bench") for i in ids],
            columns=["customer_id", "purpose", "status", "changed_at", "source"],
        )
        purchases = []
        for i in ids:
            for k in range(5):
                purchases.append(
                    (uuid.uuid4(), i, f"B-{i.hex}-{k}", 10 + k, "USD", now - timedelta(days=30 * k))
                )
        await conn.copy_records_to_table(
            "purchases",
            records=purchases,
            columns=["id", "customer_id", "order_id", "amount", "currency", "occurred_at"],
        )
        await conn.copy_records_to_table(
            "customer_stage",
            records=[(i, "growth", now, "first_purchase", uuid.uuid4()) for i in ids],
            columns=["customer_id", "stage", "since", "reason", "event_id"],
        )
        await conn.copy_records_to_table(
            "customer_value",
            records=[(i, 55.0, "ordinary", 48.0, "latent", "mercenary", now) for i in ids],
            columns=[
                "customer_id",
                "score",
                "tier",
                "loyalty_index",
                "loyalty_type",
                "loyalty_satisfaction_type",
                "scored_at",
            ],
        )
        await conn.copy_records_to_table(
            "customer_complaints",
            records=[
                (uuid.uuid4(), i, "medium", "acknowledged", "delivery", now, now) for i in ids[::3]
            ],
            columns=[
                "complaint_id",
                "customer_id",
                "severity",
                "status",
                "category",
                "opened_at",
                "status_at",
            ],
        )
        await conn.execute("ANALYZE")
        return [str(i) for i in ids]
    finally:
        await conn.close()


def import_csv(rows: int, now: datetime) -> bytes:
    lines = ["external_ref,order_id,occurred_at,amount,currency,sku,category,quantity"]
    marker = uuid.uuid4().hex[:6]
    start = now - timedelta(days=700)
    for n in range(rows):
        order = n // 2
        when = (start + timedelta(minutes=order)).isoformat()
        lines.append(
            f"bench-{marker}-{order % 20_000},{marker}-{order},{when},{n % 97}.50,USD,"
            f"SKU-{n % 2},cat-{n % 7},1"
        )
    return ("\n".join(lines) + "\n").encode()


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="baseline/360 alternations")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


async def run(args: argparse.Namespace) -> dict[str, object]:
    from support import auth

    from shared.db import migrate
    from shared.devstack import EmbeddedPostgres

    processes: list[subprocess.Popen[bytes]] = []
    embedded = None
    workdir = Path(tempfile.mkdtemp(prefix="profile-bench-"))
    try:
        server_url = os.environ.get("CRM_BENCH_DATABASE_URL")
        if server_url is None:
            embedded = EmbeddedPostgres(workdir / "pg", free_port(), durable=False)
            embedded.start()
            server_url = embedded.url("postgres", driver="postgresql")
        name = f"crm_profile_bench_{uuid.uuid4().hex[:6]}"
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        dsn = server_url.rsplit("/", 1)[0] + f"/{name}"
        sa_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        await asyncio.to_thread(migrate, "profile", sa_url)
        ids = await seed(dsn, args.customers)

        env = {
            **os.environ,
            "PROFILE_DATABASE_URL": sa_url,
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # reads and imports do not need Kafka
            "LOG_LEVEL": "WARNING",
            "CRM_ENV": "test",
        }
        profile_port, baseline_port = free_port(), free_port()
        logs = (workdir / "profile.log").open("wb")
        processes.append(
            await asyncio.to_thread(
                subprocess.Popen,
                [
                    sys.executable,
                    "-m",
                    "shared.cli",
                    "serve",
                    "profile",
                    "--role",
                    "api",
                    "--port",
                    str(profile_port),
                ],
                env=env,
                cwd=REPO,
                stdout=logs,
                stderr=subprocess.STDOUT,
            )
        )
        (workdir / "baseline_app.py").write_text(BASELINE_APP)
        processes.append(
            await asyncio.to_thread(
                subprocess.Popen,
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "baseline_app:app",
                    "--port",
                    str(baseline_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env={**env, "BASELINE_DSN": dsn},
                cwd=workdir,
                stdout=logs,
                stderr=subprocess.STDOUT,
            )
        )
        wait_ready(f"http://127.0.0.1:{profile_port}/health/live")
        wait_ready(f"http://127.0.0.1:{baseline_port}/customers/{ids[0]}")

        reader = auth("customers:read")
        baseline_paths = [f"/customers/{i}" for i in ids]
        view_paths = [f"/v1/customers/{i}/360" for i in ids]
        # warm both (statement caches, pools)
        await closed_loop(baseline_port, baseline_paths, {}, args.connections, 1.5)
        await closed_loop(profile_port, view_paths, reader, args.connections, 1.5)
        baseline_rps, view_rps, baseline_cpu, view_cpu = [], [], [], []
        profile_pid, baseline_pid = processes[0].pid, processes[1].pid
        for _ in range(args.rounds):
            rps, cpu = await measured(
                baseline_pid, baseline_port, baseline_paths, {}, args.connections, args.seconds
            )
            baseline_rps.append(rps)
            baseline_cpu.append(cpu)
            rps, cpu = await measured(
                profile_pid, profile_port, view_paths, reader, args.connections, args.seconds
            )
            view_rps.append(rps)
            view_cpu.append(cpu)
        baseline_peak, view_peak = statistics.median(baseline_rps), statistics.median(view_rps)
        rate = view_peak / 2
        latencies = await open_loop(profile_port, view_paths, reader, rate, args.seconds)

        writer = auth("customers:read", "customers:write")
        body = import_csv(args.rows, datetime.now(UTC))
        started = time.perf_counter()
        request = urllib.request.Request(
            f"http://127.0.0.1:{profile_port}/v1/imports/purchases",
            data=body,
            headers={**writer, "Content-Type": "text/csv"},
            method="POST",
        )
        summary = await asyncio.to_thread(post_json, request)
        import_seconds = time.perf_counter() - started
        return {
            "profile_360": {
                "baseline_rps": round(baseline_peak, 1),
                "view_360_rps": round(view_peak, 1),
                "ratio": round(view_peak / baseline_peak, 3),
                "baseline_cpu_ms_per_request": round(statistics.median(baseline_cpu), 3),
                "view_360_cpu_ms_per_request": round(statistics.median(view_cpu), 3),
                "cpu_ratio": round(
                    statistics.median(baseline_cpu) / statistics.median(view_cpu), 3
                ),
                "target_ratio": 0.70,
                "half_peak_rate_rps": round(rate, 1),
                "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                "target_p99_ms": 50,
                "runs_rps": {
                    "baseline": [round(x) for x in baseline_rps],
                    "view_360": [round(x) for x in view_rps],
                },
                "customers": args.customers,
                "connections": args.connections,
            },
            "profile_import": {
                "rows": args.rows,
                "seconds": round(import_seconds, 2),
                "rows_per_second": round(args.rows / import_seconds),
                "orders_created": summary["purchases_created"],
                "customers_created": summary["customers_created"],
                "rejected": summary["rejected"],
            },
        }
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
