"""ORM models of the complaints database."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)

Timestamp = DateTime(timezone=True)


class KnownCustomer(Base):
    """Local projection of customers (crm.customer.*) and their value tier (crm.value.*)."""

    __tablename__ = "known_customers"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # Tier events can arrive before the registration (another topic): a row alone is not a customer.
    known: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    tier: Mapped[str | None] = mapped_column(String(20))
    tier_as_of: Mapped[datetime | None] = mapped_column(Timestamp)
    erased_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Complaint(Base):
    __tablename__ = "complaints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    channel: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(20))
    severity: Mapped[str] = mapped_column(String(20))
    tier_at_intake: Mapped[str | None] = mapped_column(String(20))
    order_id: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(300))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(30))
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    first_response_due: Mapped[datetime] = mapped_column(Timestamp)
    resolution_due: Mapped[datetime] = mapped_column(Timestamp)
    # Resolution due counting finished pauses; with paused_since it answers "breached?" in SQL.
    resolution_due_effective: Mapped[datetime] = mapped_column(Timestamp)
    paused_since: Mapped[datetime | None] = mapped_column(Timestamp)
    pauses: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(Timestamp)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)
    closed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    root_cause: Mapped[str | None] = mapped_column(String(50))
    satisfaction: Mapped[int | None] = mapped_column(SmallInteger)
    reopen_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    escalation_level: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    # When the SLA checker must look again (domain.next_sla_check); null: not until the next step.
    next_sla_check_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_step_at: Mapped[datetime] = mapped_column(Timestamp)
    opened_by: Mapped[str] = mapped_column(String(200))
    anonymised_at: Mapped[datetime | None] = mapped_column(Timestamp)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint("satisfaction BETWEEN 1 AND 5", name="satisfaction_range"),
        CheckConstraint("escalation_level BETWEEN 0 AND 3", name="escalation_level_range"),
        Index("ix_complaints_customer_id_received_at", "customer_id", "received_at"),
        Index("ix_complaints_received_at_id", "received_at", "id"),
        Index("ix_complaints_status", "status"),
        Index(
            "ix_complaints_next_sla_check_at_id",
            "next_sla_check_at",
            "id",
            postgresql_where=text("next_sla_check_at IS NOT NULL"),
        ),
    )


class ComplaintStep(Base):
    """Every step of a complaint: who, when, from which status to which, with its note."""

    __tablename__ = "complaint_steps"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    complaint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("complaints.id", ondelete="CASCADE")
    )
    action: Mapped[str] = mapped_column(String(30))
    from_status: Mapped[str | None] = mapped_column(String(30))
    to_status: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(Timestamp)
    note: Mapped[str | None] = mapped_column(Text)
    facts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    # none_as_null: erased text must be SQL NULL, not the JSON value null
    texts: Mapped[dict[str, str] | None] = mapped_column(JSONB(none_as_null=True))

    __table_args__ = (Index("ix_complaint_steps_complaint_id_id", "complaint_id", "id"),)


class ComplaintEscalation(Base):
    """One row per level reached: the primary key makes each level happen at most once."""

    __tablename__ = "complaint_escalations"

    complaint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("complaints.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(Timestamp)
    actor: Mapped[str | None] = mapped_column(String(200))


class PolicyDocument(Base):
    """The complaint policy (SLA targets, root causes): one row, versioned for If-Match."""

    __tablename__ = "complaint_policy"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_by: Mapped[str] = mapped_column(String(200))


REPLAY_TABLES = ["known_customers"]
