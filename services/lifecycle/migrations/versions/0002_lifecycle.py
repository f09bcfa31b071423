"""Lifecycle state, stage history, erasure tombstones, policy versions, evaluation runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_lifecycles",
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("since", TS, nullable=False),
        sa.Column("reason", sa.String(30), nullable=False),
        sa.Column("registered_at", TS, nullable=False),
        sa.Column("stage_before_decline", sa.String(20), nullable=True),
        sa.Column(
            "decline_causes", ARRAY(sa.String(100)), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("idle_since", TS, nullable=False),
        sa.Column("gap_days", sa.Float(), nullable=False),
        sa.Column("decline_due_at", TS, nullable=True),
        sa.Column("churn_due_at", TS, nullable=True),
        sa.Column("facts", JSONB(), nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_lifecycles")),
    )
    op.create_index(
        "ix_customer_lifecycles_decline_due",
        "customer_lifecycles",
        ["decline_due_at"],
        postgresql_where=sa.text("decline_due_at IS NOT NULL"),
    )
    op.create_index(
        "ix_customer_lifecycles_churn_due",
        "customer_lifecycles",
        ["churn_due_at"],
        postgresql_where=sa.text("churn_due_at IS NOT NULL"),
    )

    op.create_table(
        "stage_transitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=True),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(30), nullable=False),
        sa.Column("trigger", sa.String(30), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("causing_event_id", UUID(as_uuid=True), nullable=True),
        sa.Column("evaluation_run_id", UUID(as_uuid=True), nullable=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("recorded_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_transitions")),
    )
    op.create_index(
        "ix_stage_transitions_customer_id_at", "stage_transitions", ["customer_id", "at", "id"]
    )
    op.create_index("ix_stage_transitions_at", "stage_transitions", ["at"])

    op.create_table(
        "erased_customers",
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("erased_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_erased_customers")),
    )
    op.create_table(
        "lifecycle_policies",
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("policy", JSONB(), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("changed_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_lifecycle_policies")),
    )
    op.create_table(
        "evaluation_runs",
        sa.Column("run_id", UUID(as_uuid=True), nullable=False),
        sa.Column("as_of", TS, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("moved", JSONB(), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_evaluation_runs")),
    )


def downgrade() -> None:
    op.drop_table("evaluation_runs")
    op.drop_table("lifecycle_policies")
    op.drop_table("erased_customers")
    op.drop_index("ix_stage_transitions_at", table_name="stage_transitions")
    op.drop_index("ix_stage_transitions_customer_id_at", table_name="stage_transitions")
    op.drop_table("stage_transitions")
    op.drop_index("ix_customer_lifecycles_churn_due", table_name="customer_lifecycles")
    op.drop_index("ix_customer_lifecycles_decline_due", table_name="customer_lifecycles")
    op.drop_table("customer_lifecycles")
