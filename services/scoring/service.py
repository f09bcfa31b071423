"""Use cases of the scoring service: ledgers fed by events, incremental scoring, queries.

Money sums are exact (numeric in SQL, integers in NumPy, Decimal in Python) for what is stored
and shown; the models run on float64 copies. Every use case takes its business time (`as_of`)
explicitly. The batch recompute is in `recompute.py`; facts are read by `facts.py` and values
written by `values.py`, the same code for one customer and for a million.

Concurrency: event handlers hold the per-customer advisory lock (consumer runner) and lock
their customers' `customer_values` rows (`FOR UPDATE`, customer-id order) before reading them.
Every write of a value is conditional on the facts version it was computed from
(`facts_version` grows with every ledger change), so a recompute never overwrites a value
computed from newer facts, and the publish decision is taken on rows locked by the same
transaction, so one customer's events leave in order.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring.config import ScoringSettings
from services.scoring.domain import (
    BgNbdParameters,
    CustomerFacts,
    GammaGammaParameters,
    PopulationReference,
    TimeUnit,
    ValueModelPolicy,
    calibration_from_aggregates,
    concentration,
    customer_lifetime_value,
    value_customers,
)
from services.scoring.domain._arrays import FloatArray
from services.scoring.domain.errors import MoneyLimitExceeded
from services.scoring.domain.ledger import MONEY_SCALE
from services.scoring.facts import Facts, load_facts, raw_connection, save_summaries, sorted_ids
from services.scoring.models import (
    CustomerValue,
    ModelPolicy,
    ModelVersion,
    RecomputeRun,
)
from services.scoring.schemas import (
    AggregatesRead,
    CauseRead,
    ClvRead,
    CustomerValueRead,
    DimensionsRead,
    ExplanationRead,
    FittedModelRead,
    LoyaltyRead,
    ParetoPoint,
    ParetoRead,
    PyramidRead,
    PyramidTierRead,
    RecomputeRunRead,
    RfmRead,
    ValueModelRead,
    ValueModelUpdated,
)
from services.scoring.values import OutboxEvent, Scored, Written, store_values
from shared.errors import NotFound, PreconditionFailed
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.http.preconditions import IfMatch
from shared.money import in_minor_units

# --- the current model ------------------------------------------------------------------------


@dataclass(frozen=True)
class CurrentModel:
    """What scoring uses between recomputes: fitted parameters, reference and their policy."""

    version: str | None
    policy: ValueModelPolicy
    unit: TimeUnit
    bgnbd: BgNbdParameters | None
    gamma_gamma: GammaGammaParameters | None
    reference: PopulationReference


def _empty_reference() -> PopulationReference:
    return PopulationReference(
        as_of=datetime(1970, 1, 1, tzinfo=UTC),
        customers=0,
        frequency_breakpoints=[],
        dimension_breakpoints={},
        rfm_recency=[None] * 4,
        rfm_frequency=[None] * 4,
        rfm_monetary=[None] * 4,
        tier_min_score={},
    )


# Parsed current model per database (a cache: every replica reloads it when the version moves).
_model_cache: dict[int, CurrentModel] = {}
# Before the first recompute: the model of each policy version (a new policy bumps it).
_policy_model_cache: dict[int, CurrentModel] = {}
_CURRENT = (
    "SELECT (SELECT id FROM model_versions WHERE is_current), "
    "(SELECT version FROM model_policy WHERE id = 1)"
)


async def current_policy(session: AsyncSession) -> tuple[ValueModelPolicy, int]:
    row = await session.get(ModelPolicy, 1)
    if row is None:
        return ValueModelPolicy(), 0
    return ValueModelPolicy.model_validate(row.policy), row.version


async def current_model(session: AsyncSession) -> CurrentModel:
    """The current model version, or the policy before the first recompute: one small read,
    each parsed once per process (a new version or policy is read on the next call)."""
    current = await (await raw_connection(session)).fetchrow(_CURRENT)
    assert current is not None
    model_id, policy_version = current[0], current[1] or 0
    if model_id is None:
        cached = _policy_model_cache.get(policy_version)
        if cached is None:
            policy, version = await current_policy(session)
            cached = CurrentModel(
                None, policy, policy.clv.time_unit, None, None, _empty_reference()
            )
            if version != policy_version:  # changed since it was read: not cached
                return cached
            if len(_policy_model_cache) > 8:
                _policy_model_cache.clear()
            _policy_model_cache[policy_version] = cached
        return cached
    cached = _model_cache.get(model_id)
    if cached is not None:
        return cached
    row = await session.get(ModelVersion, model_id)
    assert row is not None
    model = CurrentModel(
        version=row.version,
        policy=ValueModelPolicy.model_validate(row.policy),
        unit=TimeUnit(row.time_unit),
        bgnbd=BgNbdParameters(**row.bgnbd["parameters"]) if row.bgnbd else None,
        gamma_gamma=(
            GammaGammaParameters(**row.gamma_gamma["parameters"]) if row.gamma_gamma else None
        ),
        reference=PopulationReference.model_validate(row.reference),
    )
    if len(_model_cache) > 8:
        _model_cache.clear()
    _model_cache[model_id] = model
    return model


# --- scoring ------------------------------------------------------------------------------------


def calibration_and_clv(
    facts: Facts,
    model_unit: TimeUnit,
    bgnbd: BgNbdParameters | None,
    gg: GammaGammaParameters | None,
    policy: ValueModelPolicy,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, bool]:
    """P(alive), expected purchases and spend, CLV per customer (NaN/0 without the models)."""
    n = len(facts)
    nan = np.full(n, np.nan)
    if bgnbd is None or n == 0:
        return nan, nan, nan, np.zeros(n), False
    ledger = facts.ledger
    calibration = calibration_from_aggregates(
        first_purchase_day=ledger.first_day,
        last_purchase_day=ledger.last_day,
        purchase_days=ledger.purchase_days,
        repeat_value=facts.money("repeat_value"),
        as_of_day=ledger.as_of_day,
        unit=model_unit,
    )
    bought = calibration.has_purchase
    value = customer_lifetime_value(
        bgnbd,
        gg,
        calibration.x[bought],
        calibration.t_x[bought],
        calibration.T[bought],
        np.maximum(calibration.m_x[bought], 0.0),
        unit=model_unit,
        horizon_weeks=policy.clv.horizon_weeks,
        annual_discount_rate=policy.clv.annual_discount_rate,
        margin=policy.clv.margin,
    )

    def spread(values: FloatArray, fill: float) -> FloatArray:
        full = np.full(n, fill)
        full[bought] = values
        return full

    return (
        spread(value.probability_alive, np.nan),
        spread(value.expected_purchases, np.nan),
        spread(value.expected_spend, np.nan),
        spread(value.clv if gg is not None else np.zeros_like(value.clv), 0.0),
        gg is not None,  # without Gamma-Gamma: P(alive) and purchases, no CLV
    )


def customer_facts(facts: Facts, clv: FloatArray) -> CustomerFacts:
    ledger = facts.ledger
    bought = ledger.purchase_days > 0
    gross = facts.money("gross")
    refunded = facts.money("refunded")
    return CustomerFacts.of(
        purchase_days=ledger.purchase_days,
        recency_days=np.where(bought, ledger.as_of_day - ledger.last_day, 0),
        tenure_days=np.where(bought, ledger.as_of_day - ledger.first_day, 0),
        # Subtracted exactly (integers), then scaled: 128.2 - 28.2 in floats is not 100.0, and
        # customers tied on net revenue must tie in the RFM ranks and boundaries.
        net_revenue=(ledger.gross - ledger.refunded) / MONEY_SCALE,
        net_revenue_365d=facts.money("net_365d"),
        revenue_last_180d=facts.money("last_180d"),
        revenue_prior_180d=facts.money("prior_180d"),
        gross_revenue=gross,
        refunded_revenue=refunded,
        chargebacks=ledger.chargebacks,
        categories=ledger.categories,
        referrals=ledger.referrals,
        clv=clv,
        csat_sum=ledger.csat_sum,
        csat_count=ledger.csat_count,
        open_complaints=ledger.open_complaints,
    )


def score_against_model(facts: Facts, model: CurrentModel) -> Scored:
    """Incremental path: customers scored against the current model's population."""
    p_alive, purchases, spend, clv, has_clv = calibration_and_clv(
        facts, model.unit, model.bgnbd, model.gamma_gamma, model.policy
    )
    valuation = value_customers(
        customer_facts(facts, clv),
        policy=model.policy,
        reference=model.reference,
        as_of_day=facts.ledger.as_of_day,
    )
    return Scored(valuation, p_alive, purchases, spend, clv, has_clv)


_LOCK_SQL = (
    "SELECT customer_id, facts_version, as_of FROM customer_values "
    "WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id FOR UPDATE"
)


# New customers' rows are made and everyone's locked in one round trip. The rows the INSERT
# makes are not in the SELECT's snapshot: they come from its RETURNING, locked by being ours. (A
# row another transaction made meanwhile would be in neither: handlers make them under the
# customer's advisory lock, which this batch holds.)
_CREATE_AND_LOCK_SQL = (
    "WITH created AS (INSERT INTO customer_values (customer_id) SELECT unnest($1::uuid[]) "
    "ON CONFLICT DO NOTHING RETURNING customer_id, facts_version, as_of), "
    f"locked AS ({_LOCK_SQL}) "
    "SELECT * FROM (SELECT * FROM created UNION ALL SELECT * FROM locked) AS value_rows "
    "ORDER BY customer_id"
)


async def lock_values(
    session: AsyncSession, ids: Iterable[uuid.UUID], *, create: bool = False
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock the customers' value rows in id order (the order a recompute locks them in too);
    with `create`, the rows of customers without one are made first."""
    conn = await raw_connection(session)
    rows = await conn.fetch(_CREATE_AND_LOCK_SQL if create else _LOCK_SQL, sorted_ids(set(ids)))
    return {row["customer_id"]: row for row in rows}


# --- incremental: events -> ledgers -> re-score the customers they touch ---------------------


def cause_of(event: CloudEvent[Any]) -> dict[str, Any]:
    # orjson writes the id and the (UTC) time as str() and isoformat() do, for less.
    return {"event_id": event.id, "type": event.type, "time": event.time}


async def rescore(
    session: AsyncSession,
    targets: Mapping[uuid.UUID, datetime | None],
    *,
    causes: Mapping[uuid.UUID, list[dict[str, Any]]],
    settings: ScoringSettings,
    facts_changed: bool,
    default_as_of: datetime | None = None,
    recompute: bool = False,
) -> Written:
    """Re-score customers with the current model at max(their business time, stored as_of).

    `facts_changed` bumps the customers' facts version (their ledgers changed in this
    transaction), which tells a concurrent recompute not to overwrite the new value, and
    creates the value rows of new customers; otherwise only existing rows are re-scored (a
    customer erased meanwhile stays erased). `recompute`: the causes are a recompute's, which
    replace the previous recompute's among the pending causes.
    """
    if not targets:
        return Written(0, [])
    ids = sorted_ids(targets)
    connection = await raw_connection(session)
    locked = await lock_values(session, ids, create=facts_changed)
    if not locked:
        return Written(0, [])
    as_of: dict[uuid.UUID, datetime] = {}
    for customer_id, row in locked.items():
        times = [t for t in (targets[customer_id], row["as_of"], default_as_of) if t]
        if times:
            as_of[customer_id] = max(times)
    # Read once the rows are locked: a model published while this waited is the one used.
    model = await current_model(session)
    facts = await load_facts(session, currency=settings.currency, customers=as_of)
    scored = score_against_model(facts, model)
    # Facts are of the customers of `as_of` (id order, as locked) that have a value row: all
    # of them when the counts agree, which saves making their ids again.
    scored_ids = list(as_of) if len(facts) == len(as_of) else facts.ids()
    read_at = as_of if len(facts) == len(as_of) else {c: as_of[c] for c in scored_ids}
    await save_summaries(connection, facts, read_at, currency=settings.currency)
    return await store_values(
        connection,
        facts,
        scored,
        causes=[causes.get(customer_id, []) for customer_id in scored_ids],
        cause_of=np.arange(len(facts)),
        model_version=model.version,
        policy=model.policy,
        currency=settings.currency,
        facts_changed=facts_changed,
        recompute=recompute,
    )


_OPEN_STATUSES = {
    ev.COMPLAINT_OPENED: "received",
    ev.COMPLAINT_ACKNOWLEDGED: "acknowledged",
    ev.COMPLAINT_ESCALATED: "escalated",
    ev.COMPLAINT_RESOLVED: "resolved",
    ev.COMPLAINT_REOPENED: "reopened",
}
CONSUMED_TYPES = (
    ev.CUSTOMER_REGISTERED,
    ev.CUSTOMER_ERASED,
    ev.PURCHASE_RECORDED,
    ev.PURCHASE_REFUNDED,
    ev.COMPLAINT_OPENED,
    ev.COMPLAINT_ACKNOWLEDGED,
    ev.COMPLAINT_ESCALATED,
    ev.COMPLAINT_RESOLVED,
    ev.COMPLAINT_CLOSED,
    ev.COMPLAINT_REOPENED,
)


@dataclass
class _ComplaintState:
    customer_id: uuid.UUID
    opened_at: datetime
    closed_at: datetime | None
    satisfaction: int | None
    status: str
    status_at: datetime

    def apply(self, event: CloudEvent[Any]) -> None:
        if event.type == ev.COMPLAINT_OPENED:
            self.opened_at = min(self.opened_at, event.time)
        if event.time < self.status_at:
            return  # an older step arriving late does not undo a newer one
        self.status_at = event.time
        if event.type == ev.COMPLAINT_CLOSED:
            self.status, self.closed_at, self.satisfaction = (
                "closed",
                event.time,
                event.data.satisfaction,
            )
        elif event.type != ev.COMPLAINT_OPENED or self.status == "received":
            self.status = _OPEN_STATUSES[event.type]
            if event.type == ev.COMPLAINT_REOPENED:
                self.closed_at, self.satisfaction = None, None


_ERASE = (
    "DELETE FROM purchases WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM refunds WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM complaints WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM referrals WHERE customer_id = ANY($1::uuid[]) OR referrer_id = ANY($1::uuid[])",
    "DELETE FROM customer_values WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM ledger_summaries WHERE customer_id = ANY($1::uuid[])",
)
_TOMBSTONES = "SELECT customer_id FROM erased_customers WHERE customer_id = ANY($1::uuid[])"
_ADD_TOMBSTONES = (
    "INSERT INTO erased_customers (customer_id, erased_at) "
    "SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) ON CONFLICT DO NOTHING"
)
# Each ledger written by one statement bound to arrays, whatever the batch size (prepared once);
# an event seen before (the same purchase, refund or registration) changes nothing. A purchase
# at or before a customer's summary (late) deletes the summary: the next read is of everything.
_ADD_PURCHASES = (
    "WITH added AS (INSERT INTO purchases (purchase_id, customer_id, order_id, purchased_at, "
    "purchase_day, amount, currency, categories) "
    "SELECT p.purchase_id, p.customer_id, p.order_id, p.purchased_at, p.purchase_day, p.amount, "
    "p.currency, CAST(p.categories AS varchar(100)[]) "
    "FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::date[], "
    "$6::numeric[], $7::text[], $8::text[]) AS p(purchase_id, customer_id, order_id, "
    "purchased_at, purchase_day, amount, currency, categories) "
    "ON CONFLICT DO NOTHING RETURNING customer_id, purchased_at) "
    "DELETE FROM ledger_summaries s USING added "
    "WHERE s.customer_id = added.customer_id AND added.purchased_at <= s.as_of"
)
_ADD_REFUNDS = (
    "INSERT INTO refunds (refund_id, purchase_id, customer_id, refunded_at, amount, currency, "
    "chargeback) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[], "
    "$5::numeric[], $6::text[], $7::bool[]) ON CONFLICT DO NOTHING"
)
_ADD_REFERRALS = (
    "INSERT INTO referrals (customer_id, referrer_id, registered_at) "
    "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) ON CONFLICT DO NOTHING"
)
_LOCK_COMPLAINTS = (
    "SELECT complaint_id, customer_id, opened_at, closed_at, satisfaction, status, status_at "
    "FROM complaints WHERE complaint_id = ANY($1::uuid[]) ORDER BY complaint_id FOR UPDATE"
)
_COMPLAINT_STATE = ("opened_at", "closed_at", "satisfaction", "status", "status_at")
_SAVE_COMPLAINTS = (
    "INSERT INTO complaints (complaint_id, customer_id, opened_at, closed_at, satisfaction, "
    "status, status_at) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], "
    "$4::timestamptz[], $5::int2[], $6::text[], $7::timestamptz[]) "
    "ON CONFLICT (complaint_id) DO UPDATE SET "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in _COMPLAINT_STATE)
)


@functools.lru_cache(maxsize=4096)
def _categories(names: frozenset[str]) -> str:
    """A purchase's categories, sorted, as a PostgreSQL array literal (a ragged list of lists
    cannot be bound as an array); cached: purchases share a few sets of categories."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in sorted(names))
    return "{" + ",".join(quoted) + "}"


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as the columns an unnest(...) statement is bound to."""
    return [list(column) for column in zip(*rows, strict=True)]


async def erase_customers(
    session: AsyncSession, customer_ids: set[uuid.UUID], *, at: dict[uuid.UUID, datetime]
) -> None:
    """Right to be forgotten: every row about the customers goes; an id-only tombstone stays."""
    ids = list(customer_ids)
    connection = await raw_connection(session)
    for statement in _ERASE:
        await connection.execute(statement, ids)
    await connection.execute(_ADD_TOMBSTONES, ids, [at[c] for c in ids])


async def apply_events(
    session: AsyncSession, events: Sequence[CloudEvent[Any]], *, settings: ScoringSettings
) -> list[OutboxEvent]:
    """Apply a batch of events to the ledgers (set-based) and re-score each touched customer once.

    A fixed number of statements whatever the batch size, each bound to arrays on the driver
    connection (no per-row statements, no SQLAlchemy compilation). Returns the value events it
    wrote to the outbox.
    """
    connection = await raw_connection(session)
    tombstones = {
        row[0]
        for row in await connection.fetch(_TOMBSTONES, list({e.data.customer_id for e in events}))
    }
    erased_now = {e.data.customer_id: e.time for e in events if e.type == ev.CUSTOMER_ERASED}
    if erased_now:
        await erase_customers(session, set(erased_now), at=erased_now)
    gone = tombstones | set(erased_now)

    purchases: list[tuple[Any, ...]] = []
    refunds: list[tuple[Any, ...]] = []
    referrals: list[tuple[Any, ...]] = []
    complaint_events: list[CloudEvent[Any]] = []
    targets: dict[uuid.UUID, datetime] = {}
    causes: dict[uuid.UUID, list[dict[str, Any]]] = {}

    def touch(customer_id: uuid.UUID, event: CloudEvent[Any]) -> None:
        if customer_id in gone:
            return
        targets[customer_id] = max(targets.get(customer_id, event.time), event.time)
        causes.setdefault(customer_id, []).append(cause_of(event))

    for event in events:
        data = event.data
        customer_id = data.customer_id
        if customer_id in gone:
            continue
        if event.type == ev.PURCHASE_RECORDED:
            purchases.append(
                (
                    data.purchase_id,
                    customer_id,
                    data.order_id,
                    event.time,
                    event.time.astimezone(UTC).date(),
                    data.amount,
                    data.currency,
                    _categories(frozenset(item.category for item in data.items if item.category)),
                )
            )
        elif event.type == ev.PURCHASE_REFUNDED:
            refunds.append(
                (
                    data.refund_id,
                    data.purchase_id,
                    customer_id,
                    event.time,
                    data.amount,
                    data.currency,
                    data.chargeback,
                )
            )
        elif event.type == ev.CUSTOMER_REGISTERED and data.referred_by is not None:
            referrals.append((customer_id, data.referred_by, event.time))
            touch(data.referred_by, event)
        elif event.type.startswith("crm.complaint."):
            complaint_events.append(event)
        touch(customer_id, event)

    for statement, rows in (
        (_ADD_PURCHASES, purchases),
        (_ADD_REFUNDS, refunds),
        (_ADD_REFERRALS, referrals),
    ):
        if rows:
            await connection.execute(statement, *_columns(rows))
    if complaint_events:
        await _apply_complaints(connection, complaint_events)
    try:
        result = await rescore(
            session, targets, causes=causes, settings=settings, facts_changed=True
        )
    except asyncpg.NumericValueOutOfRangeError as exc:
        if not purchases:
            raise
        # Predictions are capped at Money's limit (values.py): what overflows is a sum of
        # purchases. In a batch the runner redoes each event alone, and this names the one.
        raise MoneyLimitExceeded(
            "`data.amount`: the customer's purchases would total more than Money holds "
            "(99999999999999.9999); the purchase is refused and their values stay as they were"
        ) from exc
    return result.events


async def _apply_complaints(connection: asyncpg.Connection, events: list[CloudEvent[Any]]) -> None:
    ids = list({e.data.complaint_id for e in events})
    states = {
        row["complaint_id"]: _ComplaintState(
            row["customer_id"],
            row["opened_at"],
            row["closed_at"],
            row["satisfaction"],
            row["status"],
            row["status_at"],
        )
        for row in await connection.fetch(_LOCK_COMPLAINTS, ids)
    }
    for event in events:
        state = states.get(event.data.complaint_id)
        if state is None:
            state = states[event.data.complaint_id] = _ComplaintState(
                event.data.customer_id,
                event.time,
                None,
                None,
                "received",
                event.time,
            )
        state.apply(event)
    await connection.execute(
        _SAVE_COMPLAINTS,
        *_columns(
            [
                (complaint_id, state.customer_id, *(getattr(state, c) for c in _COMPLAINT_STATE))
                for complaint_id, state in states.items()
            ]
        ),
    )


# --- the recompute queue (runs are executed by recompute.py) -----------------------------


async def request_recompute(
    session: AsyncSession, *, as_of: datetime, time_unit: TimeUnit, trigger: str, now: datetime
) -> RecomputeRun:
    run = RecomputeRun(
        id=uuid.uuid4(),
        status="pending",
        trigger=trigger,
        as_of=as_of,
        time_unit=time_unit.value,
        requested_at=now,
        customers_total=0,
        customers_scored=0,
        events_published=0,
        timings={},
    )
    session.add(run)
    await session.flush()
    return run


def run_read(run: RecomputeRun) -> RecomputeRunRead:
    total = run.customers_total or 0
    progress = (
        1.0
        if run.status == "succeeded"
        else (min(1.0, run.customers_scored / total) if total else 0.0)
    )
    return RecomputeRunRead(
        id=run.id,
        status=run.status,
        trigger=run.trigger,
        as_of=run.as_of,
        time_unit=TimeUnit(run.time_unit),
        requested_at=run.requested_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        phase=run.phase,
        customers_total=run.customers_total,
        customers_scored=run.customers_scored,
        progress=progress,
        events_published=run.events_published,
        model_version=run.model_version,
        timings=run.timings or {},
        error=run.error,
    )


async def read_run(session: AsyncSession, run_id: uuid.UUID) -> RecomputeRunRead:
    run = await session.get(RecomputeRun, run_id)
    if run is None:
        raise NotFound(f"No recompute run {run_id}")
    return run_read(run)


# --- queries and the model policy --------------------------------------------------------------


#: The money of AggregatesRead, read in the currency's minor units.
_AGGREGATE_MONEY = (
    "gross_revenue",
    "refunded_revenue",
    "net_revenue",
    "net_revenue_365d",
    "revenue_last_180d",
    "revenue_prior_180d",
)


def _money(amount: Decimal | None, currency: str | None) -> Decimal | None:
    """Money as every service writes it ("389.70" USD, not the column's "389.7000"); without a
    currency (no purchase yet) with two places."""
    return None if amount is None else in_minor_units(amount, currency or "")


def _aggregates(row: CustomerValue) -> AggregatesRead:
    aggregates = AggregatesRead.model_validate(row, from_attributes=True)
    return aggregates.model_copy(
        update={name: _money(getattr(aggregates, name), row.currency) for name in _AGGREGATE_MONEY}
    )


async def read_value(session: AsyncSession, customer_id: uuid.UUID) -> CustomerValueRead:
    row = await session.get(CustomerValue, customer_id)
    if row is None:
        raise NotFound(f"No value for customer {customer_id}")
    model = await current_model(session)
    scored = row.score is not None
    dimensions = (
        DimensionsRead(
            current_contribution=row.dim_current,
            future_contribution=row.dim_future,
            credit=row.dim_credit,
            loyalty=row.dim_loyalty,
            growth_potential=row.dim_growth,
        )
        if scored
        else None
    )
    rfm = (
        RfmRead(
            recency=row.rfm_recency,
            frequency=row.rfm_frequency,
            monetary=row.rfm_monetary,
            segment=row.rfm_segment,
        )
        if scored and row.rfm_segment is not None
        else None
    )
    clv = (
        ClvRead(
            p_alive=row.p_alive,
            expected_purchases=row.expected_purchases,
            expected_spend=_money(row.expected_spend, row.currency),
            clv=_money(row.clv, row.currency),
            horizon_weeks=model.policy.clv.horizon_weeks,
            time_unit=model.unit,
        )
        if scored
        else None
    )
    loyalty = (
        LoyaltyRead(
            index=row.loyalty_index,
            behavioural=row.behavioural_loyalty,
            attitudinal=row.attitudinal_loyalty,
            satisfaction=row.satisfaction,
            dick_basu=row.dick_basu,
            jones_sasser=row.jones_sasser,
        )
        if row.loyalty_index is not None
        else None
    )
    return CustomerValueRead(
        customer_id=row.customer_id,
        as_of=row.as_of,
        model_version=row.model_version,
        currency=row.currency,
        score=row.score,
        tier=row.tier,
        dimensions=dimensions,
        rfm=rfm,
        clv=clv,
        loyalty=loyalty,
        aggregates=_aggregates(row),
        explanation=ExplanationRead(
            published_score=row.published_score,
            published_tier=row.published_tier,
            published_at=row.published_at,
            published_because=[CauseRead.model_validate(c) for c in row.published_because],
            since_published=[CauseRead.model_validate(c) for c in row.pending_causes],
        ),
    )


async def pyramid(session: AsyncSession, *, settings: ScoringSettings) -> PyramidRead:
    rows = (
        await session.execute(
            text(
                "SELECT tier, count(*) AS customers, coalesce(sum(net_revenue), 0) AS revenue, "
                "avg(clv) AS average_clv, avg(score) AS average_score "
                "FROM customer_values WHERE purchase_days > 0 GROUP BY tier"
            )
        )
    ).all()
    without = (
        await session.execute(text("SELECT count(*) FROM customer_values WHERE purchase_days = 0"))
    ).scalar_one()
    by_tier = {row.tier: row for row in rows}
    customers = sum(row.customers for row in rows)
    revenue = sum((row.revenue for row in rows), Decimal(0))
    model = await current_model(session)
    tiers = []
    for tier in p.Tier:
        row = by_tier.get(tier.value)
        tier_revenue = row.revenue if row else Decimal(0)
        tiers.append(
            PyramidTierRead(
                tier=tier,
                customers=row.customers if row else 0,
                share_of_customers=(row.customers / customers) if row and customers else 0.0,
                revenue=in_minor_units(tier_revenue, settings.currency),
                share_of_revenue=float(tier_revenue / revenue) if revenue else 0.0,
                average_clv=_money(row.average_clv, settings.currency) if row else None,
                average_score=float(row.average_score)
                if row and row.average_score is not None
                else None,
            )
        )
    return PyramidRead(
        model_version=model.version,
        currency=settings.currency,
        tiers=tiers,
        customers_with_purchase=customers,
        customers_without_purchase=without,
        revenue=in_minor_units(revenue, settings.currency),
    )


async def pareto(session: AsyncSession, *, settings: ScoringSettings, points: int) -> ParetoRead:
    """Cumulative share of net revenue held by the top k% of customers (by net revenue): the
    Lorenz curve of `domain.concentration`, read at `points` even shares and at 20%."""
    customers, total = (
        await session.execute(
            text(
                "SELECT count(*), coalesce(sum(greatest(net_revenue, 0)), 0) "
                "FROM customer_values WHERE purchase_days > 0"
            )
        )
    ).one()
    shares = [Fraction(k, points) for k in range(1, points + 1)]
    top_fifth = Fraction(1, 5)
    needed = concentration.positions_needed(customers, [*shares, top_fifth])
    revenue: dict[int, Decimal] = {}
    cumulative: dict[int, Decimal] = {}
    if needed:
        # One ranked pass; only the ranks the curve is read at come back.
        rows = await session.execute(
            text(
                "SELECT position, revenue, cumulative FROM ("
                "SELECT greatest(net_revenue, 0) AS revenue, row_number() OVER w AS position, "
                "sum(greatest(net_revenue, 0)) OVER w AS cumulative "
                "FROM customer_values WHERE purchase_days > 0 "
                "WINDOW w AS (ORDER BY net_revenue DESC, customer_id ROWS UNBOUNDED PRECEDING)"
                ") AS ranked WHERE position = ANY(CAST(:positions AS bigint[]))"
            ),
            {"positions": sorted(needed)},
        )
        for row in rows:
            revenue[row.position] = row.revenue
            cumulative[row.position] = row.cumulative

    def held(share: Fraction) -> float:
        return concentration.share_held(
            share, customers=customers, revenue=revenue, cumulative=cumulative
        )

    curve = [
        ParetoPoint(customer_share=float(share), revenue_share=held(share)) for share in shares
    ]
    top_20 = held(top_fifth) if customers and total else None
    return ParetoRead(
        currency=settings.currency,
        customers=customers,
        revenue=in_minor_units(total, settings.currency),
        top_20_percent_revenue_share=top_20,
        points=curve,
    )


async def read_model(session: AsyncSession) -> ValueModelRead:
    policy, version = await current_policy(session)
    current = (
        await session.execute(select(ModelVersion).where(ModelVersion.is_current))
    ).scalar_one_or_none()
    last_run = (
        await session.execute(
            select(RecomputeRun).order_by(RecomputeRun.requested_at.desc()).limit(1)
        )
    ).scalar_one_or_none()
    return ValueModelRead(
        policy=policy,
        policy_version=version,
        current=FittedModelRead.model_validate(current, from_attributes=True) if current else None,
        last_run=run_read(last_run) if last_run else None,
    )


async def update_policy(
    session: AsyncSession, *, policy: ValueModelPolicy, if_match: IfMatch | None, now: datetime
) -> ValueModelUpdated:
    """Replace the policy (optimistic when `if_match` is given) and queue a re-score."""
    row = (
        await session.execute(select(ModelPolicy).where(ModelPolicy.id == 1).with_for_update())
    ).scalar_one_or_none()
    current_version = row.version if row else 0
    if if_match is not None and not if_match.admits(current_version):
        raise PreconditionFailed(
            f"The model policy changed (version {current_version}, you sent "
            f"{if_match.describe()}); read it again and retry"
        )
    document = policy.model_dump(mode="json")
    if row is None:
        session.add(ModelPolicy(id=1, policy=document, version=1, updated_at=now))
    else:
        row.policy, row.version, row.updated_at = document, row.version + 1, now
    await session.flush()
    run = await request_recompute(
        session, as_of=now, time_unit=policy.clv.time_unit, trigger="policy", now=now
    )
    model = await read_model(session)
    return ValueModelUpdated(**model.model_dump(), recompute=run_read(run))
