"""Helpers for each service's first Alembic migration."""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData

from shared.messaging.tables import NOTIFY_FUNCTION_SQL, NOTIFY_TRIGGER_SQL, messaging_tables


def create_messaging_tables(op: Any) -> None:
    """Create outbox (with its NOTIFY-on-commit trigger), inbox and idempotency_keys."""
    tables = messaging_tables(MetaData())
    bind = op.get_bind()
    for table in (tables.outbox, tables.inbox, tables.idempotency):
        table.create(bind)
    op.execute(NOTIFY_FUNCTION_SQL)
    op.execute(NOTIFY_TRIGGER_SQL)


def drop_messaging_tables(op: Any) -> None:
    op.execute("DROP TABLE IF EXISTS outbox, inbox, idempotency_keys CASCADE")
    op.execute("DROP FUNCTION IF EXISTS crm_outbox_notify()")
