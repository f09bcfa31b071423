"""Orders as rows, and the facts derived from them as columns of the lifecycle state.

A purchase used to parse and rewrite every order of its customer (``facts->'orders'``); now
it reads the row's order facts and writes one order row. Existing orders move to
``lifecycle_orders`` and their facts are computed here; the relationship start is left to
be computed from every order at the customer's next event (``relationship_policy_version``
NULL).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "lifecycle_orders",
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("order_id", sa.String(200), nullable=False),
        sa.Column("placed_at", TS, nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("refunded", sa.Numeric(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "order_id", name=op.f("pk_lifecycle_orders")),
    )
    op.add_column(
        "customer_lifecycles",
        sa.Column("purchase_days", ARRAY(sa.Date()), server_default="{}", nullable=False),
    )
    for column in ("first_purchase_at", "last_purchase_at", "latest_order_at"):
        op.add_column("customer_lifecycles", sa.Column(column, TS, nullable=True))
    op.add_column("customer_lifecycles", sa.Column("relationship_start", TS, nullable=True))
    op.add_column(
        "customer_lifecycles",
        sa.Column("relationship_policy_version", sa.Integer(), nullable=True),
    )
    op.execute(
        """
        INSERT INTO lifecycle_orders (customer_id, order_id, placed_at, amount, refunded)
        SELECT c.customer_id, o.key, CAST(o.value->>0 AS timestamptz),
            CAST(o.value->>1 AS numeric), CAST(o.value->>2 AS numeric)
        FROM customer_lifecycles AS c, jsonb_each(c.facts->'orders') AS o
        """
    )
    # domain.CustomerLifecycle: an order counts as a purchase unless it was fully refunded
    # (a free order always counts); purchase days are the distinct UTC dates of those.
    op.execute(
        """
        UPDATE customer_lifecycles AS c SET
            purchase_days = coalesce(f.purchase_days, '{}'),
            first_purchase_at = f.first_purchase_at,
            last_purchase_at = f.last_purchase_at,
            latest_order_at = f.latest_order_at
        FROM (
            SELECT customer_id,
                array_agg(DISTINCT CAST(placed_at AT TIME ZONE 'UTC' AS date)
                    ORDER BY CAST(placed_at AT TIME ZONE 'UTC' AS date))
                    FILTER (WHERE counts) AS purchase_days,
                min(placed_at) FILTER (WHERE counts) AS first_purchase_at,
                max(placed_at) FILTER (WHERE counts) AS last_purchase_at,
                max(placed_at) AS latest_order_at
            FROM (
                SELECT customer_id, placed_at, NOT (amount > 0 AND refunded >= amount) AS counts
                FROM lifecycle_orders
            ) AS o
            GROUP BY customer_id
        ) AS f
        WHERE c.customer_id = f.customer_id
        """
    )
    op.execute("UPDATE customer_lifecycles SET facts = facts - 'orders'")


def downgrade() -> None:
    op.execute(
        """
        UPDATE customer_lifecycles AS c
        SET facts = c.facts || jsonb_build_object('orders', coalesce(o.orders, '{}'))
        FROM customer_lifecycles AS k
        LEFT JOIN (
            SELECT customer_id, jsonb_object_agg(order_id, jsonb_build_array(
                to_char(placed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                amount::text, refunded::text)) AS orders
            FROM lifecycle_orders GROUP BY customer_id
        ) AS o ON o.customer_id = k.customer_id
        WHERE c.customer_id = k.customer_id
        """
    )
    for column in (
        "relationship_policy_version",
        "relationship_start",
        "latest_order_at",
        "last_purchase_at",
        "first_purchase_at",
        "purchase_days",
    ):
        op.drop_column("customer_lifecycles", column)
    op.drop_table("lifecycle_orders")
