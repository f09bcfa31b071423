"""customer_values: planner statistics only on the columns statements select rows by

ANALYZE computes statistics for every column of its 30,000-row sample, and on this table of
~50 numerics, floats, labels and JSON lists that is CPU in one burst: autovacuum's cost limit
meters page accesses, not the sorting of sample values. After a recompute rewrote every row,
the auto-analyze took most of a core for over a second on the 2-core bench machine, and every
event on a purchase's path waited behind it (the half-load latency run's slowest 1% were one
such burst). Statements select and order these rows by customer id, facts version, as_of,
model version, purchase days, tier and net revenue only; the other columns are payload.
Measured on 60,000 rows (PostgreSQL 18, quiet machine): ANALYZE 800 ms with statistics on
every column, 95 ms with these seven.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

from shared.db import statistics_on_every_column, statistics_only_on

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SELECTED_BY = (
    "customer_id",
    "facts_version",
    "as_of",
    "model_version",
    "purchase_days",
    "tier",
    "net_revenue",
)


def upgrade() -> None:
    statistics_only_on(op, "customer_values", SELECTED_BY)


def downgrade() -> None:
    statistics_on_every_column(op, "customer_values")
