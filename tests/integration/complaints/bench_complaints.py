"""Complaints benchmarks, each against a baseline measured in the same run.

1. Intake: POST /v1/complaints requests/s on one uvicorn worker (API role), against
   GET /health/live on the same server and client (the framework's ceiling on this machine).
2. SLA evaluation over N open complaints (default 1,000,000): the checker's indexed
   evaluation (`next_sla_check_at` range scan, then the rules on the candidates only) for one
   scheduler interval and for one hour of catch-up, against (a) evaluating every open complaint
   with the same rules (what the checker would do without the index) and (b) a bare
   `count(*)` over the open complaints (the cheapest conceivable full pass).

    .venv/bin/python tests/integration/complaints/bench_complaints.py [--complaints 1000000]
        [--seconds 10] [--concurrency 32] [--json bench/complaints.json]

PostgreSQL: CRM_BENCH_DATABASE_URL (a server URL) or an embedded server in a temp dir
(fsync on; CRM_BENCH_FSYNC=off to turn it off).
The load client is raw asyncio HTTP/1.1 keep-alive: httpx spends more CPU per request than
the server, and on a small machine it would measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from services.complaints import domain, service  # noqa: E402
from services.complaints.config import ComplaintsSettings  # noqa: E402
from services.complaints.main import create_app  # noqa: E402
from services.complaints.models import Complaint, ComplaintEscalation  # noqa: E402
from shared.db import asyncpg_dsn, create_engine, migrate, session_factory  # noqa: E402
from shared.devstack import EmbeddedPostgres, ExternalPostgres, free_port  # noqa: E402
from shared.http.auth import issue_dev_token  # noqa: E402
from shared.runtime import Role  # noqa: E402

POLICY = domain.SlaPolicy()
SEVERITIES = (
    [domain.Severity.low] * 3
    + [domain.Severity.medium] * 4
    + [domain.Severity.high] * 2
    + [domain.Severity.critical]
)
CUSTOMERS = 2000


def api_app() -> Any:
    """uvicorn factory: the API role only (no relay, consumers or scheduled checker)."""
    return create_app(role=Role.api)  # logs configured from LOG_LEVEL (warnings only)


# --- PostgreSQL ---------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[EmbeddedPostgres | ExternalPostgres]:
    server_url = os.environ.get("CRM_BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="crm-bench-") as tmp:
        server: EmbeddedPostgres | ExternalPostgres
        if server_url:
            server = ExternalPostgres(server_url)
        else:
            server = EmbeddedPostgres(
                Path(tmp) / "data",
                free_port(),
                durable=os.environ.get("CRM_BENCH_FSYNC", "on") == "on",
            )
            server.start()
        try:
            yield server
        finally:
            server.stop()


def fresh_database(server: EmbeddedPostgres | ExternalPostgres, purpose: str) -> str:
    """asyncpg URL of a new, migrated complaints database (call outside the event loop)."""
    name = f"bench_complaints_{purpose}_{uuid.uuid4().hex[:6]}"
    server.create_database(name)
    url = server.url(name)
    migrate("complaints", url)
    return url


async def seed_customers(dsn: str) -> list[uuid.UUID]:
    customers = [uuid.uuid4() for _ in range(CUSTOMERS)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "known_customers",
            records=[(c, True, "key" if i % 20 == 0 else "major") for i, c in enumerate(customers)],
            columns=["customer_id", "known", "tier"],
        )
    finally:
        await conn.close()
    return customers


# --- 1. intake ----------------------------------------------------------------------------------


async def load(
    port: int, requests: list[bytes], *, seconds: float, concurrency: int
) -> tuple[float, list[float], int]:
    """Requests/s, latencies (s) and non-2xx count of `concurrency` keep-alive connections,
    each cycling through `requests`."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def connection(offset: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent_count = offset
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(requests[sent_count % len(requests)])
                sent_count += 1
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    failures += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i * 7919) for i in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies, failures


def http_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def summary(rate: float, latencies: list[float], failures: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "requests_per_second": round(rate, 1),
        "requests": len(latencies),
        "failures": failures,
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
    }


async def bench_intake(
    url: str, customers: list[uuid.UUID], *, seconds: float, concurrency: int
) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "COMPLAINTS_DATABASE_URL": url,
        "CRM_ENV": "test",
        "LOG_LEVEL": "WARNING",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # intake only writes the outbox
        "DB_POOL_SIZE": str(concurrency),
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "bench_complaints:api_app",
        "--factory",
        "--app-dir",
        str(Path(__file__).parent),
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        env=env,
        cwd=REPO,
    )
    try:
        health = [http_request("GET", "/health/live")]
        for _ in range(200):  # up to 20 s to start
            with contextlib.suppress(OSError):
                rate, _, _ = await load(port, health, seconds=0.2, concurrency=1)
                if rate:
                    break
            await asyncio.sleep(0.1)
        token = issue_dev_token(
            ComplaintsSettings(), scopes=["complaints:write", "complaints:read"]
        )
        # one request per customer, cycled: complaints of one customer serialise on its lock
        intake = [
            http_request(
                "POST",
                "/v1/complaints",
                orjson.dumps(
                    {
                        "customer_id": str(customer),
                        "channel": "web",
                        "category": "delivery",
                        "severity": "high",
                        "subject": "Parcel late",
                        "description": "Still waiting for order 1234",
                    }
                ),
                {"Authorization": f"Bearer {token}"},
            )
            for customer in customers
        ]
        await load(port, health, seconds=1, concurrency=concurrency)  # warm-up
        await load(port, intake, seconds=1, concurrency=concurrency)
        baseline = summary(*await load(port, health, seconds=seconds, concurrency=concurrency))
        measured = summary(*await load(port, intake, seconds=seconds, concurrency=concurrency))
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=30)
    return {
        "intake": measured,
        "baseline_health_live": baseline,
        "ratio_intake_to_baseline": round(
            measured["requests_per_second"] / baseline["requests_per_second"], 3
        ),
    }


# --- 2. SLA evaluation --------------------------------------------------------------------------


def open_complaints(
    count: int, customers: list[uuid.UUID], *, last_run: datetime, seed: int = 11
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """(complaint row, escalation rows) of open complaints as a checker that ran at `last_run`
    leaves them: received over the 20 days before, some acknowledged, some waiting for the
    customer, escalations up to `last_run` already raised."""
    rng = random.Random(seed)
    for _ in range(count):
        severity = rng.choice(SEVERITIES)
        tier = domain.Tier.key if rng.random() < 0.05 else None
        received = last_run - timedelta(seconds=rng.uniform(0, 20 * 86400))
        complaint = domain.open_complaint(
            complaint_id=uuid.uuid4(),
            customer_id=rng.choice(customers),
            channel=domain.Channel.web,
            category=domain.Category.delivery,
            severity=severity,
            tier=tier,
            received_at=received,
            policy=POLICY,
        ).complaint
        response = complaint.first_response_due - received
        acknowledged = received + response * rng.uniform(0.05, 1.2)
        if acknowledged < last_run:
            complaint = domain.acknowledge(complaint, at=acknowledged, message="m").complaint
            working = acknowledged + timedelta(minutes=rng.uniform(1, 120))
            if working < last_run:
                complaint = domain.investigate(complaint, at=working).complaint
                if rng.random() < 0.2:
                    waiting = working + (last_run - working) * rng.random()
                    complaint = domain.await_customer(complaint, at=waiting).complaint
        complaint = domain.evaluate_sla(complaint, as_of=last_run, policy=POLICY).complaint
        yield (
            row_of(complaint),
            [
                (complaint.complaint_id, e.level, e.reason.value, e.at, None)
                for e in complaint.escalations
            ],
        )


def row_of(c: domain.Complaint) -> tuple[Any, ...]:
    return (
        c.complaint_id,
        c.customer_id,
        c.channel.value,
        c.category.value,
        c.severity.value,
        c.tier.value if c.tier else None,
        "Late parcel",
        "Where is my order?",
        c.status.value,
        c.received_at,
        c.first_response_due,
        c.resolution_due,
        domain.settled_resolution_due(c),
        c.paused_since,
        json.dumps(service._pauses_to_json(c.pauses)),
        c.acknowledged_at,
        c.escalation_level,
        domain.next_sla_check(c, POLICY),
        c.last_step_at,
        "bench",
    )


ROW_COLUMNS = [
    "id",
    "customer_id",
    "channel",
    "category",
    "severity",
    "tier_at_intake",
    "subject",
    "description",
    "status",
    "received_at",
    "first_response_due",
    "resolution_due",
    "resolution_due_effective",
    "paused_since",
    "pauses",
    "acknowledged_at",
    "escalation_level",
    "next_sla_check_at",
    "last_step_at",
    "opened_by",
]


async def seed_complaints(
    dsn: str, customers: list[uuid.UUID], count: int, last_run: datetime
) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[tuple[Any, ...]] = []
        escalations: list[tuple[Any, ...]] = []

        async def flush() -> None:
            await conn.copy_records_to_table("complaints", records=rows, columns=ROW_COLUMNS)
            await conn.copy_records_to_table(
                "complaint_escalations",
                records=escalations,
                columns=["complaint_id", "level", "reason", "at", "actor"],
            )
            rows.clear()
            escalations.clear()

        for row, raised in open_complaints(count, customers, last_run=last_run):
            rows.append(row)
            escalations.extend(raised)
            if len(rows) == 50_000:
                await flush()
        await flush()
        await conn.execute("ANALYZE complaints; ANALYZE complaint_escalations")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def evaluate_everything(url: str, as_of: datetime) -> tuple[float, int]:
    """Baseline: the same rules over every open complaint, streamed from one full scan."""
    from sqlalchemy import select

    engine = create_engine(url, pool_size=1)
    started = time.perf_counter()
    due = 0
    try:
        async with engine.connect() as conn:
            escalations: dict[uuid.UUID, list[Any]] = {}
            for e in await conn.execute(select(ComplaintEscalation.__table__)):
                escalations.setdefault(e.complaint_id, []).append(e)
            rows = await conn.stream(
                select(Complaint.__table__)
                .where(Complaint.status != "closed")
                .execution_options(yield_per=20_000)
            )
            async for row in rows:
                complaint = service.to_domain(row, escalations.get(row.id, []))  # type: ignore[arg-type]
                due += bool(domain.escalations_due(complaint, as_of, POLICY))
    finally:
        await engine.dispose()
    return time.perf_counter() - started, due


async def count_open(dsn: str) -> tuple[float, int]:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        total = await conn.fetchval("SELECT count(*) FROM complaints WHERE status <> 'closed'")
        return time.perf_counter() - started, int(total)
    finally:
        await conn.close()


async def bench_sla(url: str, customers: list[uuid.UUID], count: int) -> dict[str, Any]:
    dsn = asyncpg_dsn(url)
    last_run = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    seeded = await seed_complaints(dsn, customers, count, last_run)
    interval = last_run + timedelta(seconds=60)
    catch_up = last_run + timedelta(hours=1)
    # warm the cache the same way for every contestant
    await count_open(dsn)
    full_seconds, full_due = await evaluate_everything(url, interval)
    scan_seconds, open_total = await count_open(dsn)
    engine = create_engine(url, pool_size=2)
    try:
        sessions = session_factory(engine)
        await service.evaluate_sla(sessions, as_of=last_run)  # warm-up: connections, no candidates
        one_interval = await service.evaluate_sla(sessions, as_of=interval)
        one_hour = await service.evaluate_sla(sessions, as_of=catch_up)
    finally:
        await engine.dispose()
    # the indexed candidates are exactly the complaints the rules find due (domain property)
    assert one_interval.candidates == full_due, (one_interval.candidates, full_due)
    return {
        "open_complaints": open_total,
        "seed_seconds": round(seeded, 1),
        "checker_one_interval": {
            "as_of": "last run + 60 s",
            "seconds": one_interval.duration_seconds,
            "candidates": one_interval.candidates,
            "escalations": one_interval.escalations,
        },
        "checker_one_hour_catch_up": {
            "as_of": "last run + 1 h",
            "seconds": one_hour.duration_seconds,
            "candidates": one_hour.candidates,
            "escalations": one_hour.escalations,
        },
        "baseline_rules_over_every_open_complaint": {
            "seconds": round(full_seconds, 3),
            "complaints_with_escalations_due": full_due,
        },
        "baseline_count_open_complaints": {"seconds": round(scan_seconds, 3)},
        "speedup_vs_rules_over_all": round(full_seconds / one_interval.duration_seconds, 1),
        "speedup_vs_bare_count": round(scan_seconds / one_interval.duration_seconds, 1),
    }


async def main(args: argparse.Namespace, intake_url: str, sla_url: str) -> dict[str, Any]:
    customers = await seed_customers(asyncpg_dsn(intake_url))
    intake = await bench_intake(
        intake_url, customers, seconds=args.seconds, concurrency=args.concurrency
    )
    sla = await bench_sla(sla_url, await seed_customers(asyncpg_dsn(sla_url)), args.complaints)
    return {"complaints": {"intake": intake, "sla_evaluation": sla, "cpus": os.cpu_count()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--complaints", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with postgres() as server:  # started from the main thread, outside the event loop
        urls = fresh_database(server, "intake"), fresh_database(server, "sla")
        report = json.dumps(asyncio.run(main(args, *urls)), indent=2, default=str)
    print(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report + "\n")
