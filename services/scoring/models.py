"""ORM models of the scoring database."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, Numeric
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)


class CustomerAggregate(Base):
    __tablename__ = "customer_aggregates"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    order_count: Mapped[int] = mapped_column(default=0)
    net_revenue: Mapped[Decimal] = mapped_column(Numeric(18, 4), default=Decimal(0))
    first_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


REPLAY_TABLES = ["customer_aggregates"]
