"""Small helpers shared by the benchmark sections: percentiles, bounded child processes,
database counts, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
_PR_SET_PDEATHSIG = 1


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of a sample (nearest rank), None for an empty one."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1],
    }


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def run_json(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> Any:
    """Run a helper process that prints one JSON document; kill it past `timeout`."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=str(REPO),
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[1]).name} exited {process.returncode}: {err.decode()[-2000:]}"
        )
    return json.loads(out)


class Helper:
    """A long-running helper process (e.g. a baseline consumer) started now, read later."""

    def __init__(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        self.process = process
        self.timeout = timeout

    @classmethod
    async def start(cls, argv: Sequence[str], *, timeout: float) -> Helper:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO),
            preexec_fn=_die_with_parent,
        )
        return cls(process, timeout)

    async def result(self) -> Any:
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError):
            self.kill()
            await self.process.wait()
            raise
        if self.process.returncode != 0:
            raise RuntimeError(f"helper exited {self.process.returncode}: {err.decode()[-2000:]}")
        return json.loads(out)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


async def http_load(spec: dict[str, Any], requests: list[list[Any]], *, timeout: float) -> Any:
    """Run loadgen.py in its own process over this request list."""
    with tempfile.TemporaryDirectory(prefix="crm-bench-load-") as folder:
        request_file = Path(folder) / "requests.json"
        request_file.write_text(json.dumps(requests))
        spec_file = Path(folder) / "spec.json"
        spec_file.write_text(json.dumps({**spec, "requests": str(request_file)}))
        return await run_json(
            [sys.executable, str(BENCH_DIR / "loadgen.py"), str(spec_file)], timeout=timeout
        )


async def count(dsn: str, sql: str, *args: Any) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(sql, *args) or 0)
    finally:
        await connection.close()


async def table_exists(dsn: str, table: str) -> bool:
    connection = await asyncpg.connect(dsn)
    try:
        return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
    finally:
        await connection.close()


async def columns(dsn: str, table: str) -> dict[str, str]:
    """{column: data type} of a table in the public schema ({} when it does not exist)."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = $1",
            table,
        )
        return {r["column_name"]: r["data_type"] for r in rows}
    finally:
        await connection.close()


async def wait_for(
    probe: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.2
) -> float | None:
    """Poll until `probe` is true; return the seconds it took, or None at the timeout."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if await probe():
            return time.perf_counter() - started
        await asyncio.sleep(interval)
    return None


def token() -> str:
    from shared.http.auth import SCOPES, issue_dev_token
    from shared.settings import ServiceSettings

    return str(issue_dev_token(ServiceSettings(), scopes=list(SCOPES), subject="bench"))


async def consumer_lag(bootstrap: str) -> int:
    """Messages not yet committed by the services' consumer groups (the harness's own
    `bench-*` groups left out); -1 when the broker cannot tell."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        await admin.start()
        await consumer.start()
        groups = [g[0] for g in await admin.list_consumer_groups() if not g[0].startswith("bench")]
        lag = 0
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await consumer.end_offsets(list(committed))
            lag += sum(
                max(0, ends[tp] - meta.offset) for tp, meta in committed.items() if meta.offset >= 0
            )
        return lag
    except Exception:
        return -1
    finally:
        # aiokafka may cancel its own offset-reset task while stopping a group-less consumer.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()
