"""early_low_scores.remembered_at: when a low score began to wait, for its retention

A low score waits in ``early_low_scores`` for its customer's first lifecycle event. Scores of
customers lifecycle never hears of (loaded into scoring alone, or whose every event was
dead-lettered) would wait for ever; the scheduled sweep deletes those remembered longer than
``LIFECYCLE_LOW_SCORE_RETENTION_DAYS`` ago (wall clock, like the inbox's retention), through
this column's index. Rows already there count from this migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "early_low_scores",
        sa.Column(
            "remembered_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index(
        op.f("ix_early_low_scores_remembered_at"), "early_low_scores", ["remembered_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_early_low_scores_remembered_at"), table_name="early_low_scores")
    op.drop_column("early_low_scores", "remembered_at")
