"""ORM models of the complaints database."""

from __future__ import annotations

import uuid

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)


class KnownCustomer(Base):
    """Local projection of customers (from crm.customer.* and crm.value.* events)."""

    __tablename__ = "known_customers"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tier: Mapped[str | None] = mapped_column(String(20))
REPLAY_TABLES = ["known_customers"]
