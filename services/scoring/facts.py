"""Per-customer facts at a business time: the ledgers streamed into NumPy and aggregated there.

PostgreSQL selects (binary COPY, fixed-width columns: purchases, refunds per purchase,
categories, complaints, referrals) and NumPy aggregates (`domain.ledger.ledger_facts`): a scan
streams a million customers' purchases several times faster than GROUP BY over numeric, and the
batch and the one-customer paths share one definition of every aggregate. Rows name their
customer by id; NumPy places them (`positions_of`) among the targets, sorted by id.

Everyone (a recompute) is read at one `as_of` with one scan of each ledger: joining five
million purchases with a million targets cost PostgreSQL more than the scan itself. Some
customers (a handler batch), each at their own `as_of`, go to a temporary table first, which
the ledgers are joined with.
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
from services.scoring.domain._arrays import BoolArray, FloatArray, IntArray
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
    "CREATE TEMP TABLE IF NOT EXISTS fact_targets (customer_id uuid NOT NULL, "
    "as_of timestamptz NOT NULL) ON COMMIT DELETE ROWS"
)
# The heap page of the value row (from its ctid): a recompute writes the rows page by page.
_PAGE = "(cv.ctid::text::point)[0]::int8"
_EVERYONE = (
    f"SELECT customer_id, facts_version, {_PAGE} FROM customer_values cv ORDER BY customer_id"
)
_SOME = (
    f"SELECT t.customer_id, cv.facts_version, {_PAGE}, t.as_of FROM fact_targets t "
    "JOIN customer_values cv ON cv.customer_id = t.customer_id ORDER BY t.customer_id"
)
_EVERYONE_COLUMNS = (("customer_id", "uuid"), ("facts_version", "int8"), ("page", "int8"))
_SOME_COLUMNS = (*_EVERYONE_COLUMNS, ("as_of", "timestamptz"))


@dataclass(frozen=True)
class _Ledgers:
    """The ledger queries, for everyone at `as_of` ($2) or for the targets at their own."""

    everyone: bool

    def source(self, table: str, key: str) -> str:
        """`table` (with its alias), restricted to the targets unless everyone is read."""
        if self.everyone:
            return table
        return f"fact_targets t JOIN {table} ON {key} = t.customer_id"

    @property
    def as_of(self) -> str:
        return "$2" if self.everyone else "t.as_of"

    @property
    def purchases(self) -> str:
        """Purchases made by as_of in the currency ($1), with the (hashed) names of their first
        categories; the categories beyond those come from `more_categories`. Fixed slots cost
        less than one row per category (a set-returning function over five million rows)."""
        slots = ", ".join(
            f"coalesce(hashtext(p.categories[{k}]), 0)" for k in range(1, CATEGORY_SLOTS + 1)
        )
        return (
            f"SELECT p.customer_id, p.purchased_at, (p.amount * 10000)::int8, {slots}, "
            f"coalesce(cardinality(p.categories), 0) > {CATEGORY_SLOTS} "
            f"FROM {self.source('purchases p', 'p.customer_id')} "
            f"WHERE p.currency = $1 AND p.purchased_at <= {self.as_of}"
        )

    @property
    def more_categories(self) -> str:
        return (
            "SELECT p.customer_id, p.purchased_at, hashtext(c.category) "
            f"FROM {self.source('purchases p', 'p.customer_id')} "
            f"CROSS JOIN LATERAL unnest(p.categories[{CATEGORY_SLOTS + 1}:]) AS c(category) "
            f"WHERE p.currency = $1 AND p.purchased_at <= {self.as_of} "
            f"AND cardinality(p.categories) > {CATEGORY_SLOTS} AND c.category IS NOT NULL"
        )

    @property
    def refunds(self) -> str:
        """What was refunded of each purchase by as_of (at most its amount), at the purchase's
        time. Purchases are joined by id only: with the customer too, the planner prefers the
        customer index and reads every purchase of each refunding customer."""
        return (
            "SELECT r.customer_id, p.purchased_at, "
            "(least(sum(r.amount), p.amount) * 10000)::int8, "
            "(count(*) FILTER (WHERE r.chargeback))::int4 "
            f"FROM {self.source('refunds r', 'r.customer_id')} "
            "JOIN purchases p ON p.purchase_id = r.purchase_id "
            f"WHERE r.currency = $1 AND p.currency = $1 AND r.refunded_at <= {self.as_of} "
            f"AND p.purchased_at <= {self.as_of} GROUP BY r.customer_id, p.purchase_id"
        )

    @property
    def complaints(self) -> str:
        return (
            "SELECT c.customer_id, c.opened_at, c.closed_at IS NOT NULL, "
            "coalesce(c.closed_at, c.opened_at), coalesce(c.satisfaction, 0)::int2 "
            f"FROM {self.source('complaints c', 'c.customer_id')}"
        )

    @property
    def referrals(self) -> str:
        return (
            "SELECT r.referrer_id, r.registered_at "
            f"FROM {self.source('referrals r', 'r.referrer_id')}"
        )


CATEGORY_SLOTS = 3
_PURCHASE_COLUMNS = (
    ("customer", "uuid"),
    ("purchased_at", "timestamptz"),
    ("amount", "int8"),
    # 0 = no category in the slot (a name hashing to 0 is not counted: odds 2^-32).
    *((f"category{k}", "int4") for k in range(1, CATEGORY_SLOTS + 1)),
    ("more_categories", "bool"),
)
_CATEGORY_COLUMNS = (("customer", "uuid"), ("purchased_at", "timestamptz"), ("category", "int4"))
_REFUND_COLUMNS = (
    ("customer", "uuid"),
    ("purchased_at", "timestamptz"),
    ("refunded", "int8"),
    ("chargebacks", "int4"),
)
_COMPLAINT_COLUMNS = (
    ("customer", "uuid"),
    ("opened_at", "timestamptz"),
    ("closed", "bool"),
    ("closed_at", "timestamptz"),
    ("satisfaction", "int2"),
)
_REFERRAL_COLUMNS = (("customer", "uuid"), ("registered_at", "timestamptz"))


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


def _halves(ids: NDArray[Any]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """16-byte ids as two integers each; (first, second) orders them as PostgreSQL orders uuid."""
    pairs = np.asarray(ids).view(">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def positions_of(sorted_ids: NDArray[Any], ids: NDArray[Any]) -> tuple[IntArray, BoolArray]:
    """Where each of `ids` is among `sorted_ids` (16-byte ids in PostgreSQL's uuid order), and
    whether it is there at all.

    Searched by the first 8 bytes, the needles in order (a cache-friendly walk instead of a
    random probe each); ids that share their first 8 bytes with another (odds about 1e-7 in a
    million random ids) are told apart by the other 8.
    """
    first, second = _halves(sorted_ids)
    key, rest = _halves(ids)
    order = np.argsort(key, kind="stable")
    position = np.empty(len(ids), dtype=np.int64)
    position[order] = np.searchsorted(first, key[order], side="left")
    if len(first) > 1 and np.any(first[1:] == first[:-1]):
        right = np.empty(len(ids), dtype=np.int64)
        right[order] = np.searchsorted(first, key[order], side="right")
        for k in np.flatnonzero(right - position > 1).tolist():
            block = second[position[k] : right[k]]
            position[k] += int(np.searchsorted(block, rest[k]))
    if len(first) == 0:
        return position, np.zeros(len(ids), dtype=np.bool_)
    at = np.minimum(position, len(first) - 1)
    return position, (first[at] == key) & (second[at] == rest)


def _placed(rows: dict[str, NDArray[Any]], ids: NDArray[Any]) -> dict[str, NDArray[Any]]:
    """The rows of customers among `ids` (sorted), `customer` now their position there."""
    position, found = positions_of(ids, rows["customer"])
    placed = {name: column[found] for name, column in rows.items()}
    placed["customer"] = position[found]
    return placed


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
    arguments: list[Any] = [currency]
    if customers is not None:
        await conn.execute(_TARGETS_TABLE)
        await conn.execute("DELETE FROM fact_targets")
        chosen = sorted(customers)
        await conn.execute(
            "INSERT INTO fact_targets SELECT * FROM unnest($1::uuid[], $2::timestamptz[])",
            chosen,
            [customers[c] for c in chosen],
        )
        targets = await bulk.read(conn, _SOME, columns=_SOME_COLUMNS)
        ledgers = _Ledgers(everyone=False)
    else:
        assert as_of is not None
        # Sorting a million targets and grouping the refunds fit in memory.
        await conn.execute("SET LOCAL work_mem = '128MB'")
        targets = await bulk.read(conn, _EVERYONE, columns=_EVERYONE_COLUMNS)
        targets["as_of"] = np.full(len(targets["customer_id"]), micros(as_of), dtype=np.int64)
        ledgers = _Ledgers(everyone=True)
        arguments.append(as_of)
    ids = targets["customer_id"]

    async def read(query: str, columns: bulk.Columns, *args: Any) -> dict[str, NDArray[Any]]:
        return _placed(await bulk.read(conn, query, *args, columns=columns), ids)

    bought = await read(ledgers.purchases, _PURCHASE_COLUMNS, *arguments)
    if bought["more_categories"].any():
        more = await read(ledgers.more_categories, _CATEGORY_COLUMNS, *arguments)
    else:  # the common case: no second scan of the purchases for nothing
        more = {name: np.zeros(0, dtype=np.int64) for name, _ in _CATEGORY_COLUMNS}
    refunded = await read(ledgers.refunds, _REFUND_COLUMNS, *arguments)
    complaints = await read(ledgers.complaints, _COMPLAINT_COLUMNS)
    referrals = await read(ledgers.referrals, _REFERRAL_COLUMNS)

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
            referrer=referrals["customer"], registered_at=referrals["registered_at"]
        ),
    )
    return Facts(ids, targets["facts_version"], targets["as_of"], targets["page"], ledger)
