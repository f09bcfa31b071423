"""Soak: the platform at a steady (half) load for MINUTES minutes, watching for drift.

    python tests/soak/soak.py --minutes 30 --rate 2500      # what `make soak MINUTES=30` runs

Starts its own PostgreSQL and Apache Kafka (Tansu without Java), fresh migrated databases and
the four services (`crm serve <svc> --role all`), registers customers, then offers purchases on
the ingest topic at `--rate`/s (plus a few over HTTP, and reads) and samples every `--interval`
seconds:

- RSS, open file descriptors and sockets of each service process (from /proc);
- open PostgreSQL connections per service database (`pg_stat_activity`);
- consumer lag and outbox backlog/age per service (from each service's `/metrics`);
- purchases recorded by profile (throughput) and Kafka consumer-group lag (admin API).

At the end it prints, per series, the mean of the first and last quarter of the run and the
change, and writes every sample and the drift table to `--out` (default `bench/soak.json`).
A series is flagged `growing` when its last-quarter mean exceeds the first-quarter mean by more
than both its relative and absolute tolerance. Exit status 1 when a service process died or
(with `--strict`) a series grows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from chaos.harness import Infrastructure, Services, parse_metrics, provision, service_env  # noqa: E402
from chaos.load import (  # noqa: E402
    BusinessClock,
    HttpPurchases,
    IngestLoad,
    Ledger,
    Load,
    ReadProbe,
    register_customers,
)
from chaos.reconcile import group_lag  # noqa: E402

from shared.db import asyncpg_dsn  # noqa: E402
from shared.devstack.process import Stop, signals_held, stop_on_signals, stoppable  # noqa: E402
from shared.platform import SERVICES  # noqa: E402


@dataclass(frozen=True)
class Tolerance:
    """How much a series may grow between the first and the last quarter before it is flagged."""

    relative: float
    absolute: float


# Key prefix -> tolerance. Memory settles after warm-up; connections are bounded by the pools;
# lag and outbox age must not trend upwards at a sustainable load.
TOLERANCES = {
    "rss_mb": Tolerance(0.15, 25.0),
    "fds": Tolerance(0.20, 10.0),
    "sockets": Tolerance(0.20, 10.0),
    "db_connections": Tolerance(0.25, 4.0),
    "consumer_lag": Tolerance(0.50, 2000.0),
    "group_lag": Tolerance(0.50, 2000.0),
    "outbox_backlog": Tolerance(0.50, 2000.0),
    "outbox_age_s": Tolerance(0.50, 2.0),
}


def process_stats(pid: int) -> dict[str, float]:
    """RSS (MiB), file descriptors and sockets of one process, from /proc (Linux)."""
    rss_kb = 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = float(line.split()[1])
    fds = sockets = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    sockets += 1
    return {"rss_mb": rss_kb / 1024, "fds": fds, "sockets": sockets}


async def db_connections(server_dsn: str) -> dict[str, int]:
    connection = await asyncpg.connect(server_dsn, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT datname, count(*) AS n FROM pg_stat_activity WHERE datname LIKE 'crm_%' GROUP BY 1"
        )
    finally:
        await connection.close()
    counts: dict[str, int] = {}
    for row in rows:
        service = str(row["datname"]).split("_")[1]
        counts[service] = counts.get(service, 0) + int(row["n"])
    return counts


async def service_metrics(client: httpx.AsyncClient, url: str, service: str) -> dict[str, float]:
    response = await client.get(f"{url}/metrics", timeout=10)
    lag = backlog = age = 0.0
    for name, labels, value in parse_metrics(response.text):
        if labels.get("service") != service:
            continue
        if name == "crm_consumer_lag":
            lag += value
        elif name == "crm_outbox_backlog":
            backlog = max(backlog, value)
        elif name == "crm_outbox_oldest_age_seconds":
            age = max(age, value)
    return {"consumer_lag": lag, "outbox_backlog": backlog, "outbox_age_s": age}


async def recorded_purchases(dsn: str) -> int:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM purchases"))
    finally:
        await connection.close()


def tolerance_for(key: str) -> Tolerance | None:
    metric = key.split(".", 1)[1] if "." in key else key
    return TOLERANCES.get(metric)


def drift(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per series: first-quarter mean, last-quarter mean, change, and whether it grows."""
    if len(samples) < 4:
        return []
    quarter = max(1, len(samples) // 4)
    keys = sorted({k for s in samples for k in s["values"]})
    rows = []
    for key in keys:
        first = [s["values"][key] for s in samples[:quarter] if key in s["values"]]
        last = [s["values"][key] for s in samples[-quarter:] if key in s["values"]]
        if not first or not last:
            continue
        a, b = statistics.fmean(first), statistics.fmean(last)
        tolerance = tolerance_for(key)
        growing = tolerance is not None and (
            b - a > tolerance.absolute and b > a * (1 + tolerance.relative)
        )
        rows.append(
            {
                "series": key,
                "first_quarter": round(a, 2),
                "last_quarter": round(b, 2),
                "change": round(b - a, 2),
                "change_pct": round(100 * (b - a) / a, 1) if a else None,
                "max": round(max(s["values"].get(key, 0) for s in samples), 2),
                "verdict": "growing" if growing else ("stable" if tolerance else "info"),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'series':<34}{'first q':>12}{'last q':>12}{'change':>12}{'%':>8}{'max':>12}  verdict"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        pct = "" if r["change_pct"] is None else f"{r['change_pct']:+.1f}"
        print(
            f"{r['series']:<34}{r['first_quarter']:>12.2f}{r['last_quarter']:>12.2f}"
            f"{r['change']:>+12.2f}{pct:>8}{r['max']:>12.2f}  {r['verdict']}"
        )


def half_of_saturation(results: Path = REPO / "bench" / "results.json") -> float:
    """Half load: 50% of the highest ingest throughput `make bench` achieved, else 1000/s."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        steps = json.loads(results.read_text())["ingest"]["steps"]
        best = max(float(step["achieved_rps"]) for step in steps)
        if best > 0:
            return round(best / 2)
    return 1000.0


def git_commit() -> str | None:
    """The checked-out commit, read from .git without running git."""
    with contextlib.suppress(OSError, IndexError):
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        loose = REPO / ".git" / ref
        if loose.is_file():
            return loose.read_text().strip()[:12]
        for line in (REPO / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    return None


async def soak(
    args: argparse.Namespace, infra: Infrastructure, services: Services, urls: dict[str, str]
) -> dict[str, Any]:
    ledger = Ledger()
    duration = args.minutes * 60
    clock = BusinessClock(span=timedelta(days=365), expected_orders=int(args.rate * duration) + 1)
    server_dsn = asyncpg_dsn(infra.postgres.url("postgres"))
    profile_dsn = asyncpg_dsn(urls["profile"])
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:
        started = time.monotonic()
        customers = await register_customers(
            client,
            services.url("profile"),
            args.customers,
            registered_at=clock.start - timedelta(days=1),
            concurrency=32,
        )
        print(
            f"registered {len(customers)} customers in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        ingest = IngestLoad(
            bootstrap_servers=infra.bootstrap_servers,
            idempotence=infra.kafka.supports_idempotence,
            ledger=ledger,
            customers=customers,
            clock=clock,
            rate=args.rate,
        )
        http = HttpPurchases(
            client=client,
            profile_url=services.url("profile"),
            ledger=ledger,
            customers=customers,
            clock=clock,
            rate=args.http_rate,
        )
        probe = ReadProbe(
            client=client, urls=services.url, ledger=ledger, customers=customers, interval=0.5
        )
        load = Load(ingest, http, probe)
        t0 = time.monotonic()
        previous_recorded, previous_at = await recorded_purchases(profile_dsn), t0
        async with load.running():
            while (elapsed := time.monotonic() - t0) < duration:
                await asyncio.sleep(min(args.interval, duration - elapsed))
                values: dict[str, float] = {}
                for name, pid in services.pids().items():
                    for key, value in process_stats(pid).items():
                        values[f"{name}.{key}"] = value
                for service, n in (await db_connections(server_dsn)).items():
                    values[f"{service}.db_connections"] = n
                for service in SERVICES:
                    with contextlib.suppress(httpx.HTTPError):
                        for key, value in (
                            await service_metrics(client, services.url(service), service)
                        ).items():
                            values[f"{service}.{key}"] = value
                for group, lag in (await group_lag(infra.bootstrap_servers)).items():
                    values[f"{group}.group_lag"] = lag
                recorded, now = await recorded_purchases(profile_dsn), time.monotonic()
                values["profile.recorded_per_s"] = (recorded - previous_recorded) / (
                    now - previous_at
                )
                values["load.offered_per_s"] = ingest.sent / max(1e-9, now - t0)
                previous_recorded, previous_at = recorded, now
                samples.append({"t": round(now - t0, 1), "values": values})
                print(
                    f"[{now - t0:6.0f}s] recorded/s={values['profile.recorded_per_s']:.0f} "
                    + " ".join(
                        f"{s}:rss={values.get(f'{s}.rss_mb', 0):.0f}MB,db={values.get(f'{s}.db_connections', 0):.0f},"
                        f"lag={values.get(f'{s}.consumer_lag', 0):.0f},outbox_age={values.get(f'{s}.outbox_age_s', 0):.1f}s"
                        for s in SERVICES
                    ),
                    flush=True,
                )
                if services.unexpected_exits:
                    print(
                        f"a service process exited: {[e.name for e in services.unexpected_exits]}",
                        flush=True,
                    )
        bad_reads = [
            r
            for r in ledger.reads
            if r.status is None or (r.status >= 500 and not r.path.startswith("/health"))
        ]
    return {
        "started_at": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "http_rate_per_s": args.http_rate,
        "interval_s": args.interval,
        "customers": args.customers,
        "kafka": infra.kafka.kind,
        "offered": len(ledger.orders),
        "acknowledged": len(ledger.acknowledged),
        "produce_failures": ledger.produce_failures,
        "reads": len(ledger.reads),
        "bad_reads": len(bad_reads),
        "unexpected_exits": [
            {"name": e.name, "code": e.code, "log_tail": e.log_tail}
            for e in services.unexpected_exits
        ],
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("MINUTES", "30")))
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ["RATE"]) if os.environ.get("RATE") else half_of_saturation(),
        help="ingested orders/s (default: half the saturation in bench/results.json, else 1000)",
    )
    parser.add_argument("--http-rate", type=float, default=5.0, help="purchases/s over HTTP")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--customers",
        type=int,
        default=20_000,
        # 30 minutes at a few hundred orders/s gives each about 30 orders over the business year
        # the run spans, like an active customer base; a thousand would buy 600 times each.
        help="customers registered before the load (default 20,000)",
    )
    parser.add_argument("--kafka", choices=["auto", "apache", "tansu"], default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "soak.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a series grows")
    args = parser.parse_args()

    stop_on_signals()  # Ctrl-C or SIGTERM: stop the services, the broker and PostgreSQL
    with tempfile.TemporaryDirectory(prefix="crm-soak-") as work:
        work_dir = Path(work)
        infra = Infrastructure(work_dir, kafka_kind=args.kafka)
        services: Services | None = None
        try:
            print(
                f"starting PostgreSQL and {type(infra.kafka).__name__} in {work_dir} ...",
                flush=True,
            )
            infra.start()
            database_urls = provision(
                infra.postgres, infra.bootstrap_servers, suffix=f"soak{uuid.uuid4().hex[:6]}"
            )
            env = service_env(
                database_urls,
                bootstrap_servers=infra.bootstrap_servers,
                idempotence=infra.idempotence,
                session_timeout_ms=3000 if infra.kafka.kind == "tansu" else 10000,
                extra={"LOG_LEVEL": "WARNING"},
            )
            services = Services(env=env, log_dir=work_dir / "logs", split=False)
            services.start(timeout=180)
            urls = {s: database_urls[f"{s.upper()}_DATABASE_URL"] for s in SERVICES}
            # A signal now stops the load's tasks cleanly, then raises Stop.
            report = asyncio.run(stoppable(soak(args, infra, services, urls)))
        except (Stop, KeyboardInterrupt) as stop:
            print(f"\ninterrupted ({stop}): stopping ...", flush=True)
            return 130
        finally:
            with signals_held():
                if services is not None:
                    services.stop()
                infra.stop()

    rows = drift(report["samples"])
    report["drift"] = rows
    print()
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} orders/s on {report['kafka']} Kafka; "
        f"offered {report['offered']}, acknowledged {report['acknowledged']}, "
        f"bad reads {report['bad_reads']}/{report['reads']}, process exits {len(report['unexpected_exits'])}"
    )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")
    growing = [r["series"] for r in rows if r["verdict"] == "growing"]
    if growing:
        print(f"growing: {', '.join(growing)}")
    if report["unexpected_exits"] or (args.strict and growing):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
