"""early_low_scores: low P(alive) scores of customers without a lifecycle yet

A ``crm.value.scored.v1`` can arrive before the customer's first lifecycle event (another
topic). One below the policy's ``model_churn_p_alive`` may, in business order, have churned
the customer once that event and older ones arrive, so it waits here until the customer's first
lifecycle event takes it into their state (``facts->'low_scores'``, no column: JSONB). Scores
at or above the threshold are not kept.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "early_low_scores",
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("p_alive", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "scored_at", name=op.f("pk_early_low_scores")),
    )


def downgrade() -> None:
    op.drop_table("early_low_scores")
