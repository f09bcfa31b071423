"""Retention of the messaging tables: inbox rows and idempotency keys past their time are deleted.

The inbox only has to remember an event while Kafka could still redeliver it, and an
idempotency key only while a client could still retry its request; kept forever, both grow with
every event and every keyed write. The worker runs `prune_messaging_tables` periodically, on
one replica (see `ServiceRuntime.spawn_worker`).

Deletes go in chunks, each its own short transaction found through the age index, so that no
statement holds many row locks or a long snapshot while consumers and the API write beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import utc
from shared.messaging.tables import MessagingTables
from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger(__name__)

# Rows per delete statement: a transaction of tens of milliseconds.
CHUNK_ROWS = 10_000
# Rows per table and run: bounds one run (a first run on a database never pruned before); the
# rest goes in the next runs. At 1,000 orders/s an inbox gains a few million rows per 10 minutes.
MAX_ROWS_PER_RUN = 5_000_000
# A long run logs its progress every this many chunks.
PROGRESS_EVERY_CHUNKS = 10


@dataclass(frozen=True)
class PruneResult:
    inbox: int
    idempotency_keys: int
    capped: bool  # a table had more to prune than one run's cap: the next run goes on


async def prune_messaging_tables(
    *,
    engine: AsyncEngine,
    tables: MessagingTables,
    service: str,
    now: datetime,
    inbox_retention: timedelta,
    idempotency_retention: timedelta,
    chunk_size: int = CHUNK_ROWS,
    max_rows_per_table: int = MAX_ROWS_PER_RUN,
) -> PruneResult:
    """Delete inbox rows processed before `now - inbox_retention` and idempotency keys created
    before `now - idempotency_retention`, oldest first."""
    if chunk_size < 1 or max_rows_per_table < 1:
        raise ValueError("chunk_size and max_rows_per_table must be at least 1")
    now = utc(now)
    inbox, inbox_capped = await _prune(
        engine,
        service=service,
        table=tables.inbox.name,
        age_column="processed_at",
        cutoff=now - inbox_retention,
        chunk_size=chunk_size,
        max_rows=max_rows_per_table,
    )
    keys, keys_capped = await _prune(
        engine,
        service=service,
        table=tables.idempotency.name,
        age_column="created_at",
        cutoff=now - idempotency_retention,
        chunk_size=chunk_size,
        max_rows=max_rows_per_table,
    )
    return PruneResult(inbox=inbox, idempotency_keys=keys, capped=inbox_capped or keys_capped)


def _chunk_sql(table: str, age_column: str) -> str:
    # The oldest rows through the age index, deleted by their row address (a TID scan: a join on
    # the key makes the planner scan the whole table for large ones). SKIP LOCKED: a row someone
    # holds waits for the next run.
    return (
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {table} WHERE {age_column} < :cutoff "
        f"ORDER BY {age_column} LIMIT :limit FOR UPDATE SKIP LOCKED))"
    )


async def _prune(
    engine: AsyncEngine,
    *,
    service: str,
    table: str,
    age_column: str,
    cutoff: datetime,
    chunk_size: int,
    max_rows: int,
) -> tuple[int, bool]:
    """Delete chunk after chunk until one comes back short or the cap is reached: (rows, capped)."""
    statement = text(_chunk_sql(table, age_column))
    pruned = metrics.MESSAGING_ROWS_PRUNED.labels(service, table)
    total = chunks = 0
    while total < max_rows:
        limit = min(chunk_size, max_rows - total)
        async with engine.begin() as conn:
            deleted = (await conn.execute(statement, {"cutoff": cutoff, "limit": limit})).rowcount
        total += deleted
        chunks += 1
        pruned.inc(deleted)
        if deleted < limit:
            break
        if chunks % PROGRESS_EVERY_CHUNKS == 0:
            log.info("messaging.prune_progress", table=table, deleted=total)
    capped = total >= max_rows
    if capped:
        log.warning("messaging.prune_capped", table=table, deleted=total, cutoff=cutoff.isoformat())
    elif total:
        log.info("messaging.pruned", table=table, deleted=total, cutoff=cutoff.isoformat())
    return total, capped
