"""Per-customer facts at a business time: the ledgers streamed into NumPy and aggregated there.

PostgreSQL selects (binary COPY, fixed-width columns: purchases, refunds per purchase,
categories, complaints, referrals) and NumPy aggregates (`domain.ledger.ledger_facts`): a scan
streams a million customers' purchases several times faster than GROUP BY over numeric, and the
batch and the one-customer paths share one definition of every aggregate. Rows name their
customer by id; NumPy places them (`positions_of`) among the targets, sorted by id.

Everyone (a recompute) is read at one `as_of` with one scan of each ledger: joining five
million purchases with a million targets cost PostgreSQL more than the scan itself. Some
customers (a handler batch), each at their own `as_of`, are read by one statement bound to
their arrays: each ledger through its customer index, one LATERAL lookup per customer (a join
was planned as a scan of the whole ledger whenever its statistics lagged behind its growth),
every ledger's rows packed into one bytea (`bulk.packed`).
"""

from __future__ import annotations

import asyncio
import operator
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
from numpy.typing import NDArray
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring import bulk
from services.scoring.domain._arrays import BoolArray, FloatArray, IntArray
from services.scoring.domain.ledger import (
    MONEY_SCALE,
    NEVER,
    WINDOW_DAYS,
    CategoryRows,
    ComplaintRows,
    LedgerFacts,
    PurchaseRows,
    PurchaseSummary,
    ReferralRows,
    RefundRows,
    advance,
    empty_summary,
    facts_of,
)
from shared.db import driver_connection

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The heap page of the value row (from its ctid): a recompute writes the rows page by page.
_PAGE = "(cv.ctid::text::point)[0]::int8"
_EVERYONE = (
    f"SELECT customer_id, facts_version, {_PAGE} FROM customer_values cv ORDER BY customer_id"
)
_EVERYONE_COLUMNS = (("customer_id", "uuid"), ("facts_version", "int8"), ("page", "int8"))
CATEGORY_SLOTS = 3


@dataclass(frozen=True)
class _Ledger:
    """One ledger's rows: `select` from `source` where `condition` (`{as_of}` is the business
    time: $2 for everyone, each target's own for some), then `tail` (GROUP BY)."""

    select: tuple[str, ...]
    source: str
    key: str  # the customer column `source` is looked up by, for some customers
    condition: str
    tail: str = ""

    def everyone(self) -> str:
        where = f" WHERE {self.condition.format(as_of='$2')}" if self.condition else ""
        return f"SELECT {', '.join(self.select)} FROM {self.source}{where}{self.tail}"

    def some(self, columns: bulk.Columns, *extra: str, also: str = "") -> str:
        """The rows of the targets (`t`), packed, and their count, then each of the `extra`
        bytea expressions aggregated alike; `also`: a further condition. OFFSET 0 keeps the
        LATERAL subquery a per-customer index lookup (flattened into a join, it may be planned
        as a scan of the ledger)."""
        named = ", ".join(f"{e} AS c{k}" for k, e in enumerate((*self.select, *extra)))
        condition = f"{self.key} = t.customer_id"
        if self.condition:
            condition += f" AND {self.condition.format(as_of='t.as_of')}"
        if also:
            condition += f" AND {also}"
        rows = bulk.packed(columns, [f"x.c{k}" for k in range(len(self.select))])
        more = "".join(
            f", coalesce(string_agg(x.c{k}, ''::bytea), ''::bytea)"
            for k in range(len(self.select), len(self.select) + len(extra))
        )
        return (
            f"SELECT {rows}, count(*){more} FROM t CROSS JOIN LATERAL "
            f"(SELECT {named} FROM {self.source} WHERE {condition}{self.tail} OFFSET 0) AS x"
        )


# Purchases made by as_of in the currency ($1), with the (hashed) names of their first
# categories; the categories beyond those come from `_MORE_CATEGORIES`. Fixed slots cost less
# than one row per category (a set-returning function over five million rows).
_PURCHASES = _Ledger(
    select=(
        "p.customer_id",
        "p.purchased_at",
        "(p.amount * 10000)::int8",
        *(f"coalesce(hashtext(p.categories[{k}]), 0)" for k in range(1, CATEGORY_SLOTS + 1)),
        f"coalesce(cardinality(p.categories), 0) > {CATEGORY_SLOTS}",
    ),
    source="purchases p",
    key="p.customer_id",
    condition="p.currency = $1 AND p.purchased_at <= {as_of}",
)
_MORE_CATEGORIES = _Ledger(
    select=("p.customer_id", "p.purchased_at", "hashtext(c.category)"),
    source=(
        f"purchases p CROSS JOIN LATERAL unnest(p.categories[{CATEGORY_SLOTS + 1}:]) AS c(category)"
    ),
    key="p.customer_id",
    condition=(
        "p.currency = $1 AND p.purchased_at <= {as_of} "
        f"AND cardinality(p.categories) > {CATEGORY_SLOTS} AND c.category IS NOT NULL"
    ),
)
# What was refunded of each purchase by as_of (at most its amount), at the purchase's time.
# Purchases are joined by id only: with the customer too, the planner prefers the customer
# index and reads every purchase of each refunding customer. A refund naming another
# customer's purchase counts for nobody (it made its customer's net revenue negative, which
# the value's read refused: a 500); `IS NOT DISTINCT FROM` checks that without being an
# equality the planner would carry over to the customer index.
_REFUNDS = _Ledger(
    select=(
        "r.customer_id",
        "p.purchased_at",
        "(least(sum(r.amount), p.amount) * 10000)::int8",
        "(count(*) FILTER (WHERE r.chargeback))::int4",
    ),
    source="refunds r JOIN purchases p ON p.purchase_id = r.purchase_id",
    key="r.customer_id",
    condition=(
        "r.currency = $1 AND p.currency = $1 AND r.refunded_at <= {as_of} "
        "AND p.purchased_at <= {as_of} AND p.customer_id IS NOT DISTINCT FROM r.customer_id"
    ),
    tail=" GROUP BY r.customer_id, p.purchase_id",
)
_COMPLAINTS = _Ledger(
    select=(
        "c.customer_id",
        "c.opened_at",
        "c.closed_at IS NOT NULL",
        "coalesce(c.closed_at, c.opened_at)",
        "coalesce(c.satisfaction, 0)::int2",
    ),
    source="complaints c",
    key="c.customer_id",
    condition="",
)
_REFERRALS = _Ledger(
    select=("r.referrer_id", "r.registered_at"),
    source="referrals r",
    key="r.referrer_id",
    condition="",
)
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
# What a stored summary holds: its `ledger_summaries` column -> `PurchaseSummary` field.
_SUMMARY_FIELDS = {
    "orders": "orders",
    "first_purchase_us": "first_purchase_at",
    "last_purchase_us": "last_purchase_at",
    "gross": "gross",
    "within_180d": "within_180d",
    "within_360d": "within_360d",
    "within_365d": "within_365d",
    "purchase_days": "purchase_days",
    "first_day": "first_day",
    "last_day": "last_day",
    "repeat_gross": "repeat_gross",
}
SUMMARY_COUNTS = tuple(_SUMMARY_FIELDS)
# Some customers ($2) at their own as_of ($3), with their value rows, their summaries (the
# latest one not after their as_of, in the currency $1) and every ledger's rows, in one
# statement; a customer without a value row is left out. One row: (packed rows, count) per
# part.
_SOME_COLUMNS = (
    *_EVERYONE_COLUMNS,
    ("as_of", "timestamptz"),
    ("summarized", "bool"),
    ("summary_as_of", "timestamptz"),
    *((name, "int8") for name in SUMMARY_COUNTS),
)
_SOME_TARGETS = (
    "SELECT "
    + bulk.packed(
        _SOME_COLUMNS,
        [
            "t.customer_id",
            "cv.facts_version",
            "cv.page",
            "t.as_of",
            "t.summarized",
            "coalesce(t.summary_as_of, t.as_of)",
            *(f"coalesce(t.{name}, 0)" for name in SUMMARY_COUNTS),
        ],
        order_by="t.customer_id",
    )
    + f", count(*) FROM t CROSS JOIN LATERAL (SELECT cv.facts_version, {_PAGE} AS page "
    "FROM customer_values cv WHERE cv.customer_id = t.customer_id OFFSET 0) AS cv"
)
# The categories beyond the slots come with their purchase (no second pass over purchases):
# packed `_MORE_CATEGORIES` rows, NULL for a purchase without any.
_MORE_OF_PURCHASE = (
    f"CASE WHEN cardinality(p.categories) > {CATEGORY_SLOTS} THEN (SELECT "
    + bulk.packed(_CATEGORY_COLUMNS, _MORE_CATEGORIES.select)
    + f" FROM unnest(p.categories[{CATEGORY_SLOTS + 1}:]) AS c(category) "
    "WHERE c.category IS NOT NULL) END"
)
_SUMMARY_CATEGORY_COLUMNS = (("customer", "uuid"), ("category", "int4"))
_SUMMARY_CATEGORIES = (
    "SELECT "
    + bulk.packed(_SUMMARY_CATEGORY_COLUMNS, ["t.customer_id", "k.category"])
    + ", count(*) FROM t CROSS JOIN LATERAL unnest(t.categories) AS k(category)"
)


def _left_window(days: int) -> str:
    """What a summarized customer bought by the summary's as_of that leaves the `days` window
    by their as_of: (since - L, least(since, as_of - L)], exact hours (not calendar days)."""
    hours = f"interval '{days * 24} hours'"
    return (
        "(SELECT coalesce(sum((p.amount * 10000)::int8), 0)::int8 FROM purchases p "
        "WHERE p.customer_id = t.customer_id AND p.currency = $1 "
        f"AND p.purchased_at > t.since - {hours} "
        f"AND p.purchased_at <= least(t.since, t.as_of - {hours}))"
    )


_LEAVING_COLUMNS = (("customer", "uuid"), *((f"left_{d}d", "int8") for d in WINDOW_DAYS))
_LEAVING = (
    "SELECT "
    + bulk.packed(_LEAVING_COLUMNS, ["t.customer_id", *(f"x.left_{d}d" for d in WINDOW_DAYS)])
    + ", count(*) FROM t CROSS JOIN LATERAL (SELECT "
    + ", ".join(f"{_left_window(d)} AS left_{d}d" for d in WINDOW_DAYS)
    + ") AS x WHERE t.summarized"
)
_SOME = (
    "WITH t AS MATERIALIZED (SELECT u.customer_id, u.as_of, s.as_of IS NOT NULL AS summarized, "
    "coalesce(s.as_of, '-infinity') AS since, s.as_of AS summary_as_of, "
    + ", ".join(f"s.{name}" for name in SUMMARY_COUNTS)
    + ", s.categories FROM unnest($2::uuid[], $3::timestamptz[]) AS u(customer_id, as_of) "
    # A lookup by key per customer (OFFSET 0), never a scan of every summary.
    "LEFT JOIN LATERAL (SELECT * FROM ledger_summaries s WHERE s.customer_id = u.customer_id "
    "AND s.currency = $1 AND s.as_of <= u.as_of OFFSET 0) AS s ON true) SELECT * FROM "
    + ", ".join(
        (
            f"({_SOME_TARGETS}) AS targets(targets, targets_count)",
            # Purchases since the summary (all of them without one).
            f"({_PURCHASES.some(_PURCHASE_COLUMNS, _MORE_OF_PURCHASE, also='p.purchased_at > t.since')}) "
            "AS bought(bought, bought_count, more)",
            f"({_SUMMARY_CATEGORIES}) AS summary_categories(summary_categories, "
            "summary_categories_count)",
            f"({_LEAVING}) AS leaving(leaving, leaving_count)",
            f"({_REFUNDS.some(_REFUND_COLUMNS)}) AS refunded(refunded, refunded_count)",
            f"({_COMPLAINTS.some(_COMPLAINT_COLUMNS)}) AS complaints(complaints, complaints_count)",
            f"({_REFERRALS.some(_REFERRAL_COLUMNS)}) AS referrals(referrals, referrals_count)",
        )
    )
)
# A batch's summaries written back, each at its as_of; the categories come as (customer,
# category) pairs (the last two parameters) and are gathered into each customer's array.
_CATEGORY_PAIRS = 4 + len(SUMMARY_COUNTS)
_SAVE_SUMMARIES = (
    "WITH k AS (SELECT c, array_agg(k ORDER BY k) AS categories "
    f"FROM unnest(${_CATEGORY_PAIRS}::uuid[], ${_CATEGORY_PAIRS + 1}::int4[]) AS x(c, k) "
    "GROUP BY c) "
    "INSERT INTO ledger_summaries (customer_id, currency, as_of, "
    + ", ".join(SUMMARY_COUNTS)
    + ", categories) SELECT s.customer_id, $1, s.as_of, "
    + ", ".join(f"s.{name}" for name in SUMMARY_COUNTS)
    + ", coalesce(k.categories, '{}') FROM unnest($2::uuid[], $3::timestamptz[], "
    + ", ".join(f"${k}::int8[]" for k in range(4, 4 + len(SUMMARY_COUNTS)))
    + ") AS s(customer_id, as_of, "
    + ", ".join(SUMMARY_COUNTS)
    + ") LEFT JOIN k ON k.c = s.customer_id ON CONFLICT (customer_id) DO UPDATE SET "
    + ", ".join(
        f"{column} = EXCLUDED.{column}"
        for column in ("currency", "as_of", *SUMMARY_COUNTS, "categories")
    )
)


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact, unlike float timestamps)."""
    return (moment - _UNIX_EPOCH) // timedelta(microseconds=1)


def moment(micros_since_epoch: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=micros_since_epoch)


def sorted_ids(ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """Ids in PostgreSQL's uuid order (compared as integers: `UUID.__lt__` is Python code)."""
    return sorted(ids, key=_AS_INT)


_AS_INT = operator.attrgetter("int")


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
    # The purchase summaries the facts came from, to store (customers read by id only).
    summary: PurchaseSummary | None = None

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
    return await driver_connection(session)


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

    Customers without a value row are left out (every ledger change creates one). The given
    customers' purchases are read from their stored summaries on (`ledger_summaries`): what
    was bought since, and the sums of what left the windows; `save_summaries` stores the new
    ones (`Facts.summary`).
    """
    conn = await raw_connection(session)
    leaving: dict[int, IntArray] | None = None
    if customers is not None:
        chosen = sorted_ids(customers)
        row = await conn.fetchrow(_SOME, currency, chosen, [customers[c] for c in chosen])
        assert row is not None
        targets = bulk.unpack(row["targets"], _SOME_COLUMNS, row["targets_count"])
        ids = targets["customer_id"]

        def part(name: str, columns: bulk.Columns) -> dict[str, NDArray[Any]]:
            return _placed(bulk.unpack(row[name], columns, row[f"{name}_count"]), ids)

        bought = part("bought", _PURCHASE_COLUMNS)
        more = _placed(bulk.unpack(row["more"], _CATEGORY_COLUMNS), ids)
        refunded = part("refunded", _REFUND_COLUMNS)
        complaints = part("complaints", _COMPLAINT_COLUMNS)
        referrals = part("referrals", _REFERRAL_COLUMNS)
        before = _stored_summaries(targets, part("summary_categories", _SUMMARY_CATEGORY_COLUMNS))
        left = part("leaving", _LEAVING_COLUMNS)
        leaving = {}
        for days in WINDOW_DAYS:
            leaving[days] = np.zeros(len(ids), dtype=np.int64)
            leaving[days][left["customer"]] = left[f"left_{days}d"]
    else:
        assert as_of is not None
        # Sorting a million targets and grouping the refunds fit in memory.
        await conn.execute("SET LOCAL work_mem = '128MB'")
        targets = await bulk.read(conn, _EVERYONE, columns=_EVERYONE_COLUMNS)
        targets["as_of"] = np.full(len(targets["customer_id"]), micros(as_of), dtype=np.int64)
        ids = targets["customer_id"]

        # Everyone's rows are millions: placing them (sorts) and summing them up take seconds
        # of CPU, done in a thread so that the worker's consumers and HTTP keep being served
        # (numpy lets go of the interpreter while it sorts and sums; held by this task, the
        # event loop stalled for over a second at a time with 1,000,000 customers).
        async def read(query: str, columns: bulk.Columns, *args: Any) -> dict[str, NDArray[Any]]:
            return await asyncio.to_thread(
                _placed, await bulk.read(conn, query, *args, columns=columns), ids
            )

        bought = await read(_PURCHASES.everyone(), _PURCHASE_COLUMNS, currency, as_of)
        if bought["more_categories"].any():
            more = await read(_MORE_CATEGORIES.everyone(), _CATEGORY_COLUMNS, currency, as_of)
        else:  # the common case: no second scan of the purchases for nothing
            more = {name: np.zeros(0, dtype=np.int64) for name, _ in _CATEGORY_COLUMNS}
        refunded = await read(_REFUNDS.everyone(), _REFUND_COLUMNS, currency, as_of)
        complaints = await read(_COMPLAINTS.everyone(), _COMPLAINT_COLUMNS)
        referrals = await read(_REFERRALS.everyone(), _REFERRAL_COLUMNS)
        return await asyncio.to_thread(
            _assemble,
            targets,
            empty_summary(len(ids)),
            bought,
            more,
            refunded,
            complaints,
            referrals,
            leaving=None,
            keep_summary=False,
        )
    return _assemble(
        targets,
        before,
        bought,
        more,
        refunded,
        complaints,
        referrals,
        leaving=leaving,
        keep_summary=True,
    )


def _assemble(
    targets: dict[str, NDArray[Any]],
    before: PurchaseSummary,
    bought: dict[str, NDArray[Any]],
    more: dict[str, NDArray[Any]],
    refunded: dict[str, NDArray[Any]],
    complaints: dict[str, NDArray[Any]],
    referrals: dict[str, NDArray[Any]],
    *,
    leaving: dict[int, IntArray] | None,
    keep_summary: bool,
) -> Facts:
    """The facts of the targets from their placed rows (`customer`: the target's position)."""
    slots = [bought[f"category{k}"] != 0 for k in range(1, CATEGORY_SLOTS + 1)]
    summary = advance(
        before,
        as_of=targets["as_of"],
        purchases=PurchaseRows(
            customer=bought["customer"],
            purchased_at=bought["purchased_at"],
            amount=bought["amount"],
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
        leaving=leaving,
    )
    ledger = facts_of(
        summary,
        refunds=RefundRows(
            customer=refunded["customer"],
            purchased_at=refunded["purchased_at"],
            refunded=refunded["refunded"],
            chargebacks=refunded["chargebacks"],
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
    return Facts(
        targets["customer_id"],
        targets["facts_version"],
        targets["as_of"],
        targets["page"],
        ledger,
        summary if keep_summary else None,
    )


def _stored_summaries(
    targets: dict[str, NDArray[Any]], categories: dict[str, NDArray[Any]]
) -> PurchaseSummary:
    """The targets' stored summaries; a target without one has the empty summary."""
    summarized = targets["summarized"]
    return PurchaseSummary(
        as_of=np.where(summarized, targets["summary_as_of"], empty_summary(1).as_of[0]),
        **{
            field: np.where(summarized, targets[column], 0)
            for column, field in _SUMMARY_FIELDS.items()
        },
        category_customer=categories["customer"],
        category=categories["category"],
    )


# Customers with fewer purchases have no summary: reading their few rows costs less than
# writing one at every event (`make bench`, section history, whole history read against
# summaries: 108 against 111 µs an event at 2 purchases, 158 against 126 at 20).
SUMMARY_MIN_ORDERS = 10


async def save_summaries(
    connection: asyncpg.Connection,
    facts: Facts,
    as_of: Mapping[uuid.UUID, datetime],
    *,
    currency: str,
    min_orders: int = SUMMARY_MIN_ORDERS,
) -> None:
    """Store the summaries the facts were read with (`Facts.summary`) of the customers with
    `min_orders` purchases or more; `as_of`: the facts' customers (`Facts.ids()` order) at the
    as_of they were read at."""
    summary = facts.summary
    if summary is None:
        return
    ids = list(as_of)
    kept = np.flatnonzero(summary.orders >= min_orders)
    if len(kept) == 0:
        return
    chosen = [ids[k] for k in kept.tolist()]
    categories = np.isin(summary.category_customer, kept)
    await connection.execute(
        _SAVE_SUMMARIES,
        currency,
        chosen,
        [as_of[c] for c in chosen],
        *(getattr(summary, field)[kept].tolist() for field in _SUMMARY_FIELDS.values()),
        [ids[k] for k in summary.category_customer[categories].tolist()],
        summary.category[categories].tolist(),
    )
