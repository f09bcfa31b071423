"""Use cases of the scoring service: ledgers fed by events, incremental and batch scoring, queries.

Money sums are exact (numeric in SQL, Decimal in Python) for what is stored and shown; the
models run on float64 copies. Every use case takes its business time (`as_of`) explicitly.

Concurrency: event handlers hold the per-customer advisory lock (consumer runner) and lock
their customers' `customer_values` rows (`FOR UPDATE`, customer-id order) before reading them.
Every write of a value is conditional on the facts version it was computed from
(`facts_version` grows with every ledger change), so a recompute never overwrites a value
computed from newer facts, and the publish decision is taken on the row the same statement
locked, so one customer's events leave in order. A recompute chunk that deadlocks with a
handler batch is retried.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import orjson
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring.config import ScoringSettings
from services.scoring.domain import (
    BgNbdParameters,
    CustomerFacts,
    GammaGammaParameters,
    ModelFitError,
    PopulationReference,
    TimeUnit,
    Valuation,
    ValueModelPolicy,
    calibration_from_aggregates,
    customer_lifetime_value,
    fit_bgnbd,
    fit_gamma_gamma,
    value_customers,
    value_population,
)
from services.scoring.domain.composite import Dimension
from services.scoring.domain.publishing import publish_mask, tier_changed_mask
from services.scoring.models import (
    MESSAGING,
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
from shared.clock import Clock
from shared.db import SessionFactory, transaction
from shared.errors import NotFound, PreconditionFailed
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.outbox import add_events
from shared.observability.logging import get_logger

log = get_logger(__name__)

SOURCE = "/crm/scoring"
# Causes kept per customer between two published scores (the latest ones).
MAX_CAUSES = 20
_EPOCH_DAY = date(1970, 1, 1)
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


# --- facts: per-customer aggregates at a business time, set-based ------------------------------

_FACTS_SQL = """
WITH targets AS ({targets}),
refunded AS (
    SELECT r.purchase_id, sum(r.amount) AS amount,
           count(*) FILTER (WHERE r.chargeback) AS chargebacks
    FROM refunds r JOIN targets t ON t.customer_id = r.customer_id
    WHERE r.refunded_at <= t.as_of AND r.currency = $1
    GROUP BY r.purchase_id
),
bought AS (
    SELECT p.customer_id, t.as_of, p.purchased_at, p.purchase_day, p.amount, p.categories,
           least(coalesce(f.amount, 0), p.amount) AS refunded,
           coalesce(f.chargebacks, 0) AS chargebacks
    FROM purchases p JOIN targets t ON t.customer_id = p.customer_id
    LEFT JOIN refunded f ON f.purchase_id = p.purchase_id
    WHERE p.purchased_at <= t.as_of AND p.currency = $1
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
SELECT t.customer_id, t.facts_version, t.as_of,
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
_SOME_CUSTOMERS = (
    "SELECT t.customer_id, t.as_of, cv.facts_version "
    "FROM unnest($2::uuid[], $3::timestamptz[]) AS t(customer_id, as_of) "
    "JOIN customer_values cv ON cv.customer_id = t.customer_id"
)
_ALL_CUSTOMERS = "SELECT customer_id, $2::timestamptz AS as_of, facts_version FROM customer_values"


@dataclass
class Facts:
    """Aggregates of many customers (sorted by id) at their business times; money both exact
    (Decimal, to store and show) and as float64 (for the models)."""

    customer_ids: list[uuid.UUID]
    facts_version: np.ndarray
    as_of: list[datetime]
    as_of_day: np.ndarray
    first_day: np.ndarray
    last_day: np.ndarray
    purchase_days: np.ndarray
    repeat_value: np.ndarray
    orders: np.ndarray
    first_purchase_at: list[datetime | None]
    last_purchase_at: list[datetime | None]
    money: dict[str, list[Decimal]]
    chargebacks: np.ndarray
    categories: np.ndarray
    referrals: np.ndarray
    open_complaints: np.ndarray
    csat_count: np.ndarray
    csat_sum: np.ndarray

    def __len__(self) -> int:
        return len(self.customer_ids)

    def amount(self, name: str) -> np.ndarray:
        return np.fromiter(self.money[name], dtype=np.float64, count=len(self))

    def take(self, positions: Sequence[int]) -> Facts:
        index = np.asarray(positions, dtype=np.int64)
        pick = [int(i) for i in index]
        values: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                values[name] = value[index]
            elif isinstance(value, list):
                values[name] = [value[i] for i in pick]
            else:
                values[name] = {k: [v[i] for i in pick] for k, v in value.items()}
        return Facts(**values)


_MONEY_COLUMNS = ("gross", "refunded", "net_365d", "last_180d", "prior_180d")


async def _raw(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection of the session's transaction (for COPY and bulk fetches)."""
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
    """Facts of the given customers at their own as_of, or of every customer at `as_of`."""
    conn = await _raw(session)
    if customers is not None:
        ids = sorted(customers)
        records = await conn.fetch(
            _FACTS_SQL.format(targets=_SOME_CUSTOMERS),
            currency,
            ids,
            [customers[c] for c in ids],
        )
    else:
        assert as_of is not None
        records = await conn.fetch(_FACTS_SQL.format(targets=_ALL_CUSTOMERS), currency, as_of)
    n = len(records)

    def column(name: str, dtype: type = np.float64) -> np.ndarray:
        return np.fromiter((r[name] for r in records), dtype=dtype, count=n)

    return Facts(
        customer_ids=[r["customer_id"] for r in records],
        facts_version=column("facts_version", np.int64),
        as_of=[r["as_of"] for r in records],
        as_of_day=column("as_of_day", np.int64),
        first_day=column("first_day", np.int64),
        last_day=column("last_day", np.int64),
        purchase_days=column("purchase_days", np.int64),
        repeat_value=column("repeat_value"),
        orders=column("orders", np.int64),
        first_purchase_at=[r["first_purchase_at"] for r in records],
        last_purchase_at=[r["last_purchase_at"] for r in records],
        money={name: [r[name] for r in records] for name in _MONEY_COLUMNS},
        chargebacks=column("chargebacks", np.int64),
        categories=column("categories", np.int64),
        referrals=column("referrals", np.int64),
        open_complaints=column("open_complaints", np.int64),
        csat_count=column("csat_count", np.int64),
        csat_sum=column("csat_sum", np.int64),
    )


# --- scoring -----------------------------------------------------------------------------------


@dataclass
class Scored:
    """Model outputs per customer, aligned with the Facts they came from."""

    valuation: Valuation
    p_alive: np.ndarray
    expected_purchases: np.ndarray
    expected_spend: np.ndarray
    clv: np.ndarray
    has_clv: bool


def _calibration_and_clv(
    facts: Facts,
    model_unit: TimeUnit,
    bgnbd: BgNbdParameters | None,
    gg: GammaGammaParameters | None,
    policy: ValueModelPolicy,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    n = len(facts)
    nan = np.full(n, np.nan)
    if bgnbd is None or gg is None or n == 0:
        return nan, nan, nan, np.zeros(n), False
    calibration = calibration_from_aggregates(
        first_purchase_day=facts.first_day,
        last_purchase_day=facts.last_day,
        purchase_days=facts.purchase_days,
        repeat_value=facts.repeat_value,
        as_of_day=facts.as_of_day,
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

    def spread(values: np.ndarray, fill: float) -> np.ndarray:
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


def customer_facts(facts: Facts, clv: np.ndarray) -> CustomerFacts:
    bought = facts.purchase_days > 0
    gross = facts.amount("gross")
    refunded = facts.amount("refunded")
    return CustomerFacts.of(
        purchase_days=facts.purchase_days,
        recency_days=np.where(bought, facts.as_of_day - facts.last_day, 0),
        tenure_days=np.where(bought, facts.as_of_day - facts.first_day, 0),
        net_revenue=gross - refunded,
        net_revenue_365d=facts.amount("net_365d"),
        revenue_last_180d=facts.amount("last_180d"),
        revenue_prior_180d=facts.amount("prior_180d"),
        gross_revenue=gross,
        refunded_revenue=refunded,
        chargebacks=facts.chargebacks,
        categories=facts.categories,
        referrals=facts.referrals,
        clv=clv,
        csat_sum=facts.csat_sum,
        csat_count=facts.csat_count,
        open_complaints=facts.open_complaints,
    )


def score_against_model(facts: Facts, model: CurrentModel) -> Scored:
    """Incremental path: customers scored against the current model's population."""
    p_alive, purchases, spend, clv, has_clv = _calibration_and_clv(
        facts, model.unit, model.bgnbd, model.gamma_gamma, model.policy
    )
    valuation = value_customers(
        customer_facts(facts, clv),
        policy=model.policy,
        reference=model.reference,
        as_of_day=facts.as_of_day,
    )
    return Scored(valuation, p_alive, purchases, spend, clv, has_clv)


@dataclass
class Refit:
    bgnbd: dict[str, Any] | None
    gamma_gamma: dict[str, Any] | None
    fit_error: str | None
    fit_seconds: float
    scored: Scored
    reference: PopulationReference
    seconds: dict[str, float] = field(default_factory=dict)


def _fit_record(fit: Any, carried_from: str | None = None) -> dict[str, Any]:
    record = {
        name: getattr(fit, name)
        for name in ("log_likelihood", "n_customers", "iterations")
        if hasattr(fit, name)
    }
    for name in ("n_repeat_customers", "n_distinct_rows", "frequency_spend_correlation"):
        if hasattr(fit, name):
            record[name] = getattr(fit, name)
    record["parameters"] = vars_of(fit.parameters)
    record["standard_errors"] = vars_of(fit.standard_errors) if fit.standard_errors else None
    if carried_from is not None:
        record["carried_over_from"] = carried_from
    return record


def vars_of(parameters: Any) -> dict[str, float]:
    return {name: float(getattr(parameters, name)) for name in parameters.__slots__}


def refit_and_score(
    facts: Facts,
    *,
    as_of: datetime,
    unit: TimeUnit,
    policy: ValueModelPolicy,
    previous: CurrentModel,
) -> Refit:
    """Batch path (CPU only, run in a thread): fit both models on the purchasers, score everyone.

    When the data cannot support a fit, the error is kept and the previous parameters (same
    unit) are carried over, or CLV stays unknown.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    calibration = calibration_from_aggregates(
        first_purchase_day=facts.first_day,
        last_purchase_day=facts.last_day,
        purchase_days=facts.purchase_days,
        repeat_value=facts.repeat_value,
        as_of_day=facts.as_of_day,
        unit=unit,
    )
    bought = calibration.has_purchase
    x, t_x, age = calibration.x[bought], calibration.t_x[bought], calibration.T[bought]
    spend = np.maximum(calibration.m_x[bought], 0.0)
    bgnbd_record: dict[str, Any] | None = None
    gg_record: dict[str, Any] | None = None
    bgnbd: BgNbdParameters | None = None
    gg: GammaGammaParameters | None = None
    fit_error = None
    try:
        minimum = policy.clv.min_repeat_customers
        bgnbd_fit = fit_bgnbd(x, t_x, age, min_repeat_customers=minimum)
        gg_fit = fit_gamma_gamma(x, spend, min_repeat_customers=minimum)
        bgnbd, gg = bgnbd_fit.parameters, gg_fit.parameters
        bgnbd_record, gg_record = _fit_record(bgnbd_fit), _fit_record(gg_fit)
    except ModelFitError as exc:
        fit_error = str(exc)
        if previous.version and previous.unit is unit and previous.bgnbd and previous.gamma_gamma:
            bgnbd, gg = previous.bgnbd, previous.gamma_gamma
            bgnbd_record = {"parameters": vars_of(bgnbd), "carried_over_from": previous.version}
            gg_record = {"parameters": vars_of(gg), "carried_over_from": previous.version}
    fit_seconds = time.perf_counter() - started
    seconds["fit"] = fit_seconds

    started = time.perf_counter()
    p_alive, purchases, expected, clv, has_clv = _calibration_and_clv(
        facts, unit, bgnbd, gg, policy
    )
    seconds["clv"] = time.perf_counter() - started
    started = time.perf_counter()
    valuation, reference = value_population(customer_facts(facts, clv), policy=policy, as_of=as_of)
    seconds["valuation"] = time.perf_counter() - started
    return Refit(
        bgnbd=bgnbd_record,
        gamma_gamma=gg_record,
        fit_error=fit_error,
        fit_seconds=fit_seconds,
        scored=Scored(valuation, p_alive, purchases, expected, clv, has_clv),
        reference=reference,
        seconds=seconds,
    )


# --- writing values and what they publish -----------------------------------------------------

_VALUE_COLUMNS = (
    "customer_id",
    "facts_version",
    "as_of",
    "model_version",
    "currency",
    "orders",
    "purchase_days",
    "first_purchase_at",
    "last_purchase_at",
    "gross_revenue",
    "refunded_revenue",
    "net_revenue_365d",
    "revenue_last_180d",
    "revenue_prior_180d",
    "chargebacks",
    "categories",
    "referrals",
    "open_complaints",
    "closed_complaints_with_csat",
    "mean_csat",
    "score",
    "tier",
    "dim_current",
    "dim_future",
    "dim_credit",
    "dim_loyalty",
    "dim_growth",
    "rfm_recency",
    "rfm_frequency",
    "rfm_monetary",
    "rfm_segment",
    "behavioural_loyalty",
    "attitudinal_loyalty",
    "satisfaction",
    "loyalty_index",
    "dick_basu",
    "jones_sasser",
    "p_alive",
    "expected_purchases",
    "expected_spend",
    "clv",
)
_DIMENSION_COLUMNS = {
    Dimension.CURRENT_CONTRIBUTION: "dim_current",
    Dimension.FUTURE_CONTRIBUTION: "dim_future",
    Dimension.CREDIT: "dim_credit",
    Dimension.LOYALTY: "dim_loyalty",
    Dimension.GROWTH_POTENTIAL: "dim_growth",
}
# Staged rows: the value columns, the facts version they were computed from, the causes to add.
_STAGED_COLUMNS = (*_VALUE_COLUMNS, "expected_version", "new_causes")
_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_values "
    "(LIKE customer_values INCLUDING DEFAULTS, expected_version bigint, new_causes jsonb) "
    "ON COMMIT DELETE ROWS"
)
# The published_* columns are not set here, so RETURNING shows what consumers last saw; the
# UPDATE row-locks what it writes, so that stays true until the publish decision is written.
_UPDATE_FROM_STAGE_SQL = (
    "UPDATE customer_values cv SET "
    + ", ".join(f"{c} = s.{c}" for c in _VALUE_COLUMNS[1:])
    + ", net_revenue = s.gross_revenue - s.refunded_revenue"
    + ", pending_causes = jsonb_path_query_array(cv.pending_causes || s.new_causes, "
    + f"'$[last-{MAX_CAUSES - 1} to last]')"
    + ", updated_at = now() FROM staged_values s "
    + "WHERE cv.customer_id = s.customer_id AND cv.facts_version = s.expected_version "
    + "{forward}"
    + "RETURNING cv.customer_id, cv.published_at, cv.published_score, cv.published_tier, "
    + "cv.published_dick_basu, cv.published_jones_sasser"
)
# A value goes back in business time only when a recompute restates a past date: otherwise a
# run as of an earlier time (the nightly one, as of its hour) leaves a newer value to its
# catch-up, which re-scores it with the new model at its own as_of.
_UPDATE_FORWARD_SQL = _UPDATE_FROM_STAGE_SQL.format(
    forward="AND (cv.as_of IS NULL OR cv.as_of <= s.as_of) "
)
_UPDATE_FROM_STAGE_SQL = _UPDATE_FROM_STAGE_SQL.format(forward="")
_PUBLISHED_SQL = (
    "UPDATE customer_values SET published_score = score, published_tier = tier, "
    "published_dick_basu = dick_basu, published_jones_sasser = jones_sasser, "
    "published_at = as_of, published_because = pending_causes, pending_causes = '[]'::jsonb "
    "WHERE customer_id = ANY($1::uuid[])"
)
_LOCK_SQL = (
    "SELECT customer_id, facts_version, as_of FROM customer_values "
    "WHERE customer_id = ANY($1::uuid[]) ORDER BY customer_id FOR UPDATE"
)


async def lock_values(
    session: AsyncSession, ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock the customers' value rows in id order (the order event handlers use)."""
    conn = await _raw(session)
    rows = await conn.fetch(_LOCK_SQL, sorted(set(ids)))
    return {row["customer_id"]: row for row in rows}


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in np.asarray(values, dtype=np.float64).tolist()]


def _money_column(values: np.ndarray) -> list[Decimal | None]:
    return [
        None if v != v else Decimal(f"{v:.2f}")
        for v in np.asarray(values, dtype=np.float64).tolist()
    ]


def _money(value: float) -> Decimal | None:
    return None if not math.isfinite(value) else Decimal(f"{value:.2f}")


@dataclass(frozen=True)
class StoreResult:
    written: int
    events: list[CloudEvent[Any]]


async def store_values(
    session: AsyncSession,
    facts: Facts,
    scored: Scored,
    *,
    causes: Mapping[uuid.UUID, list[dict[str, Any]]],
    model_version: str | None,
    policy: ValueModelPolicy,
    currency: str,
    expected_version: np.ndarray,
    new_version: np.ndarray,
    scored_positions: Sequence[int] | None = None,
    restate: bool = False,
) -> StoreResult:
    """Write the values of `facts` where the stored facts version is still `expected_version`,
    and build the events they publish.

    Column-wise: the rows go to a temporary table by COPY and into `customer_values` with one
    UPDATE that returns what was last published; the publish rule runs vectorised on that, and
    one more UPDATE records what is published. Nothing is published before the first recompute
    (no model version) or without a purchase (no score).
    """
    n = len(facts)
    if n == 0:
        return StoreResult(0, [])
    at = np.arange(n) if scored_positions is None else np.asarray(scored_positions, dtype=np.int64)
    valuation = scored.valuation
    score = valuation.score[at]
    has_score = ~np.isnan(score)
    tier = valuation.tier[at]
    dick_basu = valuation.loyalty.dick_basu[at]
    jones_sasser = valuation.loyalty.jones_sasser[at]
    clv = np.where(has_score & scored.has_clv, scored.clv[at], np.nan)
    p_alive = np.where(has_score, scored.p_alive[at], np.nan)

    def scored_only(values: np.ndarray) -> list[Any]:
        return [
            v if ok else None for v, ok in zip(values.tolist(), has_score.tolist(), strict=True)
        ]

    csat_count = facts.csat_count
    mean_csat = np.where(csat_count > 0, facts.csat_sum / np.maximum(csat_count, 1), np.nan)
    loyalty = valuation.loyalty
    no_causes = "[]"
    columns: list[list[Any]] = [
        facts.customer_ids,
        new_version.tolist(),
        facts.as_of,
        [model_version] * n,
        [currency] * n,
        facts.orders.tolist(),
        facts.purchase_days.tolist(),
        facts.first_purchase_at,
        facts.last_purchase_at,
        facts.money["gross"],
        facts.money["refunded"],
        facts.money["net_365d"],
        facts.money["last_180d"],
        facts.money["prior_180d"],
        facts.chargebacks.tolist(),
        facts.categories.tolist(),
        facts.referrals.tolist(),
        facts.open_complaints.tolist(),
        csat_count.tolist(),
        _nullable(mean_csat),
        _nullable(score),
        tier.tolist(),
        *(_nullable(valuation.dimensions[d][at]) for d in _DIMENSION_COLUMNS),
        scored_only(valuation.rfm.recency[at]),
        scored_only(valuation.rfm.frequency[at]),
        scored_only(valuation.rfm.monetary[at]),
        valuation.rfm.segment[at].tolist(),
        loyalty.behavioural[at].tolist(),
        loyalty.attitudinal[at].tolist(),
        loyalty.satisfaction[at].tolist(),
        loyalty.index[at].tolist(),
        dick_basu.tolist(),
        jones_sasser.tolist(),
        _nullable(p_alive),
        _nullable(np.where(has_score, scored.expected_purchases[at], np.nan)),
        _money_column(np.where(has_score, scored.expected_spend[at], np.nan)),
        _money_column(clv),
        expected_version.tolist(),
        [
            orjson.dumps(causes[c]).decode() if c in causes else no_causes
            for c in facts.customer_ids
        ],
    ]
    conn = await _raw(session)
    await conn.execute(_STAGE_SQL)
    await conn.copy_records_to_table(
        "staged_values", records=list(zip(*columns, strict=True)), columns=_STAGED_COLUMNS
    )
    written = await conn.fetch(_UPDATE_FROM_STAGE_SQL if restate else _UPDATE_FORWARD_SQL)
    if model_version is None or not written:
        return StoreResult(written=len(written), events=[])

    position = {customer_id: i for i, customer_id in enumerate(facts.customer_ids)}
    rows = np.array([position[r["customer_id"]] for r in written], dtype=np.int64)
    published_before = np.array([r["published_at"] is not None for r in written], dtype=np.bool_)
    previous_tier = [r["published_tier"] for r in written]
    publish = has_score[rows] & publish_mask(
        previously_published=published_before,
        previous_score=np.array(
            [np.nan if r["published_score"] is None else r["published_score"] for r in written]
        ),
        previous_tier=previous_tier,
        previous_dick_basu=[r["published_dick_basu"] for r in written],
        previous_jones_sasser=[r["published_jones_sasser"] for r in written],
        score=score[rows],
        tier=tier[rows],
        dick_basu=dick_basu[rows],
        jones_sasser=jones_sasser[rows],
        min_score_change=policy.publish_min_score_change,
    )
    moved_tier = publish & tier_changed_mask(
        previously_published=published_before, previous_tier=previous_tier, tier=tier[rows]
    )
    events: list[CloudEvent[Any]] = []
    publishers: list[uuid.UUID] = []
    for k in np.flatnonzero(publish).tolist():
        i = int(rows[k])
        customer_id, as_of, value = facts.customer_ids[i], facts.as_of[i], valuation.row(int(at[i]))
        publishers.append(customer_id)
        p_alive_i = None if math.isnan(p_alive[i]) else float(p_alive[i])
        events.append(
            _scored_event(
                customer_id, as_of, value, p_alive_i, _money(float(clv[i])), currency, model_version
            )
        )
        if moved_tier[k]:
            events.append(
                new_event(
                    type=ev.TIER_CHANGED,
                    source=SOURCE,
                    subject=customer_id,
                    time=as_of,
                    data=p.TierChanged(
                        customer_id=customer_id,
                        from_tier=previous_tier[k] if published_before[k] else None,
                        to_tier=value.tier,
                        score=_score_0_100(float(score[i])),
                        model_version=model_version,
                    ),
                )
            )
    if publishers:
        await conn.execute(_PUBLISHED_SQL, publishers)
    return StoreResult(written=len(written), events=events)


def _score_0_100(score: float) -> float:
    return min(100.0, max(0.0, score))


def _scored_event(
    customer_id: uuid.UUID,
    as_of: datetime,
    value: Any,
    p_alive: float | None,
    clv: Decimal | None,
    currency: str,
    model_version: str | None,
) -> CloudEvent[Any]:
    dimensions = value.dimensions
    rfm = (
        p.RfmScore(
            recency=value.rfm_recency,
            frequency=value.rfm_frequency,
            monetary=value.rfm_monetary,
            segment=value.rfm_segment,
        )
        if value.rfm_segment is not None
        else None
    )
    return new_event(
        type=ev.VALUE_SCORED,
        source=SOURCE,
        subject=customer_id,
        time=as_of,
        data=p.ValueScored(
            customer_id=customer_id,
            score=_score_0_100(value.score),
            dimensions=p.ValueDimensions(
                current=dimensions[Dimension.CURRENT_CONTRIBUTION],
                future=dimensions[Dimension.FUTURE_CONTRIBUTION],
                credit=dimensions[Dimension.CREDIT],
                loyalty=dimensions[Dimension.LOYALTY],
                growth=dimensions[Dimension.GROWTH_POTENTIAL],
            ),
            tier=value.tier,
            rfm=rfm,
            loyalty=p.LoyaltyScore(
                index=value.loyalty_index,
                behavioural=value.behavioural_loyalty,
                attitudinal=value.attitudinal_loyalty,
                dick_basu=value.dick_basu,
                jones_sasser=value.jones_sasser,
            ),
            p_alive=None if p_alive is None else min(1.0, max(0.0, p_alive)),
            clv=None if clv is None else max(clv, Decimal(0)),
            currency=currency if clv is not None else None,
            model_version=model_version,
        ),
    )


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
) -> StoreResult:
    """Re-score customers with the current model at max(their business time, stored as_of).

    `facts_changed` bumps the customers' facts version (their ledgers changed in this
    transaction), which tells a concurrent recompute not to overwrite the new value.
    """
    if not targets:
        return StoreResult(0, [])
    ids = sorted(targets)
    await session.execute(
        pg_insert(CustomerValue).values([{"customer_id": c} for c in ids]).on_conflict_do_nothing()
    )
    locked = await lock_values(session, ids)
    as_of: dict[uuid.UUID, datetime] = {}
    for customer_id in ids:
        times = [
            t for t in (targets[customer_id], locked[customer_id]["as_of"], default_as_of) if t
        ]
        if times:
            as_of[customer_id] = max(times)
    model = await current_model(session)
    facts = await load_facts(session, currency=settings.currency, customers=as_of)
    scored = score_against_model(facts, model)
    return await store_values(
        session,
        facts,
        scored,
        causes=causes,
        model_version=model.version,
        policy=model.policy,
        currency=settings.currency,
        expected_version=facts.facts_version,
        new_version=facts.facts_version + (1 if facts_changed else 0),
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
    return result.events


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


# --- batch: recompute ---------------------------------------------------------------------------


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


async def claim_pending_run(sessions: SessionFactory, *, now: datetime) -> uuid.UUID | None:
    async with transaction(sessions) as session:
        run = (
            await session.execute(
                select(RecomputeRun)
                .where(RecomputeRun.status == "pending")
                .order_by(RecomputeRun.requested_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if run is None:
            return None
        run.status, run.started_at, run.phase = "running", now, "loading facts"
        return run.id


async def _progress(sessions: SessionFactory, run_id: uuid.UUID, **values: Any) -> None:
    async with transaction(sessions) as session:
        await session.execute(
            update(RecomputeRun).where(RecomputeRun.id == run_id).values(**values)
        )


def restates(run: RecomputeRun) -> bool:
    """A recompute requested for a past date is a restatement: values as of that date."""
    return run.trigger == "api" and run.as_of < run.requested_at


async def run_recompute(
    sessions: SessionFactory, run_id: uuid.UUID, *, settings: ScoringSettings, clock: Clock
) -> None:
    """Refit the models on purchases up to the run's as_of and re-score every customer.

    Safe while events keep arriving: the new model becomes current before the values are
    written, a customer whose facts changed after they were read keeps the handler's value,
    and every customer not yet on the new model is re-scored incrementally at the end.
    A run requested for a past date restates every value as of that date (`restates`); any
    other run leaves values newer than its as_of to the catch-up.
    """
    timings: dict[str, float] = {}
    try:
        async with transaction(sessions) as session:
            run = await session.get(RecomputeRun, run_id)
            if run is None:
                raise NotFound(f"No recompute run {run_id}")
            as_of, unit, restate = run.as_of, TimeUnit(run.time_unit), restates(run)
            policy, _ = await current_policy(session)
            previous = await current_model(session)

        started = time.perf_counter()
        async with transaction(sessions) as session:
            facts = await load_facts(session, currency=settings.currency, as_of=as_of)
        timings["load_facts"] = time.perf_counter() - started
        await _progress(sessions, run_id, phase="fitting", customers_total=len(facts))

        refit = await asyncio.to_thread(
            refit_and_score, facts, as_of=as_of, unit=unit, policy=policy, previous=previous
        )
        timings |= refit.seconds
        version = await _publish_model(
            sessions,
            run_id=run_id,
            refit=refit,
            facts=facts,
            as_of=as_of,
            unit=unit,
            policy=policy,
            currency=settings.currency,
        )
        await _progress(sessions, run_id, phase="writing values", model_version=version)

        started = time.perf_counter()
        written, published = await _write_population(
            sessions,
            run_id,
            facts,
            refit.scored,
            version=version,
            policy=policy,
            settings=settings,
            as_of=as_of,
            restate=restate,
        )
        timings["write_values"] = time.perf_counter() - started
        started = time.perf_counter()
        caught_up, caught_up_published = await _catch_up(
            sessions, version=version, settings=settings, as_of=as_of
        )
        timings["catch_up"] = time.perf_counter() - started
        await _progress(
            sessions,
            run_id,
            status="succeeded",
            phase="done",
            finished_at=clock.now(),
            customers_scored=written + caught_up,
            events_published=published + caught_up_published,
            timings={k: round(v, 3) for k, v in timings.items()},
        )
        log.info("recompute.done", run_id=str(run_id), model_version=version, customers=len(facts))
    except Exception as exc:
        log.exception("recompute.failed", run_id=str(run_id))
        await _progress(
            sessions,
            run_id,
            status="failed",
            phase="failed",
            finished_at=clock.now(),
            error=f"{type(exc).__name__}: {exc}"[:2000],
            timings={k: round(v, 3) for k, v in timings.items()},
        )


async def _publish_model(
    sessions: SessionFactory,
    *,
    run_id: uuid.UUID,
    refit: Refit,
    facts: Facts,
    as_of: datetime,
    unit: TimeUnit,
    policy: ValueModelPolicy,
    currency: str,
) -> str:
    async with transaction(sessions) as session:
        await session.execute(
            update(ModelVersion).where(ModelVersion.is_current).values(is_current=False)
        )
        row = ModelVersion(
            version=f"pending-{run_id.hex[:24]}",
            is_current=True,
            run_id=run_id,
            as_of=as_of,
            time_unit=unit.value,
            currency=currency,
            bgnbd=refit.bgnbd,
            gamma_gamma=refit.gamma_gamma,
            fit_error=refit.fit_error,
            fit_seconds=round(refit.fit_seconds, 4),
            customers=len(facts),
            customers_with_purchase=int(np.count_nonzero(facts.purchase_days)),
            policy=policy.model_dump(mode="json"),
            reference=refit.reference.model_dump(mode="json"),
        )
        session.add(row)
        await session.flush()
        row.version = f"v{row.id}"
        return row.version


async def _write_population(
    sessions: SessionFactory,
    run_id: uuid.UUID,
    facts: Facts,
    scored: Scored,
    *,
    version: str,
    policy: ValueModelPolicy,
    settings: ScoringSettings,
    as_of: datetime,
    restate: bool,
) -> tuple[int, int]:
    cause = [{"type": "recompute", "run_id": str(run_id), "time": as_of.isoformat()}]
    written = published = 0
    chunk = settings.recompute_chunk_size
    for start in range(0, len(facts), chunk):
        positions = range(start, min(start + chunk, len(facts)))
        part = facts.take(positions)
        for attempt in range(1, 6):  # bounded: a deadlock with a handler batch is retried
            try:
                async with transaction(sessions) as session:
                    # A value whose facts moved since they were read is left to the handler's
                    # newer one (the version check), then re-scored by the catch-up.
                    result = await store_values(
                        session,
                        part,
                        scored,
                        causes=dict.fromkeys(part.customer_ids, cause),
                        model_version=version,
                        policy=policy,
                        currency=settings.currency,
                        expected_version=part.facts_version,
                        new_version=part.facts_version,
                        scored_positions=list(positions),
                        restate=restate,
                    )
                    await add_events(session, MESSAGING, result.events)
                    await session.execute(
                        update(RecomputeRun)
                        .where(RecomputeRun.id == run_id)
                        .values(
                            customers_scored=written + result.written,
                            events_published=published + len(result.events),
                        )
                    )
                break
            except DBAPIError as exc:
                if attempt == 5 or not _is_deadlock(exc):
                    raise
                log.warning("recompute.chunk_deadlock_retry", attempt=attempt)
        written += result.written
        published += len(result.events)
    return written, published


def _is_deadlock(exc: DBAPIError) -> bool:
    cause = getattr(exc.orig, "__cause__", None)
    return isinstance(exc.orig, asyncpg.DeadlockDetectedError) or isinstance(
        cause, asyncpg.DeadlockDetectedError
    )


async def _catch_up(
    sessions: SessionFactory, *, version: str, settings: ScoringSettings, as_of: datetime
) -> tuple[int, int]:
    """Re-score, with the new model, customers written meanwhile with another one."""
    scored = published = 0
    for _ in range(10_000):  # bounded: each round moves up to a chunk of customers to `version`
        async with transaction(sessions) as session:
            ids = list(
                (
                    await session.execute(
                        select(CustomerValue.customer_id)
                        .where(CustomerValue.model_version.is_distinct_from(version))
                        .order_by(CustomerValue.customer_id)
                        .limit(settings.recompute_chunk_size)
                    )
                ).scalars()
            )
            if not ids:
                break
            result = await rescore(
                session,
                dict.fromkeys(ids),
                causes={},
                settings=settings,
                facts_changed=False,
                default_as_of=as_of,
            )
            await add_events(session, MESSAGING, result.events)
            scored += result.written
            published += len(result.events)
    return scored, published


async def run_pending_recomputes(
    sessions: SessionFactory, *, settings: ScoringSettings, clock: Clock
) -> int:
    """Worker job: run requested recomputes one after the other (oldest first)."""
    done = 0
    for _ in range(100):  # bounded per tick; more wait for the next tick
        run_id = await claim_pending_run(sessions, now=clock.now())
        if run_id is None:
            break
        await run_recompute(sessions, run_id, settings=settings, clock=clock)
        done += 1
    return done


async def schedule_nightly_recompute(
    session: AsyncSession, *, settings: ScoringSettings, now: datetime
) -> RecomputeRun | None:
    """Request today's nightly recompute once its hour has come (as_of = that hour)."""
    if not settings.nightly_recompute:
        return None
    due = now.astimezone(UTC).replace(
        hour=settings.nightly_recompute_hour_utc, minute=0, second=0, microsecond=0
    )
    if now < due:
        return None
    already = (
        await session.execute(
            select(RecomputeRun.id)
            .where(RecomputeRun.trigger == "nightly", RecomputeRun.as_of == due)
            .limit(1)
        )
    ).scalar_one_or_none()
    if already is not None:
        return None
    policy, _ = await current_policy(session)
    return await request_recompute(
        session, as_of=due, time_unit=policy.clv.time_unit, trigger="nightly", now=now
    )


# --- queries and the model policy --------------------------------------------------------------


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
