"""A bounded HTTP/1.1 load generator, run in its own process (`python loadgen.py SPEC.json`).

Keep-alive connections on uvloop with a hand-rolled HTTP/1.1 exchange (no client library
on the hot path: on a 2-core machine the generator must cost far less than the server).

- closed loop (`rate` null): `connections` workers send back to back: the peak rate;
- open loop (`rate` r/s): request i is due at t0 + i/r; its latency counts from when it was
  due, not when a free connection sent it (no coordinated omission, as wrk2 does).

Bounded by `duration` seconds and by the number of requests in the file; loopback only.
Writes a JSON summary to stdout (and, with `acks`, each request's index and the epoch time
of its response, for latency matching against events).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    acks: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: int = 0


def render(
    host: str, port: int, method: str, path: str, body: str | None, headers: dict[str, str]
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    payload = body.encode() if body is not None else b""
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one request, read one response (Content-Length or chunked); return the status."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    marker = lower.find(b"\r\ncontent-length:")
    if marker >= 0:
        end = lower.index(b"\r\n", marker + 2)
        length = int(lower[marker + 17 : end])
        if length:
            await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], int(spec["port"])
    if host not in LOOPBACK:
        raise SystemExit(f"refusing non-loopback host {host!r}")
    requests: list[list[Any]] = json.loads(Path(spec["requests"]).read_text())  # noqa: ASYNC240 - before any load
    headers: dict[str, str] = spec.get("headers", {})
    raw = [render(host, port, m, p, b, headers) for m, p, b in requests]
    rate: float | None = spec.get("rate")
    duration = float(spec["duration"])
    connections = int(spec.get("connections", 16))
    cycle = bool(spec.get("cycle", False))
    record_acks = bool(spec.get("acks", False))
    warmup = float(spec.get("warmup", 0.0))
    outcome = Outcome()
    position = 0
    t0 = time.perf_counter() + 0.05
    deadline = t0 + duration + warmup
    measured_from = t0 + warmup

    def next_index() -> int | None:
        nonlocal position
        if position >= len(raw) and not cycle:
            return None
        index = position
        position += 1
        return index

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                index = next_index()
                if index is None:
                    return
                if rate is not None:
                    due = t0 + index / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    due = time.perf_counter()
                if due >= deadline:
                    return
                try:
                    status = await exchange(reader, writer, raw[index % len(raw)])
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    outcome.errors.append(repr(error))
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                done = time.perf_counter()
                if due >= measured_from:
                    outcome.sent += 1
                    outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
                    outcome.latencies_ms.append((done - due) * 1000)
                if record_acks and 200 <= status < 300:
                    outcome.acks.append((index % len(raw), time.time()))
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.wait(workers, timeout=duration + warmup + 30)
    for task in workers:
        task.cancel()
    elapsed = min(time.perf_counter(), deadline) - measured_from
    latencies = sorted(outcome.latencies_ms)

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    ok = sum(n for s, n in outcome.statuses.items() if 200 <= s < 300)
    return {
        "sent": outcome.sent,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(outcome.statuses.items())},
        "errors": len(outcome.errors),
        "first_errors": outcome.errors[:3],
        "elapsed_s": elapsed,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "offered_rps": rate,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] if latencies else None,
        "acks": outcome.acks if record_acks else None,
    }


def write_json_stdout(document: Any) -> None:
    """The result for `common.run_json`, whole: after uvloop ran, one write to the pipe took
    only what the pipe held (64 KiB) and the rest was lost without an error; loop until done."""
    view = memoryview(json.dumps(document).encode())
    while view:
        view = view[os.write(sys.stdout.fileno(), view) :]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works, only slower
        pass
    result = asyncio.run(run(spec))
    write_json_stdout(result)


if __name__ == "__main__":
    main()
