"""ledger_summaries: each customer's purchases summed up at an instant (handlers read what
happened since, not the whole history)

Updated at every event of the customer: fillfactor 70 leaves room on the page for the new
version, so the update stays heap-only (no new primary-key entry). Empty at first: the first
event of each customer reads the whole history, as before, and writes its summary.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COUNTS = (
    "orders",
    "first_purchase_us",
    "last_purchase_us",
    "gross",
    "within_180d",
    "within_360d",
    "within_365d",
    "purchase_days",
    "first_day",
    "last_day",
    "repeat_gross",
)


def upgrade() -> None:
    op.create_table(
        "ledger_summaries",
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _COUNTS),
        sa.Column(
            "categories", postgresql.ARRAY(sa.Integer()), server_default="{}", nullable=False
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_ledger_summaries")),
    )
    op.execute("ALTER TABLE ledger_summaries SET (fillfactor = 70)")


def downgrade() -> None:
    op.drop_table("ledger_summaries")
