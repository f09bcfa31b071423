"""Baselines measured in the same run, each in its own process (one core, like a service):

- `raw`: aiokafka consume of the messages, nothing else (the broker + client limit);
- `batched`: the practical limit of our design: per batch of up to 500 messages, one
  transaction on the same PostgreSQL with an inbox insert, one set-based upsert of a
  per-customer aggregate and an outbox insert, offsets committed after the commit.

`python baselines.py raw|batched SPEC_JSON` prints {"count", "first", "last"} (epoch seconds of
the first and last message handled). Bounded by `count` and `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
  event_id uuid PRIMARY KEY, event_type text NOT NULL, processed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS customer_totals (
  customer_ref text PRIMARY KEY, orders integer NOT NULL, revenue numeric(18, 4) NOT NULL,
  last_order_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL, topic text NOT NULL,
  key text NOT NULL, payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""

_UPSERT = """
INSERT INTO customer_totals AS t (customer_ref, orders, revenue, last_order_at)
SELECT ref, count(*), sum(amount), max(at)
FROM unnest($1::text[], $2::numeric[], $3::timestamptz[]) AS u(ref, amount, at)
GROUP BY ref
ON CONFLICT (customer_ref) DO UPDATE SET
  orders = t.orders + excluded.orders,
  revenue = t.revenue + excluded.revenue,
  last_order_at = greatest(t.last_order_at, excluded.last_order_at)
"""
_NAMESPACE = uuid.UUID("1d3c6a52-7a0e-4d44-9a5c-1b7f0e6f2b10")


def _consumer(spec: dict[str, Any]) -> AIOKafkaConsumer:
    names = spec.get("topics") or [spec["topic"]]
    return AIOKafkaConsumer(
        *names,
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=int(spec.get("batch_size", 500)),
        fetch_max_wait_ms=50,
        isolation_level="read_committed",
    )


async def raw(spec: dict[str, Any]) -> dict[str, Any]:
    """Consume `count` messages, or (count null) until `idle` seconds pass without any."""
    consumer = _consumer(spec)
    await consumer.start()
    wanted = spec.get("count")
    idle = float(spec.get("idle", 3.0))
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + float(spec["timeout"])
    try:
        while (wanted is None or seen < int(wanted)) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                seen += len(records)
            if batch:
                last = time.time()
                first = first or last
                await consumer.commit()
            elif wanted is None and first and time.time() - last > idle:
                break
    finally:
        await consumer.stop()
    return {"count": seen, "first": first, "last": last}


async def batched(spec: dict[str, Any]) -> dict[str, Any]:
    connection = await asyncpg.connect(spec["dsn"])
    await connection.execute(SCHEMA)
    consumer = _consumer(spec)
    await consumer.start()
    wanted, seen = int(spec["count"]), 0
    first = last = 0.0
    deadline = time.monotonic() + float(spec["timeout"])
    try:
        while seen < wanted and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            ids, refs, amounts, times, payloads = [], [], [], [], []
            for r in records:
                order = orjson.loads(r.value or b"{}")
                ids.append(uuid.uuid5(_NAMESPACE, f"{r.topic}/{r.partition}/{r.offset}"))
                refs.append(order["external_ref"])
                amounts.append(Decimal(order["amount"]))
                times.append(_parse_time(order["occurred_at"]))
                payloads.append(
                    orjson.dumps({"order_id": order["order_id"], "amount": order["amount"]})
                )
            async with connection.transaction():
                fresh = await connection.fetch(
                    "INSERT INTO inbox (event_id, event_type) SELECT unnest($1::uuid[]), 'order' "
                    "ON CONFLICT DO NOTHING RETURNING event_id",
                    ids,
                )
                keep = {row["event_id"] for row in fresh}
                chosen = [i for i, event_id in enumerate(ids) if event_id in keep]
                await connection.execute(
                    _UPSERT,
                    [refs[i] for i in chosen],
                    [amounts[i] for i in chosen],
                    [times[i] for i in chosen],
                )
                await connection.execute(
                    "INSERT INTO outbox (event_id, topic, key, payload) "
                    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])",
                    [ids[i] for i in chosen],
                    ["crm.purchases.v1"] * len(chosen),
                    [refs[i] for i in chosen],
                    [payloads[i] for i in chosen],
                )
            await consumer.commit()
            seen += len(records)
            last = time.time()
            first = first or last
    finally:
        await consumer.stop()
        await connection.close()
    return {"count": seen, "first": first, "last": last}


def _parse_time(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_json_stdout(document: Any) -> None:
    """The result for `common.run_json`, whole: after uvloop ran, one write to the pipe took
    only what the pipe held (64 KiB) and the rest was lost without an error; loop until done."""
    view = memoryview(json.dumps(document).encode())
    while view:
        view = view[os.write(sys.stdout.fileno(), view) :]


def main() -> None:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works, only slower
        pass
    result = asyncio.run(raw(spec) if mode == "raw" else batched(spec))
    write_json_stdout(result)


if __name__ == "__main__":
    main()
