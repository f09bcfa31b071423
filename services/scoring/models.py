"""ORM models of the scoring database: the purchase and complaint ledgers fed by events, the
current value of every customer, fitted model versions, the model policy and recompute runs."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import make_metadata
from shared.messaging.tables import messaging_tables

MONEY = Numeric(18, 4)


class Base(DeclarativeBase):
    metadata = make_metadata()


MESSAGING = messaging_tables(Base.metadata)


class Purchase(Base):
    """One recorded purchase; `purchase_day` is its UTC calendar day (one transaction per day)."""

    __tablename__ = "purchases"
    __table_args__ = (
        Index("ix_purchases_customer_id_purchased_at", "customer_id", "purchased_at"),
    )

    purchase_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    order_id: Mapped[str] = mapped_column(String(200))
    purchased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    purchase_day: Mapped[date] = mapped_column(Date)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    categories: Mapped[list[str]] = mapped_column(ARRAY(String(100)), server_default="{}")


class Refund(Base):
    __tablename__ = "refunds"

    refund_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    purchase_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    refunded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    chargeback: Mapped[bool] = mapped_column(Boolean, server_default="false")


class Complaint(Base):
    """A complaint as far as loyalty cares: open or closed, and the CSAT given at closing."""

    __tablename__ = "complaints"

    complaint_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    satisfaction: Mapped[int | None] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(30))
    status_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Referral(Base):
    """The referred customer (key) and who referred them."""

    __tablename__ = "referrals"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    referrer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ErasedCustomer(Base):
    """Tombstone (an id only) so that late events cannot bring an erased customer back."""

    __tablename__ = "erased_customers"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerSummary(Base):
    """What a customer's purchases add up to at `as_of`, refunds aside (`domain.ledger`):
    a handler reads what happened since instead of the whole history. Instants in Unix
    microseconds, days since 1970-01-01, money in ten-thousandths, categories as hashtext.

    A purchase recorded at or before `as_of` (late) deletes the summary: the next read is of
    the whole history, which writes a new one.
    """

    __tablename__ = "ledger_summaries"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    orders: Mapped[int] = mapped_column(BigInteger)
    first_purchase_us: Mapped[int] = mapped_column(BigInteger)
    last_purchase_us: Mapped[int] = mapped_column(BigInteger)
    gross: Mapped[int] = mapped_column(BigInteger)
    within_180d: Mapped[int] = mapped_column(BigInteger)
    within_360d: Mapped[int] = mapped_column(BigInteger)
    within_365d: Mapped[int] = mapped_column(BigInteger)
    purchase_days: Mapped[int] = mapped_column(BigInteger)
    first_day: Mapped[int] = mapped_column(BigInteger)
    last_day: Mapped[int] = mapped_column(BigInteger)
    repeat_gross: Mapped[int] = mapped_column(BigInteger)
    categories: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{}")


class CustomerValue(Base):
    """The current value of a customer, the aggregates it came from, and what was published.

    `facts_version` grows with every ledger change of the customer; a recompute only overwrites
    a value computed from facts at least as old as the ones it read. The table has fillfactor
    45 (migration 0003): a recompute rewrites every row of a page in one transaction, and the
    new versions stay on the page (heap-only updates) when tier and net revenue do not move.
    """

    __tablename__ = "customer_values"
    __table_args__ = (
        Index("ix_customer_values_tier", "tier"),
        Index("ix_customer_values_net_revenue", "net_revenue"),
    )

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    facts_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    as_of: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    model_version: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str | None] = mapped_column(String(3))

    # Aggregates at `as_of`.
    orders: Mapped[int] = mapped_column(Integer, server_default="0")
    purchase_days: Mapped[int] = mapped_column(Integer, server_default="0")
    first_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_purchase_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gross_revenue: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    refunded_revenue: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    net_revenue: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    net_revenue_365d: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    revenue_last_180d: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    revenue_prior_180d: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    chargebacks: Mapped[int] = mapped_column(Integer, server_default="0")
    categories: Mapped[int] = mapped_column(Integer, server_default="0")
    referrals: Mapped[int] = mapped_column(Integer, server_default="0")
    open_complaints: Mapped[int] = mapped_column(Integer, server_default="0")
    closed_complaints_with_csat: Mapped[int] = mapped_column(Integer, server_default="0")
    mean_csat: Mapped[float | None] = mapped_column(Float)

    # Value (score, tier, dimensions and RFM are NULL without a purchase).
    score: Mapped[float | None] = mapped_column(Float)
    tier: Mapped[str | None] = mapped_column(String(20))
    dim_current: Mapped[float | None] = mapped_column(Float)
    dim_future: Mapped[float | None] = mapped_column(Float)
    dim_credit: Mapped[float | None] = mapped_column(Float)
    dim_loyalty: Mapped[float | None] = mapped_column(Float)
    dim_growth: Mapped[float | None] = mapped_column(Float)
    rfm_recency: Mapped[int | None] = mapped_column(SmallInteger)
    rfm_frequency: Mapped[int | None] = mapped_column(SmallInteger)
    rfm_monetary: Mapped[int | None] = mapped_column(SmallInteger)
    rfm_segment: Mapped[str | None] = mapped_column(String(30))
    behavioural_loyalty: Mapped[float | None] = mapped_column(Float)
    attitudinal_loyalty: Mapped[float | None] = mapped_column(Float)
    satisfaction: Mapped[float | None] = mapped_column(Float)
    loyalty_index: Mapped[float | None] = mapped_column(Float)
    dick_basu: Mapped[str | None] = mapped_column(String(20))
    jones_sasser: Mapped[str | None] = mapped_column(String(20))
    p_alive: Mapped[float | None] = mapped_column(Float)
    expected_purchases: Mapped[float | None] = mapped_column(Float)
    expected_spend: Mapped[Decimal | None] = mapped_column(MONEY)
    clv: Mapped[Decimal | None] = mapped_column(MONEY)

    # What consumers last saw, and why the score moved.
    published_score: Mapped[float | None] = mapped_column(Float)
    published_tier: Mapped[str | None] = mapped_column(String(20))
    published_dick_basu: Mapped[str | None] = mapped_column(String(20))
    published_jones_sasser: Mapped[str | None] = mapped_column(String(20))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_because: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    pending_causes: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModelVersion(Base):
    """One recompute's fitted models, the population reference and the policy it used."""

    __tablename__ = "model_versions"
    __table_args__ = (
        Index(
            "uq_model_versions_current",
            "is_current",
            unique=True,
            postgresql_where=text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    version: Mapped[str] = mapped_column(String(40), unique=True)
    is_current: Mapped[bool] = mapped_column(Boolean, server_default="false")
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    time_unit: Mapped[str] = mapped_column(String(10))
    currency: Mapped[str] = mapped_column(String(3))
    bgnbd: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    gamma_gamma: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    fit_error: Mapped[str | None] = mapped_column(Text)
    fit_seconds: Mapped[float | None] = mapped_column(Float)
    customers: Mapped[int] = mapped_column(Integer, server_default="0")
    customers_with_purchase: Mapped[int] = mapped_column(Integer, server_default="0")
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB)
    reference: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModelPolicy(Base):
    """The single row holding the value model's configuration (weights, cut-offs, settings)."""

    __tablename__ = "model_policy"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB)
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RecomputeRun(Base):
    __tablename__ = "recompute_runs"
    __table_args__ = (Index("ix_recompute_runs_status_requested_at", "status", "requested_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(20))
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    time_unit: Mapped[str] = mapped_column(String(10))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    phase: Mapped[str | None] = mapped_column(String(40))
    customers_total: Mapped[int] = mapped_column(Integer, server_default="0")
    customers_scored: Mapped[int] = mapped_column(Integer, server_default="0")
    events_published: Mapped[int] = mapped_column(Integer, server_default="0")
    model_version: Mapped[str | None] = mapped_column(String(40))
    timings: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    error: Mapped[str | None] = mapped_column(Text)


# State rebuilt from the log by `crm replay scoring`; model versions, policy and runs are kept.
REPLAY_TABLES = [
    "purchases",
    "refunds",
    "complaints",
    "referrals",
    "erased_customers",
    "customer_values",
    "ledger_summaries",
]
