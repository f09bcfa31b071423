"""customer_lifecycles: planner statistics only on the columns statements select rows by

ANALYZE computes statistics for every column of its 30,000-row sample; on this table's arrays
(purchase days, decline causes) and JSON facts that is CPU in one burst, which autovacuum's
cost limit does not throttle (it meters page accesses). Purchases update these rows all the
time, so the auto-analyze comes back every few tens of thousands of events, and on the 2-core
bench machine the events on a purchase's path waited behind it. Statements select, group and
order these rows by customer id, stage and the two due times only; the rest is payload.
Measured on 60,000 rows (PostgreSQL 18, quiet machine): ANALYZE 330 ms with statistics on
every column, 70 ms with these four.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

from shared.db import statistics_on_every_column, statistics_only_on

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SELECTED_BY = ("customer_id", "stage", "decline_due_at", "churn_due_at")


def upgrade() -> None:
    statistics_only_on(op, "customer_lifecycles", SELECTED_BY)


def downgrade() -> None:
    statistics_on_every_column(op, "customer_lifecycles")
