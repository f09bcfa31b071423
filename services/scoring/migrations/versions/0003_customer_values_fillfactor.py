"""customer_values: leave room on each page for a second version of every row (HOT updates)

A recompute rewrites every customer's value row, all rows of a page in one transaction (its
chunks are page ranges), so the old versions are still there when the new ones are written.
Filled to 45%, a page has room for a new version of each of its rows: the update stays on the
page without touching any index (a heap-only tuple) when the indexed columns (tier, net
revenue) keep their value, the common case. Measured on 1M customers (table rewritten at
each setting): at fillfactor 70 two thirds of the rows moved to other pages with three index
entries each (3 WAL records per row, ~29 µs); at 45 every row stayed (1 record, ~13 µs), and
the table stopped growing with each run. The next access or vacuum prunes the old versions.
Pages already written keep their layout until the table is rewritten (VACUUM FULL or
pg_repack), and rows that grew into a full page move once.

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
    op.execute("ALTER TABLE customer_values SET (fillfactor = 45)")


def downgrade() -> None:
    op.execute("ALTER TABLE customer_values RESET (fillfactor)")
