"""ORM models of the lifecycle database."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)


class CustomerStage(Base):
    __tablename__ = "customer_stages"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
REPLAY_TABLES = ["customer_stages"]
