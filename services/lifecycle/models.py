"""ORM models of the lifecycle database: current stage per customer, stage history, policy."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)

Timestamp = DateTime(timezone=True)


class CustomerLifecycleRow(Base):
    """One customer's lifecycle state (domain.CustomerLifecycle) plus the sweep's due columns.

    The stage and what the set-based sweep touches are columns; so are the facts derived from
    all the customer's orders (``domain.OrderFacts``), kept up to date order by order so that
    a purchase does not read them all. The orders themselves are rows of ``lifecycle_orders``;
    the rest the decision functions read (pending refunds, complaints, remembered low scores) is
    ``facts`` (JSONB).
    """

    __tablename__ = "customer_lifecycles"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20))
    since: Mapped[datetime] = mapped_column(Timestamp)
    reason: Mapped[str] = mapped_column(String(30))
    registered_at: Mapped[datetime] = mapped_column(Timestamp)
    stage_before_decline: Mapped[str | None] = mapped_column(String(20))
    decline_causes: Mapped[list[str]] = mapped_column(
        ARRAY(String(100)), server_default=text("'{}'")
    )
    # Inputs of domain.due_times_for, kept so a policy change recomputes the due columns alone.
    idle_since: Mapped[datetime] = mapped_column(Timestamp)
    gap_days: Mapped[float] = mapped_column(Float)
    decline_due_at: Mapped[datetime | None] = mapped_column(Timestamp)
    churn_due_at: Mapped[datetime | None] = mapped_column(Timestamp)
    facts: Mapped[dict[str, Any]] = mapped_column(JSONB)
    purchase_days: Mapped[list[date]] = mapped_column(ARRAY(Date), server_default=text("'{}'"))
    first_purchase_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_purchase_at: Mapped[datetime | None] = mapped_column(Timestamp)
    latest_order_at: Mapped[datetime | None] = mapped_column(Timestamp)
    relationship_start: Mapped[datetime | None] = mapped_column(Timestamp)
    # The policy version relationship_start was computed under (None: to be computed).
    relationship_policy_version: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        # The sweep reads these in due order; partial, so settled customers cost nothing.
        Index(
            "ix_customer_lifecycles_decline_due",
            "decline_due_at",
            postgresql_where=text("decline_due_at IS NOT NULL"),
        ),
        Index(
            "ix_customer_lifecycles_churn_due",
            "churn_due_at",
            postgresql_where=text("churn_due_at IS NOT NULL"),
        ),
    )


class LifecycleOrder(Base):
    """One order the lifecycle knows of a customer, and how much of it was refunded."""

    __tablename__ = "lifecycle_orders"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    placed_at: Mapped[datetime] = mapped_column(Timestamp)
    amount: Mapped[Decimal] = mapped_column(Numeric)
    refunded: Mapped[Decimal] = mapped_column(Numeric)


class StageTransition(Base):
    """Every stage change: from, to, reason, what caused it and its business time."""

    __tablename__ = "stage_transitions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(30))
    trigger: Mapped[str] = mapped_column(String(30))
    at: Mapped[datetime] = mapped_column(Timestamp)
    causing_event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    evaluation_run_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    recorded_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        Index("ix_stage_transitions_customer_id_at", "customer_id", "at", "id"),
        Index("ix_stage_transitions_at", "at"),
    )


class EarlyLowScore(Base):
    """A P(alive) below the policy's model-churn threshold for a customer without a lifecycle
    yet (the score's topic ran ahead): taken into their state by their first lifecycle event,
    where in business order it may churn them (``domain.with_low_scores``)."""

    __tablename__ = "early_low_scores"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    scored_at: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    p_alive: Mapped[float] = mapped_column(Float)
    # Wall clock: a score whose customer never comes is deleted after the retention.
    remembered_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), index=True
    )


class ErasedCustomer(Base):
    """Tombstones: events that arrive after an erasure must not bring the customer back."""

    __tablename__ = "erased_customers"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(Timestamp)


class PolicyVersion(Base):
    """Every lifecycle policy ever set; the highest version is in force."""

    __tablename__ = "lifecycle_policies"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB)
    changed_at: Mapped[datetime] = mapped_column(Timestamp)
    changed_by: Mapped[str] = mapped_column(String(200))


class EvaluationRun(Base):
    """One run of the time rules: the scheduled sweep, or `POST /v1/lifecycle/evaluate` (waited
    on, or run by the worker when asked with `Prefer: respond-async`).

    Written when the run starts (or is asked for) and again in each chunk's transaction, so its
    counts are always those of the moves committed; the process running it holds a session
    advisory lock on the run (`run_lock_key`) for as long as it runs.
    """

    __tablename__ = "evaluation_runs"
    __table_args__ = (
        Index("ix_evaluation_runs_status_requested_at", "status", "requested_at"),
        Index("ix_evaluation_runs_requested_at_run_id", "requested_at", "run_id"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # pending, running, succeeded, failed
    trigger: Mapped[str] = mapped_column(String(20))  # schedule, request, async_request
    as_of: Mapped[datetime] = mapped_column(Timestamp)
    requested_at: Mapped[datetime] = mapped_column(Timestamp)
    requested_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    policy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moved: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    chunks: Mapped[int] = mapped_column(Integer, server_default="0")
    last_pass: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(String, nullable=True)


# State rebuilt by `crm replay lifecycle` (policies and evaluation runs are not in the log).
REPLAY_TABLES = [
    "customer_lifecycles",
    "lifecycle_orders",
    "stage_transitions",
    "erased_customers",
    "early_low_scores",
]
