"""Profile's hot tables: planner statistics only on the columns statements select rows by

Every ingested order writes a customer (the first time), a purchase and its items, and comes
back as two projection updates (stage, value), so autovacuum analyzes these five tables one
after another, about every ten seconds under load. ANALYZE computes statistics for every column of
its 30,000-row sample, and that CPU comes in one burst that autovacuum's cost limit does not
throttle (it meters page accesses): in the bench's half-load latency runs, the slowest events
came while such a round went through profile's tables (docs/performance.md). The other
columns are payload: addresses, tags and custom attributes (JSON and arrays, the dearest),
amounts, channels, SKUs, the projections' scores and times.

What statements select, join and order by, and keep their statistics:
- customers: id, the search's fields (e-mail, phone, external ref), referred_by, erased_at, and
  created_at (the list's order). Not name: search compares it accent-folded, and the folded
  names have statistics of their own, the index's and the statistics object's (migration 0003),
  which ANALYZE still computes;
- purchases: id, customer_id, order_id and occurred_at; their items: purchase_id, position;
- customer_stage and customer_value: customer_id, and the stage or the tier the lists filter by.

Measured on 200,000 customers with addresses and attributes, 800,000 purchases, 1.6 million
items (PostgreSQL 18, 2 cores; both settings in turn, three times in one session, each the
median of 5 ANALYZE runs): customers ~360 -> ~180 ms, customer_value ~105 -> ~39, customer_stage
~65 -> ~32, purchases ~107 -> ~86, purchase_items ~100 -> ~68; the round of the five tables
the bench saw analyzed together (these four with the inbox) ~700 -> ~390 ms. The plans of
search (whole and partial terms), the stage and tier lists, the purchase history, the import's
order lookups and the inbox pruning kept their shape, with estimates within the sampling's
noise. The inbox is left as it is: three narrow columns, no measurable gain.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

from shared.db import statistics_on_every_column, statistics_only_on

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SELECTED_BY: dict[str, tuple[str, ...]] = {
    "customers": (
        "id",
        "email",
        "phone",
        "external_ref",
        "referred_by",
        "erased_at",
        "created_at",
    ),
    "purchases": ("id", "customer_id", "order_id", "occurred_at"),
    "purchase_items": ("purchase_id", "position"),
    "customer_stage": ("customer_id", "stage"),
    "customer_value": ("customer_id", "tier"),
}


def upgrade() -> None:
    for table, columns in SELECTED_BY.items():
        statistics_only_on(op, table, columns)


def downgrade() -> None:
    for table in SELECTED_BY:
        statistics_on_every_column(op, table)
