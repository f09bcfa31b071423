"""The HTTP baseline: a minimal FastAPI + asyncpg app on one uvicorn worker, same machine.

- `GET /customers/{id}`: one primary-key query on the profile database's `customers` table
  (the same rows the 360 view reads), serialised once with orjson;
- `POST /complaints`: a validated body, one transaction inserting the row and an outbox row
  (the least a complaint intake of our design must do), in the bench database.

`python baseline_app.py PORT PROFILE_DSN BENCH_DSN`; loopback only.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, Field

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_complaints (
  id uuid PRIMARY KEY, customer_id uuid NOT NULL, channel text NOT NULL, category text NOT NULL,
  severity text NOT NULL, subject text NOT NULL, description text NOT NULL,
  received_at timestamptz NOT NULL, status text NOT NULL DEFAULT 'received');
CREATE TABLE IF NOT EXISTS outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL, topic text NOT NULL,
  key text NOT NULL, payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""


class ComplaintIn(BaseModel):
    customer_id: uuid.UUID
    channel: Literal["phone", "email", "web", "store", "social", "other"]
    category: Literal["product", "service", "delivery", "billing", "other"]
    severity: Literal["low", "medium", "high", "critical"]
    subject: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=10_000)


def create_app(profile_dsn: str, bench_dsn: str) -> FastAPI:
    pools: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pools["profile"] = await asyncpg.create_pool(profile_dsn, min_size=2, max_size=10)
        pools["bench"] = await asyncpg.create_pool(bench_dsn, min_size=2, max_size=10)
        async with pools["bench"].acquire() as connection:
            await connection.execute(SCHEMA)
        yield
        for pool in pools.values():
            await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/customers/{customer_id}")
    async def read_customer(customer_id: uuid.UUID) -> Response:
        row = await pools["profile"].fetchrow("SELECT * FROM customers WHERE id = $1", customer_id)
        if row is None:
            raise HTTPException(404)
        return Response(orjson.dumps(dict(row), default=str), media_type="application/json")

    @app.post("/complaints", status_code=201)
    async def open_complaint(body: ComplaintIn) -> Response:
        complaint_id = uuid.uuid4()
        now = datetime.now(UTC)
        async with pools["bench"].acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO baseline_complaints (id, customer_id, channel, category, severity, "
                "subject, description, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                complaint_id,
                body.customer_id,
                body.channel,
                body.category,
                body.severity,
                body.subject,
                body.description,
                now,
            )
            payload = orjson.dumps(
                {"complaint_id": str(complaint_id), "customer_id": str(body.customer_id)}
            )
            await connection.execute(
                "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4)",
                uuid.uuid4(),
                "crm.complaints.v1",
                str(body.customer_id),
                payload,
            )
        return Response(
            orjson.dumps({"id": str(complaint_id), "status": "received"}),
            status_code=201,
            media_type="application/json",
        )

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    port, profile, bench = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(
        create_app(profile, bench), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
