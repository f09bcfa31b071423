"""Facts streamed from the ledgers and aggregated in NumPy equal the SQL definition of each
aggregate (the GROUP BY query the service used before, kept here as the oracle), for the whole
population and for some customers at their own as_of; and binary COPY round-trips through
PostgreSQL. Extra ledger rows are written in a transaction that is rolled back."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from integration.scoring.conftest import T0, Scoring
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scoring import bulk
from services.scoring.facts import (
    SUMMARY_MIN_ORDERS,
    Facts,
    load_facts,
    micros,
    raw_connection,
    save_summaries,
)
from services.scoring.service import _ADD_PURCHASES

pytestmark = pytest.mark.integration

_ORACLE = """
WITH targets AS ({targets}),
refunded AS (
    SELECT r.purchase_id, sum(r.amount) AS amount,
           count(*) FILTER (WHERE r.chargeback) AS chargebacks
    FROM refunds r JOIN targets t ON t.customer_id = r.customer_id
    WHERE r.refunded_at <= t.as_of AND r.currency = 'USD'
    GROUP BY r.purchase_id
),
bought AS (
    SELECT p.customer_id, t.as_of, p.purchased_at, p.purchase_day, p.amount, p.categories,
           least(coalesce(f.amount, 0), p.amount) AS refunded,
           coalesce(f.chargebacks, 0) AS chargebacks
    FROM purchases p JOIN targets t ON t.customer_id = p.customer_id
    LEFT JOIN refunded f ON f.purchase_id = p.purchase_id
    WHERE p.purchased_at <= t.as_of AND p.currency = 'USD'
),
days AS (
    SELECT customer_id, purchase_day, sum(amount - refunded) AS value
    FROM bought GROUP BY customer_id, purchase_day
),
day_summary AS (
    SELECT customer_id,
           min(purchase_day) - DATE '1970-01-01' AS first_day,
           max(purchase_day) - DATE '1970-01-01' AS last_day,
           count(*) AS purchase_days,
           sum(value) - (array_agg(value ORDER BY purchase_day))[1] AS repeat_value
    FROM days GROUP BY customer_id
),
money AS (
    SELECT customer_id, count(*) AS orders,
           min(purchased_at) AS first_purchase_at, max(purchased_at) AS last_purchase_at,
           sum(amount) AS gross, sum(refunded) AS refunded, sum(chargebacks) AS chargebacks,
           coalesce(sum(amount - refunded)
                    FILTER (WHERE purchased_at > as_of - interval '365 days'), 0) AS net_365d,
           coalesce(sum(amount - refunded)
                    FILTER (WHERE purchased_at > as_of - interval '180 days'), 0) AS last_180d,
           coalesce(sum(amount - refunded)
                    FILTER (WHERE purchased_at > as_of - interval '360 days'
                              AND purchased_at <= as_of - interval '180 days'), 0) AS prior_180d
    FROM bought GROUP BY customer_id
),
breadth AS (
    SELECT b.customer_id, count(DISTINCT category) AS categories
    FROM bought b CROSS JOIN LATERAL unnest(b.categories) AS category
    GROUP BY b.customer_id
),
complaint_state AS (
    SELECT c.customer_id,
           count(*) FILTER (WHERE c.opened_at <= t.as_of
                              AND (c.closed_at IS NULL OR c.closed_at > t.as_of)) AS open_complaints,
           count(c.satisfaction) FILTER (WHERE c.closed_at <= t.as_of) AS csat_count,
           coalesce(sum(c.satisfaction) FILTER (WHERE c.closed_at <= t.as_of), 0) AS csat_sum
    FROM complaints c JOIN targets t ON t.customer_id = c.customer_id
    GROUP BY c.customer_id
),
referred AS (
    SELECT r.referrer_id AS customer_id, count(*) AS referrals
    FROM referrals r JOIN targets t ON t.customer_id = r.referrer_id
    WHERE r.registered_at <= t.as_of
    GROUP BY r.referrer_id
)
SELECT t.customer_id, t.facts_version,
       (t.as_of AT TIME ZONE 'UTC')::date - DATE '1970-01-01' AS as_of_day,
       coalesce(d.first_day, 0) AS first_day, coalesce(d.last_day, 0) AS last_day,
       coalesce(d.purchase_days, 0) AS purchase_days,
       coalesce(d.repeat_value, 0) AS repeat_value,
       coalesce(m.orders, 0) AS orders, m.first_purchase_at, m.last_purchase_at,
       coalesce(m.gross, 0) AS gross, coalesce(m.refunded, 0) AS refunded,
       coalesce(m.net_365d, 0) AS net_365d, coalesce(m.last_180d, 0) AS last_180d,
       coalesce(m.prior_180d, 0) AS prior_180d, coalesce(m.chargebacks, 0) AS chargebacks,
       coalesce(b.categories, 0) AS categories, coalesce(r.referrals, 0) AS referrals,
       coalesce(c.open_complaints, 0) AS open_complaints,
       coalesce(c.csat_count, 0) AS csat_count, coalesce(c.csat_sum, 0) AS csat_sum
FROM targets t
LEFT JOIN day_summary d ON d.customer_id = t.customer_id
LEFT JOIN money m ON m.customer_id = t.customer_id
LEFT JOIN breadth b ON b.customer_id = t.customer_id
LEFT JOIN complaint_state c ON c.customer_id = t.customer_id
LEFT JOIN referred r ON r.customer_id = t.customer_id
ORDER BY t.customer_id
"""
_EVERYONE = (
    "SELECT customer_id, CAST(:as_of AS timestamptz) AS as_of, facts_version FROM customer_values"
)
_SOME = (
    "SELECT t.customer_id, t.as_of, cv.facts_version "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:times AS timestamptz[])) AS t(customer_id, as_of) "
    "JOIN customer_values cv ON cv.customer_id = t.customer_id"
)
_MONEY = ("repeat_value", "gross", "refunded", "net_365d", "last_180d", "prior_180d")
_COUNTS = (
    "as_of_day",
    "first_day",
    "last_day",
    "purchase_days",
    "orders",
    "chargebacks",
    "categories",
    "referrals",
    "open_complaints",
    "csat_count",
    "csat_sum",
)


async def _awkward_ledgers(session: AsyncSession) -> list[uuid.UUID]:
    """Customers whose ledgers have every case the aggregates distinguish."""
    customers = [uuid.uuid4() for _ in range(6)]
    a, b, c, d, e, f = customers
    day = timedelta(days=1)
    purchases = [
        # (customer, purchased_at, amount, currency, categories)
        (a, T0 - 400 * day, "100.00", "USD", ["books", "music"]),
        (a, T0 - 400 * day + timedelta(hours=3), "50.5000", "USD", ["books"]),
        (a, T0 - 360 * day, "7.00", "USD", []),
        (a, T0 - 180 * day, "20.00", "USD", ["garden"]),
        (a, T0, "40.00", "USD", ["toys", "books"]),
        (a, T0 + timedelta(seconds=1), "999.00", "USD", ["late"]),
        (a, T0 - 10 * day, "300.00", "EUR", ["foreign"]),
        (b, T0 - 30 * day, "12.3456", "USD", []),
        (c, T0 + day, "5.00", "USD", ["future"]),
        # More categories than the purchase query has slots for, one of them twice.
        (b, T0 - 20 * day, "3.00", "USD", ["kitchen", "toys", "sports", "apparel", "kitchen"]),
    ]
    purchase_ids = []
    for customer, at, amount, currency, categories in purchases:
        purchase_id = uuid.uuid4()
        purchase_ids.append(purchase_id)
        await session.execute(
            text(
                "INSERT INTO purchases (purchase_id, customer_id, order_id, purchased_at, "
                "purchase_day, amount, currency, categories) VALUES (:id, :c, :o, :at, "
                "CAST((CAST(:at AS timestamptz) AT TIME ZONE 'UTC') AS date), :amount, :cur, "
                "CAST(:cats AS varchar[]))"
            ),
            {
                "id": purchase_id,
                "c": customer,
                "o": f"order-{purchase_id.hex[:8]}",
                "at": at,
                "amount": Decimal(amount),
                "cur": currency,
                "cats": categories,
            },
        )
    refunds = [
        # (purchase index, refunded_at, amount, chargeback)
        (0, T0 - 390 * day, "30.00", False),
        (0, T0 - 380 * day, "90.00", True),  # together more than the purchase: capped
        (3, T0 - 100 * day, "5.00", True),
        (4, T0 + day, "40.00", False),  # after as_of
        (7, T0 - 29 * day, "0.3456", False),
    ]
    for index, at, amount, chargeback in refunds:
        await session.execute(
            text(
                "INSERT INTO refunds (refund_id, purchase_id, customer_id, refunded_at, amount, "
                "currency, chargeback) VALUES (:id, :p, :c, :at, :amount, 'USD', :cb)"
            ),
            {
                "id": uuid.uuid4(),
                "p": purchase_ids[index],
                "c": purchases[index][0],
                "at": at,
                "amount": Decimal(amount),
                "cb": chargeback,
            },
        )
    complaints = [
        # (customer, opened_at, closed_at, satisfaction)
        (a, T0 - 20 * day, None, None),
        (a, T0 - 20 * day, T0 - 2 * day, 2),
        (a, T0 - 20 * day, T0 - day, None),
        (d, T0 - 20 * day, T0 + day, 5),
        (d, T0 + day, None, None),
    ]
    for customer, opened, closed, satisfaction in complaints:
        await session.execute(
            text(
                "INSERT INTO complaints (complaint_id, customer_id, opened_at, closed_at, "
                "satisfaction, status, status_at) VALUES (:id, :c, :o, :cl, :s, :st, :o)"
            ),
            {
                "id": uuid.uuid4(),
                "c": customer,
                "o": opened,
                "cl": closed,
                "s": satisfaction,
                "st": "closed" if closed else "received",
            },
        )
    for referred, referrer, at in [(e, a, T0 - day), (f, a, T0 + day), (uuid.uuid4(), e, T0)]:
        await session.execute(
            text(
                "INSERT INTO referrals (customer_id, referrer_id, registered_at) "
                "VALUES (:c, :r, :at)"
            ),
            {"c": referred, "r": referrer, "at": at},
        )
    await session.execute(
        text(
            "INSERT INTO customer_values (customer_id, facts_version) "
            "SELECT c, 1 FROM unnest(CAST(:ids AS uuid[])) AS c"
        ),
        {"ids": customers},
    )
    return customers


async def _same_as_oracle(
    session: AsyncSession, facts: Facts, targets: str, params: dict[str, Any]
) -> None:
    rows = (await session.execute(text(_ORACLE.format(targets=targets)), params)).mappings().all()
    assert facts.ids() == [row["customer_id"] for row in rows]
    assert facts.facts_version.tolist() == [row["facts_version"] for row in rows]
    ledger = facts.ledger
    for name in _COUNTS:
        assert getattr(ledger, name).tolist() == [row[name] for row in rows], name
    for name in _MONEY:
        assert getattr(ledger, name).tolist() == [int(row[name] * 10_000) for row in rows], name
    for name in ("first_purchase_at", "last_purchase_at"):
        expected = [micros(row[name]) if row[name] else 0 for row in rows]
        assert getattr(ledger, name).tolist() == expected, name


async def test_facts_of_everyone_and_of_some_equal_the_sql_definitions(scoring: Scoring) -> None:
    sessions = async_sessionmaker(scoring.engine, expire_on_commit=False)
    async with sessions() as session:
        awkward = await _awkward_ledgers(session)
        for as_of in (T0, T0 - timedelta(days=200)):
            everyone = await load_facts(session, currency="USD", as_of=as_of)
            assert len(everyone) >= len(scoring.population) + len(awkward)
            await _same_as_oracle(session, everyone, _EVERYONE, {"as_of": as_of})

        chosen = sorted([*awkward, *scoring.population[:40]])
        times: dict[uuid.UUID, datetime] = {
            c: T0 - timedelta(days=k % 50, hours=k) for k, c in enumerate(chosen)
        }
        some = await load_facts(session, currency="USD", customers=times)
        await _same_as_oracle(
            session, some, _SOME, {"ids": chosen, "times": [times[c] for c in chosen]}
        )
        by_id = dict(zip(some.ids(), range(len(some)), strict=True))
        first = by_id[awkward[0]]
        # The awkward customer's capped refund, its chargebacks and its two-purchase first day.
        assert some.ledger.refunded[first] > 0 and some.ledger.chargebacks[first] >= 1
        await session.rollback()


async def test_facts_read_from_stored_summaries_equal_the_sql_definitions(
    scoring: Scoring,
) -> None:
    """Handlers read a customer's purchases from their stored summary on: step by step, across
    every window's edge and at the summary's own instant, the facts stay the SQL definitions;
    a late purchase deletes its customer's summary and is counted."""
    sessions = async_sessionmaker(scoring.engine, expire_on_commit=False)
    async with sessions() as session:
        awkward = await _awkward_ledgers(session)
        chosen = sorted([*awkward, *scoring.population[:40]])
        connection = await raw_connection(session)

        async def step(days_before: int) -> dict[uuid.UUID, datetime]:
            times = {c: T0 - timedelta(days=days_before, hours=k % 5) for k, c in enumerate(chosen)}
            some = await load_facts(session, currency="USD", customers=times)
            await _same_as_oracle(
                session, some, _SOME, {"ids": chosen, "times": [times[c] for c in chosen]}
            )
            read_at = {c: times[c] for c in some.ids()}
            await save_summaries(connection, some, read_at, currency="USD", min_orders=1)
            return times

        for days_before in (400, 390, 200, 181, 100, 0, 0):
            times = await step(days_before)
        stored = dict(
            await connection.fetch(
                "SELECT customer_id, as_of FROM ledger_summaries WHERE customer_id = ANY($1)",
                chosen,
            )
        )
        assert len(stored) > 30
        assert stored == {c: times[c] for c in stored}
        # At the default threshold only the longer histories keep theirs; the others are re-read.
        some = await load_facts(session, currency="USD", customers=times)
        assert some.summary is not None
        longer = {
            c
            for c, orders in zip(some.ids(), some.summary.orders.tolist(), strict=True)
            if orders >= SUMMARY_MIN_ORDERS
        }
        assert 0 < len(longer) < len(chosen)
        await connection.execute("DELETE FROM ledger_summaries")
        await save_summaries(connection, some, {c: times[c] for c in some.ids()}, currency="USD")
        kept = await connection.fetch("SELECT customer_id FROM ledger_summaries")
        assert {row[0] for row in kept} == longer
        await step(0)
        summarized = {
            row[0]
            for row in await connection.fetch(
                "SELECT customer_id FROM ledger_summaries WHERE customer_id = ANY($1)", chosen
            )
        }

        late = awkward[1]
        assert late in summarized
        await connection.execute(
            _ADD_PURCHASES,
            [uuid.uuid4()],
            [late],
            ["late-order"],
            [T0 - timedelta(days=50)],
            [(T0 - timedelta(days=50)).date()],
            [Decimal("8.00")],
            ["USD"],
            ["{late}"],
        )
        left = await connection.fetch(
            "SELECT customer_id FROM ledger_summaries WHERE customer_id = ANY($1)", chosen
        )
        assert {row[0] for row in left} == summarized - {late}
        await step(0)
        await session.rollback()


async def test_binary_copy_round_trips_through_postgresql(scoring: Scoring) -> None:
    columns: bulk.Columns = (
        ("id", "uuid"),
        ("flag", "bool"),
        ("small", "int2"),
        ("count", "int4"),
        ("big", "int8"),
        ("ratio", "float8"),
        ("at", "timestamptz"),
    )
    rng = np.random.default_rng(5)
    n = 2000
    values = {
        "id": np.frombuffer(rng.bytes(16 * n), dtype="V16"),
        "flag": rng.random(n) < 0.5,
        "small": rng.integers(-(2**15), 2**15, n),
        "count": rng.integers(-(2**31), 2**31, n),
        "big": rng.integers(-(2**62), 2**62, n),
        "ratio": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "at": rng.integers(0, 2_000_000_000_000_000, n),
    }
    sessions = async_sessionmaker(scoring.engine)
    async with sessions() as session:
        connection = await raw_connection(session)
        await connection.execute(
            "CREATE TEMP TABLE bulk_check (k serial, id uuid, flag bool, small int2, count int4, "
            "big int8, ratio float8, at timestamptz) ON COMMIT DROP"
        )
        await bulk.write(connection, "bulk_check", columns, values)
        # What PostgreSQL made of them, read back as text by its own functions.
        first = await connection.fetchrow("SELECT * FROM bulk_check ORDER BY k LIMIT 1")
        assert first is not None
        assert first["id"] == uuid.UUID(bytes=values["id"][0].tobytes())
        assert micros(first["at"]) == int(values["at"][0])
        back = await bulk.read(
            connection,
            "SELECT id, flag, small, count, big, ratio, at FROM bulk_check ORDER BY k",
            columns=columns,
        )
        for name, column in values.items():
            np.testing.assert_array_equal(back[name], column, err_msg=name)
        nan_rows = await connection.fetchval("SELECT count(*) FROM bulk_check WHERE ratio = 'NaN'")
        assert nan_rows == int(np.isnan(values["ratio"]).sum())

        # The same rows packed by a query (what statements bound to arrays return).
        packed = (
            f"SELECT {bulk.packed(columns, [n for n, _ in columns], order_by='k')}, count(*) "
            "FROM bulk_check"
        )
        payload, rows = await connection.fetchrow(packed)
        for name, column in bulk.unpack(payload, columns, rows).items():
            np.testing.assert_array_equal(column, values[name], err_msg=name)
        # A NULL drops its row from the aggregate: the count tells.
        await connection.execute("UPDATE bulk_check SET big = NULL WHERE k = 2")
        payload, rows = await connection.fetchrow(packed)
        with pytest.raises(ValueError, match="a NULL"):
            bulk.unpack(payload, columns, rows)
        await session.rollback()
