"""customer_values: leave room on each page for HOT updates

A recompute rewrites every customer's value row. With full pages each new row version lands
on another page and every index gets a new entry; with 30% free space the new version usually
stays on its page (a heap-only tuple) when the indexed columns (tier, net revenue) keep their
value, which is the common case, and costs about half as much. Pages already written keep
their layout until the table is rewritten (VACUUM FULL or pg_repack).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE customer_values SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE customer_values RESET (fillfactor)")
