"""`Idempotency-Key` for retried writes: the first response is stored in the same transaction as
the write, and a retry with the same key and the same request gets it back (no second effect).

A concurrent retry blocks on the key's primary key until the first transaction ends, then reads
its stored response. The same key with a different request body is a 422.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import InvalidInput
from shared.messaging.tables import MessagingTables

IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: Any
    replayed: bool


def fingerprint(payload: Any) -> str:
    try:
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:
        # orjson refuses integers past 64 bits and lone surrogates (JSON's `"\\udfff"`), both
        # valid JSON a client may send; the request's own rules decide on them after this.
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(canonical).hexdigest()


async def run_once(
    session: AsyncSession,
    tables: MessagingTables,
    *,
    scope: str,
    key: str,
    request: Any,
    action: Callable[[], Awaitable[tuple[int, Any]]],
) -> StoredResponse:
    """Run `action` once per (scope, key); `action` returns (status, JSON-able body)."""
    if not 1 <= len(key) <= 200:
        raise InvalidInput.field("header.idempotency-key", "must be 1 to 200 characters")
    table = tables.idempotency
    request_hash = fingerprint(request)
    claimed = await session.execute(
        pg_insert(table)
        .values(scope=scope, key=key, request_hash=request_hash)
        .on_conflict_do_nothing()
        .returning(table.c.key)
    )
    if claimed.first() is None:
        row = (
            await session.execute(
                select(table.c.request_hash, table.c.status_code, table.c.response).where(
                    table.c.scope == scope, table.c.key == key
                )
            )
        ).one()
        if row.request_hash != request_hash:
            raise InvalidInput.field(
                "header.idempotency-key", "already used for a different request; use a new key"
            )
        return StoredResponse(row.status_code, row.response, replayed=True)
    status_code, body = await action()
    await session.execute(
        update(table)
        .where(table.c.scope == scope, table.c.key == key)
        .values(status_code=status_code, response=body)
    )
    return StoredResponse(status_code, body, replayed=False)
