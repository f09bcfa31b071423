"""Per-customer facts at a business time: the ledgers streamed into NumPy and aggregated there.

PostgreSQL selects (binary COPY, fixed-width columns: purchases, refunds per purchase,
categories, complaints, referrals) and NumPy aggregates
(`domain.ledger.ledger_facts`): a hash join and a scan stream a million customers' purchases
several times faster than GROUP BY over numeric, and the batch and the one-customer paths share
one definition of every aggregate. The targets (all customers at one `as_of`, or some at their
own) go to a temporary table first, numbered in customer-id order: rows name them by that number.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring import bulk
from services.scoring.domain._arrays import FloatArray, IntArray
from services.scoring.domain.ledger import (
    MONEY_SCALE,
    NEVER,
    CategoryRows,
    ComplaintRows,
    LedgerFacts,
    PurchaseRows,
    ReferralRows,
    RefundRows,
    ledger_facts,
)

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_TARGETS_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS fact_targets (position int4 NOT NULL, "
    "customer_id uuid NOT NULL, facts_version int8 NOT NULL, as_of timestamptz NOT NULL, "
    "page int8 NOT NULL) ON COMMIT DELETE ROWS"
)
# The heap page of the value row (from its ctid): a recompute writes the rows page by page.
_PAGE = "(cv.ctid::text::point)[0]::int8"
_ALL_TARGETS = (
    "INSERT INTO fact_targets "
    "SELECT row_number() OVER (ORDER BY customer_id) - 1, customer_id, facts_version, $1, "
    f"{_PAGE} FROM customer_values cv"
)
_SOME_TARGETS = (
    "INSERT INTO fact_targets "
    "SELECT row_number() OVER (ORDER BY t.customer_id) - 1, t.customer_id, cv.facts_version, "
    f"t.as_of, {_PAGE} FROM unnest($1::uuid[], $2::timestamptz[]) AS t(customer_id, as_of) "
    "JOIN customer_values cv ON cv.customer_id = t.customer_id"
)
_TARGETS = "SELECT customer_id, facts_version, as_of, page FROM fact_targets ORDER BY position"
_TARGET_COLUMNS = (
    ("customer_id", "uuid"),
    ("facts_version", "int8"),
    ("as_of", "timestamptz"),
    ("page", "int8"),
)

# Purchases made by as_of in the currency, with the (hashed) names of their first categories;
# the categories beyond those come from _MORE_CATEGORIES. Fixed slots cost less than one row
# per category (a set-returning function over five million purchases).
CATEGORY_SLOTS = 3
_PURCHASES = f"""
SELECT t.position, p.purchased_at, (p.amount * 10000)::int8,
       {", ".join(f"coalesce(hashtext(p.categories[{k}]), 0)" for k in range(1, CATEGORY_SLOTS + 1))}
FROM fact_targets t
JOIN purchases p ON p.customer_id = t.customer_id AND p.purchased_at <= t.as_of
WHERE p.currency = $1
"""
_PURCHASE_COLUMNS = (
    ("customer", "int4"),
    ("purchased_at", "timestamptz"),
    ("amount", "int8"),
    # 0 = no category in the slot (a name hashing to 0 is not counted: odds 2^-32).
    *((f"category{k}", "int4") for k in range(1, CATEGORY_SLOTS + 1)),
)
_MORE_CATEGORIES = f"""
SELECT t.position, p.purchased_at, hashtext(c.category)
FROM purchases p
JOIN fact_targets t ON t.customer_id = p.customer_id AND p.purchased_at <= t.as_of
CROSS JOIN LATERAL unnest(p.categories[{CATEGORY_SLOTS + 1}:]) AS c(category)
WHERE p.currency = $1 AND cardinality(p.categories) > {CATEGORY_SLOTS}
  AND c.category IS NOT NULL
"""
_CATEGORY_COLUMNS = (("customer", "int4"), ("purchased_at", "timestamptz"), ("category", "int4"))
# What was refunded of each purchase by as_of (at most its amount), at the purchase's time.
# Purchases are joined by id only: with the customer too, the planner prefers the customer
# index and reads every purchase of each refunding customer.
_REFUNDS = """
SELECT t.position, p.purchased_at,
       (least(sum(r.amount), p.amount) * 10000)::int8,
       (count(*) FILTER (WHERE r.chargeback))::int4
FROM fact_targets t
JOIN refunds r ON r.customer_id = t.customer_id AND r.refunded_at <= t.as_of
JOIN purchases p ON p.purchase_id = r.purchase_id
WHERE r.currency = $1 AND p.currency = $1 AND p.purchased_at <= t.as_of
GROUP BY t.position, p.purchase_id
"""
_REFUND_COLUMNS = (
    ("customer", "int4"),
    ("purchased_at", "timestamptz"),
    ("refunded", "int8"),
    ("chargebacks", "int4"),
)
_COMPLAINTS = (
    "SELECT t.position, c.opened_at, c.closed_at IS NOT NULL, "
    "coalesce(c.closed_at, c.opened_at), coalesce(c.satisfaction, 0)::int2 "
    "FROM fact_targets t JOIN complaints c ON c.customer_id = t.customer_id"
)
_COMPLAINT_COLUMNS = (
    ("customer", "int4"),
    ("opened_at", "timestamptz"),
    ("closed", "bool"),
    ("closed_at", "timestamptz"),
    ("satisfaction", "int2"),
)
_REFERRALS = (
    "SELECT t.position, r.registered_at "
    "FROM fact_targets t JOIN referrals r ON r.referrer_id = t.customer_id"
)
_REFERRAL_COLUMNS = (("referrer", "int4"), ("registered_at", "timestamptz"))


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact, unlike float timestamps)."""
    return (moment - _UNIX_EPOCH) // timedelta(microseconds=1)


def moment(micros_since_epoch: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=micros_since_epoch)


def as_uuids(ids: NDArray[Any]) -> list[uuid.UUID]:
    raw = ids.tobytes()
    return [uuid.UUID(bytes=raw[k : k + 16]) for k in range(0, len(raw), 16)]


@dataclass(frozen=True)
class Facts:
    """Facts of customers sorted by id: 16-byte ids, the facts version read, their as_of
    (Unix microseconds), the heap page of their value row, and the ledger aggregates."""

    customer_ids: NDArray[Any]
    facts_version: IntArray
    as_of: IntArray
    page: IntArray
    ledger: LedgerFacts

    def __len__(self) -> int:
        return len(self.customer_ids)

    def ids(self) -> list[uuid.UUID]:
        return as_uuids(self.customer_ids)

    def money(self, name: str) -> FloatArray:
        """A money aggregate as float64 (for the models); stored values stay exact."""
        return np.asarray(getattr(self.ledger, name), dtype=np.float64) / MONEY_SCALE

    def take(self, rows: IntArray) -> Facts:
        """The facts of the customers at these positions (in this order)."""
        ledger = replace(
            self.ledger, **{f.name: getattr(self.ledger, f.name)[rows] for f in fields(LedgerFacts)}
        )
        return Facts(
            self.customer_ids[rows],
            self.facts_version[rows],
            self.as_of[rows],
            self.page[rows],
            ledger,
        )


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection of the session's transaction (for COPY and bulk statements)."""
    connection = await session.connection()
    # SQLAlchemy begins the driver-level transaction lazily, on its first statement: make sure
    # it has, or raw statements would run outside it (locks released, temp rows gone).
    await connection.execute(text("SELECT 1"))
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


async def load_facts(
    session: AsyncSession,
    *,
    currency: str,
    as_of: datetime | None = None,
    customers: Mapping[uuid.UUID, datetime] | None = None,
) -> Facts:
    """Facts of the given customers at their own as_of, or of every customer at `as_of`.

    Customers without a value row are left out (every ledger change creates one).
    """
    conn = await raw_connection(session)
    await conn.execute(_TARGETS_TABLE)
    await conn.execute("DELETE FROM fact_targets")
    if customers is not None:
        ids = sorted(customers)
        await conn.execute(_SOME_TARGETS, ids, [customers[c] for c in ids])
    else:
        assert as_of is not None
        # Everyone: the hash of a million targets and the sort that numbers them fit in memory
        # instead of spilling batches of five million purchase rows to temporary files.
        await conn.execute("SET LOCAL work_mem = '128MB'")
        await conn.execute(_ALL_TARGETS, as_of)
        # A temporary table has no statistics until analysed: the joins below need them.
        await conn.execute("ANALYZE fact_targets")
    targets = await bulk.read(conn, _TARGETS, columns=_TARGET_COLUMNS)
    bought = await bulk.read(conn, _PURCHASES, currency, columns=_PURCHASE_COLUMNS)
    more = await bulk.read(conn, _MORE_CATEGORIES, currency, columns=_CATEGORY_COLUMNS)
    refunded = await bulk.read(conn, _REFUNDS, currency, columns=_REFUND_COLUMNS)
    complaints = await bulk.read(conn, _COMPLAINTS, columns=_COMPLAINT_COLUMNS)
    referrals = await bulk.read(conn, _REFERRALS, columns=_REFERRAL_COLUMNS)

    slots = [bought[f"category{k}"] != 0 for k in range(1, CATEGORY_SLOTS + 1)]
    ledger = ledger_facts(
        as_of=targets["as_of"],
        purchases=PurchaseRows(
            customer=bought["customer"],
            purchased_at=bought["purchased_at"],
            amount=bought["amount"],
        ),
        refunds=RefundRows(
            customer=refunded["customer"],
            purchased_at=refunded["purchased_at"],
            refunded=refunded["refunded"],
            chargebacks=refunded["chargebacks"],
        ),
        categories=CategoryRows(
            customer=np.concatenate(
                [bought["customer"][slot] for slot in slots] + [more["customer"]]
            ),
            purchased_at=np.concatenate(
                [bought["purchased_at"][slot] for slot in slots] + [more["purchased_at"]]
            ),
            category=np.concatenate(
                [bought[f"category{k}"][slot] for k, slot in enumerate(slots, start=1)]
                + [more["category"]]
            ),
        ),
        complaints=ComplaintRows(
            customer=complaints["customer"],
            opened_at=complaints["opened_at"],
            closed_at=np.where(complaints["closed"], complaints["closed_at"], NEVER),
            satisfaction=complaints["satisfaction"],
        ),
        referrals=ReferralRows(
            referrer=referrals["referrer"], registered_at=referrals["registered_at"]
        ),
    )
    return Facts(
        targets["customer_id"], targets["facts_version"], targets["as_of"], targets["page"], ledger
    )
