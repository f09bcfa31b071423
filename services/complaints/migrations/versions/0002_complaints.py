"""Complaints, their steps and escalations, the policy, and the known-customer projection.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "known_customers",
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("known", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("tier", sa.String(20), nullable=True),
        sa.Column("tier_as_of", TS, nullable=True),
        sa.Column("erased_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name="pk_known_customers"),
    )
    op.create_table(
        "complaints",
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("customer_id", UUID(as_uuid=True), nullable=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("category", sa.String(20), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("tier_at_intake", sa.String(20), nullable=True),
        sa.Column("order_id", sa.String(200), nullable=True),
        sa.Column("subject", sa.String(300), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("first_response_due", TS, nullable=False),
        sa.Column("resolution_due", TS, nullable=False),
        sa.Column("resolution_due_effective", TS, nullable=False),
        sa.Column("paused_since", TS, nullable=True),
        sa.Column("pauses", JSONB(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("acknowledged_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("root_cause", sa.String(50), nullable=True),
        sa.Column("satisfaction", sa.SmallInteger(), nullable=True),
        sa.Column("reopen_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("escalation_level", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_sla_check_at", TS, nullable=True),
        sa.Column("last_step_at", TS, nullable=False),
        sa.Column("opened_by", sa.String(200), nullable=False),
        sa.Column("anonymised_at", TS, nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("satisfaction BETWEEN 1 AND 5", name="ck_complaints_satisfaction_range"),
        sa.CheckConstraint(
            "escalation_level BETWEEN 0 AND 3", name="ck_complaints_escalation_level_range"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_complaints"),
    )
    op.create_index(
        "ix_complaints_customer_id_received_at", "complaints", ["customer_id", "received_at"]
    )
    op.create_index("ix_complaints_received_at_id", "complaints", ["received_at", "id"])
    op.create_index("ix_complaints_status", "complaints", ["status"])
    op.create_index(
        "ix_complaints_next_sla_check_at_id",
        "complaints",
        ["next_sla_check_at", "id"],
        postgresql_where=sa.text("next_sla_check_at IS NOT NULL"),
    )
    op.create_table(
        "complaint_steps",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("complaint_id", UUID(as_uuid=True), nullable=False),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("from_status", sa.String(30), nullable=True),
        sa.Column("to_status", sa.String(30), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("facts", JSONB(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("texts", JSONB(), nullable=True),
        sa.ForeignKeyConstraint(
            ["complaint_id"],
            ["complaints.id"],
            name="fk_complaint_steps_complaint_id_complaints",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_complaint_steps"),
    )
    op.create_index(
        "ix_complaint_steps_complaint_id_id", "complaint_steps", ["complaint_id", "id"]
    )
    op.create_table(
        "complaint_escalations",
        sa.Column("complaint_id", UUID(as_uuid=True), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["complaint_id"],
            ["complaints.id"],
            name="fk_complaint_escalations_complaint_id_complaints",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("complaint_id", "level", name="pk_complaint_escalations"),
    )
    op.create_table(
        "complaint_policy",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("document", JSONB(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_complaint_policy"),
    )


def downgrade() -> None:
    op.drop_table("complaint_policy")
    op.drop_table("complaint_escalations")
    op.drop_index("ix_complaint_steps_complaint_id_id", table_name="complaint_steps")
    op.drop_table("complaint_steps")
    op.drop_index("ix_complaints_next_sla_check_at_id", table_name="complaints")
    op.drop_index("ix_complaints_status", table_name="complaints")
    op.drop_index("ix_complaints_received_at_id", table_name="complaints")
    op.drop_index("ix_complaints_customer_id_received_at", table_name="complaints")
    op.drop_table("complaints")
    op.drop_table("known_customers")
