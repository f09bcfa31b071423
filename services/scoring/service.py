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

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
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
    customer_lifetime_value,
    value_customers,
)
from services.scoring.domain._arrays import FloatArray
from services.scoring.facts import Facts, load_facts, raw_connection
from services.scoring.models import (
    Complaint,
    CustomerValue,
    ErasedCustomer,
    ModelPolicy,
    ModelVersion,
    Purchase,
    RecomputeRun,
    Referral,
    Refund,
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
from services.scoring.values import Scored, Written, store_values
from shared.errors import NotFound, PreconditionFailed
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev

_CENT = Decimal("0.01")


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


async def current_policy(session: AsyncSession) -> tuple[ValueModelPolicy, int]:
    row = await session.get(ModelPolicy, 1)
    if row is None:
        return ValueModelPolicy(), 0
    return ValueModelPolicy.model_validate(row.policy), row.version


async def current_model(session: AsyncSession) -> CurrentModel:
    model_id = (
        await session.execute(select(ModelVersion.id).where(ModelVersion.is_current))
    ).scalar_one_or_none()
    if model_id is None:
        policy, _ = await current_policy(session)
        return CurrentModel(None, policy, policy.clv.time_unit, None, None, _empty_reference())
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
    if bgnbd is None or gg is None or n == 0:
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
        spread(value.clv, 0.0),
        True,
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
        net_revenue=gross - refunded,
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


async def lock_values(
    session: AsyncSession, ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock the customers' value rows in id order (the order a recompute locks them in too)."""
    conn = await raw_connection(session)
    rows = await conn.fetch(_LOCK_SQL, sorted(set(ids)))
    return {row["customer_id"]: row for row in rows}


# --- incremental: events -> ledgers -> re-score the customers they touch ---------------------


def cause_of(event: CloudEvent[Any]) -> dict[str, Any]:
    return {"event_id": str(event.id), "type": event.type, "time": event.time.isoformat()}


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
    ids = sorted(targets)
    if facts_changed:
        await session.execute(
            pg_insert(CustomerValue)
            .values([{"customer_id": c} for c in ids])
            .on_conflict_do_nothing()
        )
    locked = await lock_values(session, ids)
    as_of: dict[uuid.UUID, datetime] = {}
    for customer_id in ids:
        if customer_id not in locked:
            continue
        times = [
            t for t in (targets[customer_id], locked[customer_id]["as_of"], default_as_of) if t
        ]
        if times:
            as_of[customer_id] = max(times)
    model = await current_model(session)
    facts = await load_facts(session, currency=settings.currency, customers=as_of)
    scored = score_against_model(facts, model)
    return await store_values(
        await raw_connection(session),
        facts,
        scored,
        causes=[causes.get(customer_id, []) for customer_id in facts.ids()],
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


async def erase_customers(
    session: AsyncSession, customer_ids: set[uuid.UUID], *, at: dict[uuid.UUID, datetime]
) -> None:
    """Right to be forgotten: every row about the customers goes; an id-only tombstone stays."""
    ids = list(customer_ids)
    for table in (Purchase, Refund, Complaint):
        await session.execute(delete(table).where(table.customer_id.in_(ids)))
    await session.execute(
        delete(Referral).where(Referral.customer_id.in_(ids) | Referral.referrer_id.in_(ids))
    )
    await session.execute(delete(CustomerValue).where(CustomerValue.customer_id.in_(ids)))
    await session.execute(
        pg_insert(ErasedCustomer)
        .values([{"customer_id": c, "erased_at": at[c]} for c in ids])
        .on_conflict_do_nothing()
    )


async def apply_events(
    session: AsyncSession, events: Sequence[CloudEvent[Any]], *, settings: ScoringSettings
) -> list[CloudEvent[Any]]:
    """Apply a batch of events to the ledgers (set-based) and re-score each touched customer once.

    Returns the value events to publish (the caller writes them to the outbox).
    """
    customer_of = {e.id: uuid.UUID(str(e.data.customer_id)) for e in events}
    tombstones = set(
        (
            await session.execute(
                select(ErasedCustomer.customer_id).where(
                    ErasedCustomer.customer_id.in_(set(customer_of.values()))
                )
            )
        ).scalars()
    )
    erased_now = {customer_of[e.id]: e.time for e in events if e.type == ev.CUSTOMER_ERASED}
    if erased_now:
        await erase_customers(session, set(erased_now), at=erased_now)
    gone = tombstones | set(erased_now)

    purchases: list[dict[str, Any]] = []
    refunds: list[dict[str, Any]] = []
    referrals: list[dict[str, Any]] = []
    complaint_events: list[CloudEvent[Any]] = []
    targets: dict[uuid.UUID, datetime] = {}
    causes: dict[uuid.UUID, list[dict[str, Any]]] = {}

    def touch(customer_id: uuid.UUID, event: CloudEvent[Any]) -> None:
        if customer_id in gone:
            return
        targets[customer_id] = max(targets.get(customer_id, event.time), event.time)
        causes.setdefault(customer_id, []).append(cause_of(event))

    for event in events:
        customer_id = customer_of[event.id]
        if customer_id in gone:
            continue
        data = event.data
        if event.type == ev.PURCHASE_RECORDED:
            categories = sorted({item.category for item in data.items if item.category})
            purchases.append(
                {
                    "purchase_id": data.purchase_id,
                    "customer_id": customer_id,
                    "order_id": data.order_id,
                    "purchased_at": event.time,
                    "purchase_day": event.time.astimezone(UTC).date(),
                    "amount": data.amount,
                    "currency": data.currency,
                    "categories": categories,
                }
            )
        elif event.type == ev.PURCHASE_REFUNDED:
            refunds.append(
                {
                    "refund_id": data.refund_id,
                    "purchase_id": data.purchase_id,
                    "customer_id": customer_id,
                    "refunded_at": event.time,
                    "amount": data.amount,
                    "currency": data.currency,
                    "chargeback": data.chargeback,
                }
            )
        elif event.type == ev.CUSTOMER_REGISTERED and data.referred_by is not None:
            referrals.append(
                {
                    "customer_id": customer_id,
                    "referrer_id": data.referred_by,
                    "registered_at": event.time,
                }
            )
            touch(uuid.UUID(str(data.referred_by)), event)
        elif event.type.startswith("crm.complaint."):
            complaint_events.append(event)
        touch(customer_id, event)

    if purchases:
        await session.execute(pg_insert(Purchase).values(purchases).on_conflict_do_nothing())
    if refunds:
        await session.execute(pg_insert(Refund).values(refunds).on_conflict_do_nothing())
    if referrals:
        await session.execute(pg_insert(Referral).values(referrals).on_conflict_do_nothing())
    if complaint_events:
        await _apply_complaints(session, complaint_events)
    result = await rescore(session, targets, causes=causes, settings=settings, facts_changed=True)
    return result.cloud_events()


async def _apply_complaints(session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    ids = {e.data.complaint_id for e in events}
    states = {
        row.complaint_id: _ComplaintState(
            row.customer_id,
            row.opened_at,
            row.closed_at,
            row.satisfaction,
            row.status,
            row.status_at,
        )
        for row in (
            await session.execute(
                select(Complaint).where(Complaint.complaint_id.in_(ids)).with_for_update()
            )
        ).scalars()
    }
    for event in events:
        state = states.get(event.data.complaint_id)
        if state is None:
            state = states[event.data.complaint_id] = _ComplaintState(
                uuid.UUID(str(event.data.customer_id)),
                event.time,
                None,
                None,
                "received",
                event.time,
            )
        state.apply(event)
    rows = [{"complaint_id": cid, **vars(state)} for cid, state in states.items()]
    statement = pg_insert(Complaint).values(rows)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Complaint.complaint_id],
            set_={
                name: statement.excluded[name]
                for name in ("opened_at", "closed_at", "satisfaction", "status", "status_at")
            },
        )
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
            expected_spend=row.expected_spend,
            clv=row.clv,
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
        aggregates=AggregatesRead.model_validate(row, from_attributes=True),
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
                revenue=tier_revenue,
                share_of_revenue=float(tier_revenue / revenue) if revenue else 0.0,
                average_clv=row.average_clv.quantize(_CENT)
                if row and row.average_clv is not None
                else None,
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
        revenue=revenue,
    )


async def pareto(session: AsyncSession, *, settings: ScoringSettings, points: int) -> ParetoRead:
    """Cumulative share of net revenue held by the top k% of customers (by net revenue)."""
    rows = (
        await session.execute(
            text(
                "WITH ranked AS (SELECT greatest(net_revenue, 0) AS revenue, "
                "row_number() OVER (ORDER BY net_revenue DESC, customer_id) AS position, "
                "count(*) OVER () AS customers FROM customer_values WHERE purchase_days > 0) "
                "SELECT ceil(CAST(:points AS numeric) * position / customers)::int AS bucket, "
                "max(customers) AS customers, sum(revenue) AS revenue "
                "FROM ranked GROUP BY bucket ORDER BY bucket"
            ),
            {"points": points},
        )
    ).all()
    customers = rows[0].customers if rows else 0
    total = sum((row.revenue for row in rows), Decimal(0))
    cumulative = Decimal(0)
    curve = []
    by_bucket = {row.bucket: row.revenue for row in rows}
    for bucket in range(1, points + 1):
        cumulative += by_bucket.get(bucket, Decimal(0))
        curve.append(
            ParetoPoint(
                customer_share=bucket / points,
                revenue_share=float(cumulative / total) if total else 0.0,
            )
        )
    top_20 = None
    if customers and total:
        top = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(revenue), 0) FROM (SELECT greatest(net_revenue, 0) AS revenue "
                    "FROM customer_values WHERE purchase_days > 0 ORDER BY net_revenue DESC, customer_id "
                    "LIMIT CAST(:top AS bigint)) AS best"
                ),
                {"top": max(1, math.floor(0.2 * customers + 1e-9))},
            )
        ).scalar_one()
        top_20 = float(top / total)
    return ParetoRead(
        currency=settings.currency,
        customers=customers,
        revenue=total,
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
    session: AsyncSession, *, policy: ValueModelPolicy, expected_version: int | None, now: datetime
) -> ValueModelUpdated:
    """Replace the policy (optimistic when `expected_version` is given) and queue a re-score."""
    row = (
        await session.execute(select(ModelPolicy).where(ModelPolicy.id == 1).with_for_update())
    ).scalar_one_or_none()
    current_version = row.version if row else 0
    if expected_version is not None and expected_version != current_version:
        raise PreconditionFailed(
            f"The model policy changed (version {current_version}, you sent {expected_version}); "
            "read it again and retry"
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
