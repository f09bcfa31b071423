"""Where the time goes: database statements per event (pg_stat_statements, the harness's own
queries excluded by role) and CPU samples of a service process (py-spy, when installed).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.common import REPO

PY_SPY_CANDIDATES = (
    REPO / ".venv" / "bin" / "py-spy",
    REPO / ".cache" / "bench-venv" / "bin" / "py-spy",
)


class StatementStats:
    """pg_stat_statements of the services' databases, reset and read around a measurement."""

    def __init__(self, admin_dsn: str, exclude_role: str) -> None:
        self.admin_dsn = admin_dsn
        self.exclude_role = exclude_role

    async def available(self) -> bool:
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            return bool(
                await connection.fetchval("SELECT to_regclass('pg_stat_statements') IS NOT NULL")
            )
        finally:
            await connection.close()

    async def reset(self) -> None:
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            await connection.execute("SELECT pg_stat_statements_reset()")
        finally:
            await connection.close()

    async def read(self, database: str, events: int, top: int = 8) -> dict[str, Any]:
        """Statements (round trips) per event and the costliest statements of one database."""
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            rows = await connection.fetch(
                "SELECT s.query, s.calls, s.total_exec_time, s.rows FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid "
                "WHERE d.datname = $1 AND r.rolname <> $2",
                database,
                self.exclude_role,
            )
        finally:
            await connection.close()
        calls = sum(r["calls"] for r in rows)
        execution = sum(r["total_exec_time"] for r in rows)
        costly = sorted(rows, key=lambda r: r["total_exec_time"], reverse=True)[:top]
        frequent = sorted(rows, key=lambda r: r["calls"], reverse=True)[:top]

        def brief(r: Any) -> dict[str, Any]:
            return {
                "query": " ".join(r["query"].split())[:160],
                "calls": r["calls"],
                "per_event": round(r["calls"] / events, 3) if events else None,
                "total_ms": round(r["total_exec_time"], 1),
            }

        return {
            "events": events,
            "statements": calls,
            "statements_per_event": round(calls / events, 2) if events else None,
            "db_exec_ms_per_event": round(execution / events, 3) if events else None,
            "by_time": [brief(r) for r in costly],
            "by_calls": [brief(r) for r in frequent],
        }


def py_spy() -> str | None:
    for candidate in PY_SPY_CANDIDATES:
        if candidate.exists():
            return str(candidate)
    return shutil.which("py-spy")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class CpuProfile:
    """`py-spy record --format raw` of one process until `stop()`, then a summary; also the
    process's CPU seconds over the same span (/proc), so CPU-bound and waiting tell apart.

    With ``sample=False`` only the CPU seconds: py-spy takes CPU from the machine it measures
    (0.07 ms per order at saturation, 6% of the run's CPU), so steps whose figures are reported
    run without it.
    """

    def __init__(self, pid: int, output: Path, rate: int = 50, *, sample: bool = True) -> None:
        self.output = output
        self.pid = pid
        self.cpu_at_start = cpu_seconds(pid)
        self.wall_at_start = time.monotonic()
        self.process: subprocess.Popen[bytes] | None = None
        binary = py_spy() if sample else None
        if binary is None:
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--output",
                str(output),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.started = time.monotonic()

    def stop(self) -> dict[str, Any] | None:
        used = cpu_seconds(self.pid)
        wall = time.monotonic() - self.wall_at_start
        usage = {
            "cpu_s": round(used - self.cpu_at_start, 2)
            if used is not None and self.cpu_at_start is not None
            else None,
            "wall_s": round(wall, 2),
        }
        if self.process is None:
            return usage
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return {"error": "py-spy did not stop"}
        if not self.output.exists():
            return {**usage, "error": err.decode()[-500:]}
        return {**usage, **summarise(self.output)}


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (module/file.py:line)"; keep function and file, drop the line.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})"


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Total samples, and the functions holding most samples: inclusive and self."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            count = int(count_text)
            frames = [_frame_name(f) for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            for name in set(frames):
                inclusive[name] += count
            own[frames[-1]] += count
            # The innermost frame of our own code: which of our functions the time is spent under.
            for name in reversed(frames):
                if ("(services/" in name or "(shared/" in name) and not name.startswith(
                    ("serve (", "main (", "<module> (")
                ):
                    ours[name] += count
                    break

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return (
            [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]
            if total
            else []
        )

    return {
        "samples": total,
        "inclusive_pct": share(inclusive),
        "self_pct": share(own),
        "our_code_pct": share(ours),
        "raw": str(path),
    }


def jvm_compiler_cpu_s() -> float:
    """CPU seconds so far of the JIT compiler threads ("C1/C2 CompilerThread<n>") of every JVM
    this process started (the Kafka broker): how much of the broker's work is still warming up."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError):
            if process.name() != "java":
                continue
            tasks = Path(f"/proc/{process.pid}/task")
            for task in tasks.iterdir():
                with contextlib.suppress(OSError):
                    if not (task / "comm").read_text().startswith(("C1 Compiler", "C2 Compiler")):
                        continue
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _tree_cpu(labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of this process and everything it started, summed by component."""
    by_label: collections.Counter[str] = collections.Counter()
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            name = process.name()
            label = labels.get(process.pid) or (
                "harness"
                if process.pid == me.pid
                else "postgres"
                if name.startswith("postgres")
                else "kafka"
                if name == "java"
                else name
            )
            by_label[label] += times.user + times.system
    return dict(by_label)


class MachineCpu:
    """Where the machine's CPU went over a measurement: per component of the bench (services,
    PostgreSQL, Kafka, py-spy, the harness itself) and outside it (other jobs on the machine),
    so a saturation is told apart from a noisy neighbour and the costliest component is named."""

    def __init__(self, labels: dict[int, str]) -> None:
        self.labels = labels
        self.at_start = _tree_cpu(labels)
        self.machine_at_start = psutil.cpu_times()
        self.wall_at_start = time.monotonic()

    def stop(self, events: int) -> dict[str, Any]:
        used = _tree_cpu(self.labels)
        machine = psutil.cpu_times()
        wall = time.monotonic() - self.wall_at_start
        spent = {k: v - self.at_start.get(k, 0.0) for k, v in used.items()}
        busy = sum(
            getattr(machine, f) - getattr(self.machine_at_start, f)
            for f in ("user", "system", "nice", "irq", "softirq", "steal")
            if hasattr(machine, f)
        )
        ours = sum(spent.values())
        return {
            "wall_s": round(wall, 2),
            "cores": psutil.cpu_count(),
            "busy_pct": round(100 * busy / (wall * (psutil.cpu_count() or 1)), 1),
            "bench_cpu_s": round(ours, 2),
            "outside_bench_cpu_s": round(max(0.0, busy - ours), 2),
            "ms_per_event": {
                k: round(1000 * v / max(1, events), 3)
                for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
                if v > 0.005
            },
        }


@dataclass
class Observation:
    stats: Any
    profiles: dict[str, Any]
    machine: MachineCpu | None = None

    async def finish(self, events: int) -> dict[str, Any]:
        from shared.platform import DATABASES

        out: dict[str, Any] = {}
        if self.machine is not None:
            out["machine"] = self.machine.stop(events)
        for service, profile in self.profiles.items():
            out[service] = {"cpu": profile.stop()}
        if self.stats is not None:
            for service in self.profiles:
                out[service]["db"] = await self.stats.read(DATABASES[service], events)
        return out


def diagnosis(observed: dict[str, Any]) -> str:
    """One line per service: statements per event and the hottest function of our code."""
    lines = []
    machine = observed.get("machine")
    if machine:
        spent = ", ".join(f"{k} {v:.2f}" for k, v in machine["ms_per_event"].items())
        lines.append(
            f"      machine: {machine['busy_pct']}% busy over {machine['cores']} cores "
            f"({machine['outside_bench_cpu_s']} CPU-s outside the bench); "
            f"CPU ms/event: {spent}"
        )
    for service, found in observed.items():
        if service == "machine":
            continue
        db = found.get("db") or {}
        cpu = found.get("cpu") or {}
        hot = ", ".join(f"{n} {p}%" for n, p in (cpu.get("our_code_pct") or [])[:3])
        events = db.get("events") or 0
        cpu_s = cpu.get("cpu_s")
        per_event = (
            f"{1000 * cpu_s / events:.2f} ms CPU/event" if cpu_s is not None and events else "--"
        )
        busy = (
            f"{100 * cpu_s / cpu['wall_s']:.0f}% of a core"
            if cpu_s is not None and cpu.get("wall_s")
            else "--"
        )
        lines.append(
            f"      {service}: {db.get('statements_per_event')} SQL statements/event, "
            f"{db.get('db_exec_ms_per_event')} ms DB/event, {per_event} ({busy})"
            + (f"; CPU in: {hot}" if hot else "")
        )
    return "\n".join(lines)
