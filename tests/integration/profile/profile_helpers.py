"""Helpers of the profile integration tests (import as integration.profile.profile_helpers)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import auth

from services.profile.config import ProfileSettings

WRITER = auth("customers:read", "customers:write", subject="clerk")
READER = auth("customers:read", subject="viewer")
PII_READER = auth("customers:read", "pii:read", subject="auditor-1")


@dataclass
class Profile:
    client: httpx.AsyncClient
    settings: ProfileSettings
    engine: AsyncEngine
    bootstrap: str

    async def register(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "Jane Doe", "email": f"{uuid.uuid4().hex[:12]}@example.com", **fields}
        response = await self.client.post("/v1/customers", json=body, headers=WRITER)
        assert response.status_code == 201, response.text
        customer = dict(response.json())
        customer["sent"] = body  # what was sent: the answer masks personal fields
        return customer


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Row[Any]]:
    """The rows of one query on the service's database."""
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def read_events(
    bootstrap: str,
    topic: str,
    *,
    subject: str,
    want: int,
    types: set[str] | None = None,
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """CloudEvents on `topic` about `subject` (from the beginning), once `want` have arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(found) < want:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.key != subject.encode():
                        continue
                    event = orjson.loads(record.value)
                    if types is None or event["type"] in types:
                        found.append(event)
        # A short grace period shows whether more than wanted arrive (e.g. a duplicate event).
        await asyncio.sleep(0.3)
        for records in (await consumer.getmany(timeout_ms=300)).values():
            for record in records:
                if record.key == subject.encode():
                    event = orjson.loads(record.value)
                    if types is None or event["type"] in types:
                        found.append(event)
    finally:
        await consumer.stop()
    return found


async def produce(bootstrap: str, topic: str, value: bytes, key: str | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key.encode() if key else None)
    finally:
        await producer.stop()
