"""The messaging tables every service database has: outbox, inbox, idempotency keys.

Each service calls `messaging_tables(Base.metadata)` in its models.py so that Alembic sees them,
and its first migration calls `create_messaging_tables(op)` (see shared/messaging/migration.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

OUTBOX_CHANNEL = "crm_outbox"


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    inbox: Table
    idempotency: Table


def messaging_tables(metadata: MetaData) -> MessagingTables:
    if "outbox" in metadata.tables:
        t = metadata.tables
        return MessagingTables(t["outbox"], t["inbox"], t["idempotency_keys"])
    outbox = Table(
        "outbox",
        metadata,
        # Identity order = commit order per customer, because writers lock the customer first.
        Column("id", BigInteger, Identity(always=True), primary_key=True),
        Column("event_id", UUID(as_uuid=True), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("attempts", Integer, nullable=False, server_default="0"),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", UUID(as_uuid=True), primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_inbox_processed_at", "processed_at"),
    )
    idempotency = Table(
        "idempotency_keys",
        metadata,
        Column("scope", String(300), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("status_code", Integer, nullable=True),
        Column("response", JSONB, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )
    return MessagingTables(outbox, inbox, idempotency)


NOTIFY_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION crm_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{OUTBOX_CHANNEL}', '');
  RETURN NULL;
END $$;
"""
NOTIFY_TRIGGER_SQL = """
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION crm_outbox_notify();
"""
