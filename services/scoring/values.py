"""Writing values and the events they publish, column-wise (both the handlers and a recompute).

1. The new values go to a temporary table by binary COPY (`bulk`): enums as small codes, NULLs
   as sentinels (NaN, 0, the smallest int64) that the SQL turns back into NULL. A handler
   batch (up to `ARRAY_BOUND_LIMIT` customers) binds the same columns to arrays instead: the
   same statements read them from `unnest`, without the table's round trips.
2. One locking read returns what consumers last saw of the customers whose stored facts version
   is still the one the values were computed from (rows locked in customer-id order, the order
   the handlers use; a customer whose facts moved meanwhile keeps the newer value), and whose
   stored value is not newer in business time, unless a recompute restates a past date.
3. The publishing rule (`domain.publishing`) runs vectorised on that; one UPDATE writes the
   values, the causes and, for the publishers, what is published.
4. The event documents of the publishers, built from byte templates (a million Pydantic models
   would take longer than everything else together; a test checks the JSON against the
   contract models), go to the outbox with the values: in the UPDATE's statement for a handler
   batch, by COPY or one INSERT after it for a recompute chunk.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import AwareDatetime, TypeAdapter

from services.scoring import bulk
from services.scoring.domain import (
    DickBasuType,
    JonesSasserType,
    RfmSegment,
    Tier,
    ValueModelPolicy,
)
from services.scoring.domain._arrays import FloatArray, IntArray, ObjectArray
from services.scoring.domain.composite import Dimension
from services.scoring.domain.publishing import publish_mask, tier_changed_mask
from services.scoring.domain.valuation import Valuation
from services.scoring.facts import Facts, moment
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.outbox import COPY_THRESHOLD, outbox_insert
from shared.money import in_minor_units, minor_units

SOURCE = "/crm/scoring"
# Causes kept per customer between two published scores (the latest ones).
MAX_CAUSES = 20
# Money staged in cents; this one means NULL.
NO_MONEY = np.iinfo(np.int64).min
# About the largest amount of Money (max_digits=18, decimal_places=4), as a float (it rounds
# down to 99999999999999.98).
MAX_MONEY = 99_999_999_999_999.99


@dataclass
class Scored:
    """Model outputs per customer, aligned with the Facts they came from."""

    valuation: Valuation
    p_alive: FloatArray
    expected_purchases: FloatArray
    expected_spend: FloatArray
    clv: FloatArray
    has_clv: bool


@dataclass(frozen=True)
class Written:
    """How many values were written, and the events they publish."""

    values: int
    events: list[OutboxEvent]

    def cloud_events(self) -> list[CloudEvent[Any]]:
        """The events as contract models (what handlers emit)."""
        return [_EVENT_MODELS[e.type].model_validate_json(e.payload) for e in self.events]


_EVENT_MODELS: dict[str, Any] = {
    ev.VALUE_SCORED: CloudEvent[p.ValueScored],
    ev.TIER_CHANGED: CloudEvent[p.TierChanged],
}


# --- codes of the enum columns -----------------------------------------------------------------


def _members_sql(members: Sequence[StrEnum]) -> str:
    return "ARRAY[" + ", ".join(f"'{m.value}'" for m in members) + "]::text[]"


def _codes(values: ObjectArray, members: Sequence[StrEnum]) -> IntArray:
    """1-based position of each value among the members, 0 for None."""
    codes = np.zeros(len(values), dtype=np.int64)
    for code, member in enumerate(members, start=1):
        codes[values == member] = code
    return codes


def _decode(codes: IntArray, members: Sequence[StrEnum]) -> ObjectArray:
    return np.array([None, *members], dtype=object)[codes]


_TIERS, _SEGMENTS = tuple(Tier), tuple(RfmSegment)
_DICK_BASU, _JONES_SASSER = tuple(DickBasuType), tuple(JonesSasserType)
_DIMENSION_COLUMNS = {
    Dimension.CURRENT_CONTRIBUTION: "dim_current",
    Dimension.FUTURE_CONTRIBUTION: "dim_future",
    Dimension.CREDIT: "dim_credit",
    Dimension.LOYALTY: "dim_loyalty",
    Dimension.GROWTH_POTENTIAL: "dim_growth",
}

# --- SQL ----------------------------------------------------------------------------------------

_STAGED: bulk.Columns = (
    ("position", "int4"),
    ("customer_id", "uuid"),
    ("expected_version", "int8"),
    ("facts_version", "int8"),
    ("as_of", "timestamptz"),
    ("orders", "int4"),
    ("purchase_days", "int4"),
    ("first_purchase_at", "timestamptz"),
    ("last_purchase_at", "timestamptz"),
    ("gross_revenue", "int8"),
    ("refunded_revenue", "int8"),
    ("net_revenue_365d", "int8"),
    ("revenue_last_180d", "int8"),
    ("revenue_prior_180d", "int8"),
    ("chargebacks", "int4"),
    ("categories", "int4"),
    ("referrals", "int4"),
    ("open_complaints", "int4"),
    ("closed_complaints_with_csat", "int4"),
    ("mean_csat", "float8"),
    ("score", "float8"),
    ("tier", "int2"),
    *((column, "float8") for column in _DIMENSION_COLUMNS.values()),
    ("rfm_recency", "int2"),
    ("rfm_frequency", "int2"),
    ("rfm_monetary", "int2"),
    ("rfm_segment", "int2"),
    ("behavioural_loyalty", "float8"),
    ("attitudinal_loyalty", "float8"),
    ("satisfaction", "float8"),
    ("loyalty_index", "float8"),
    ("dick_basu", "int2"),
    ("jones_sasser", "int2"),
    ("p_alive", "float8"),
    ("expected_purchases", "float8"),
    ("expected_spend", "int8"),
    ("clv", "int8"),
    ("cause", "int4"),
)
_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_scores ("
    + ", ".join(f"{name} {pg_type} NOT NULL" for name, pg_type in _STAGED)
    + ") ON COMMIT DELETE ROWS"
)


def _nullable(column: str) -> str:
    return f"nullif(s.{column}, 'NaN')"


_MONEY = ("gross_revenue", "refunded_revenue", "net_revenue_365d")
_NEW_VALUES: dict[str, str] = {
    "facts_version": "s.facts_version",
    "as_of": "s.as_of",
    "model_version": "$1",
    "currency": "$2",
    "orders": "s.orders",
    "purchase_days": "s.purchase_days",
    "first_purchase_at": "CASE WHEN s.orders > 0 THEN s.first_purchase_at END",
    "last_purchase_at": "CASE WHEN s.orders > 0 THEN s.last_purchase_at END",
    **{c: f"s.{c} * 0.0001" for c in (*_MONEY, "revenue_last_180d", "revenue_prior_180d")},
    "net_revenue": "(s.gross_revenue - s.refunded_revenue) * 0.0001",
    **{
        c: f"s.{c}"
        for c in (
            "chargebacks",
            "categories",
            "referrals",
            "open_complaints",
            "closed_complaints_with_csat",
        )
    },
    "mean_csat": _nullable("mean_csat"),
    "score": _nullable("score"),
    "tier": f"({_members_sql(_TIERS)})[s.tier]",
    **{c: _nullable(c) for c in _DIMENSION_COLUMNS.values()},
    **{c: f"nullif(s.{c}, 0)" for c in ("rfm_recency", "rfm_frequency", "rfm_monetary")},
    "rfm_segment": f"({_members_sql(_SEGMENTS)})[s.rfm_segment]",
    **{
        c: f"s.{c}"
        for c in ("behavioural_loyalty", "attitudinal_loyalty", "satisfaction", "loyalty_index")
    },
    "dick_basu": f"({_members_sql(_DICK_BASU)})[s.dick_basu]",
    "jones_sasser": f"({_members_sql(_JONES_SASSER)})[s.jones_sasser]",
    "p_alive": _nullable("p_alive"),
    "expected_purchases": _nullable("expected_purchases"),
    **{c: f"nullif(s.{c}, {NO_MONEY}) * 0.01" for c in ("expected_spend", "clv")},
}
# The causes since the last published score: the latest MAX_CAUSES, and a recompute's cause
# replaces the previous recompute's ($5), so that nightly runs do not fill every row with them.
_CAUSES = (
    "CASE WHEN $5 THEN jsonb_path_query_array(cv.pending_causes, "
    "'$[*] ? (@.type != \"recompute\")') || ($3::jsonb[])[s.cause] "
    "ELSE jsonb_path_query_array(cv.pending_causes || ($3::jsonb[])[s.cause], "
    f"'$[last-{MAX_CAUSES - 1} to last]') END"
)
_PUBLISHED = {
    "published_score": "nullif(s.score, 'NaN')",
    "published_tier": _NEW_VALUES["tier"],
    "published_dick_basu": _NEW_VALUES["dick_basu"],
    "published_jones_sasser": _NEW_VALUES["jones_sasser"],
    "published_at": "s.as_of",
    "published_because": _CAUSES,
}
# The publishers' positions ($4): `= ANY` of a constant array (custom plans) is a hash lookup.
# (A join with unnest($4) was planned as a nested loop, one pass over the array per row: at a
# few hundred publishers per chunk that made the UPDATE four times slower.)
_PUBLISHES = "s.position = ANY($4::int4[])"
# Every SET expression sees the row as it was (SQL semantics), so `pending_causes` on the right
# is the old list; publishers move it, with the new causes, to `published_because`.
_UPDATE = (
    "UPDATE customer_values cv SET "
    + ", ".join(f"{column} = {value}" for column, value in _NEW_VALUES.items())
    + ", "
    + ", ".join(
        f"{column} = CASE WHEN {_PUBLISHES} THEN {value} ELSE cv.{column} END"
        for column, value in _PUBLISHED.items()
    )
    + f", pending_causes = CASE WHEN {_PUBLISHES} THEN '[]'::jsonb ELSE {_CAUSES} END"
    + ", updated_at = now() "
    + "FROM staged_scores s "
    + "WHERE cv.customer_id = s.customer_id AND "
)
_PUBLISHED_STATE = f"""
SELECT s.position, cv.published_at IS NOT NULL, coalesce(cv.published_score, 'NaN'),
       coalesce(array_position({_members_sql(_TIERS)}, cv.published_tier::text), 0)::int2,
       coalesce(array_position({_members_sql(_DICK_BASU)}, cv.published_dick_basu::text), 0)::int2,
       coalesce(array_position({_members_sql(_JONES_SASSER)}, cv.published_jones_sasser::text), 0)::int2
FROM staged_scores s JOIN customer_values cv ON cv.customer_id = s.customer_id
WHERE {{written}}
ORDER BY cv.customer_id
FOR UPDATE OF cv
"""


def _written(*, restate: bool, pages: tuple[str, str] | None) -> str:
    """The rows a write replaces: the locking read and the UPDATE must agree on them.

    Only values computed from the facts version the new ones were read at (a handler's newer
    value stays). A value goes back in business time only when a recompute restates a past
    date: otherwise a newer value stays too, and the catch-up re-scores it with the new model
    at its own as_of. With `pages` (first, last parameters), only rows on those heap pages
    (a TID range scan).
    """
    condition = "cv.facts_version = s.expected_version"
    if not restate:
        condition += " AND (cv.as_of IS NULL OR cv.as_of <= s.as_of)"
    if pages is not None:
        first, last = pages
        condition += (
            f" AND cv.ctid >= format('(%s,0)', {first}::int8)::tid"
            f" AND cv.ctid < format('(%s,0)', {last}::int8 + 1)::tid"
        )
    return condition


# (restate, on pages) -> statement
_UPDATES = {
    (restate, paged): _UPDATE + _written(restate=restate, pages=("$6", "$7") if paged else None)
    for restate in (False, True)
    for paged in (False, True)
}
_PUBLISHED_STATES = {
    (restate, paged): _PUBLISHED_STATE.format(
        written=_written(restate=restate, pages=("$1", "$2") if paged else None)
    )
    for restate in (False, True)
    for paged in (False, True)
}
_PUBLISHED_COLUMNS: bulk.Columns = (
    ("position", "int4"),
    ("published", "bool"),
    ("score", "float8"),
    ("tier", "int2"),
    ("dick_basu", "int2"),
    ("jones_sasser", "int2"),
)

# A handler batch (a few customers) is bound to arrays instead of staged by COPY: the temporary
# table cost three round trips (its setup, COPY's two) of a batch's thirteen, each one a wait for
# a busy PostgreSQL. Columns are bound as `_STAGED` has them, timestamptz as Unix microseconds.
ARRAY_BOUND_LIMIT = 100


def _array_source(columns: bulk.Columns, first: int) -> str:
    """`columns` bound to arrays from parameter `first` on, as a subquery named s."""
    bound = ", ".join(
        f"${k}::{'int8' if pg_type == 'timestamptz' else pg_type}[]"
        for k, (_, pg_type) in enumerate(columns, start=first)
    )
    selected = ", ".join(
        f"timestamptz 'epoch' + u.{name} * interval '1 microsecond' AS {name}"
        if pg_type == "timestamptz"
        else f"u.{name}"
        for name, pg_type in columns
    )
    names = ", ".join(name for name, _ in columns)
    return f"(SELECT {selected} FROM unnest({bound}) AS u({names})) AS s"


_STATE_KEYS: bulk.Columns = (
    ("position", "int4"),
    ("customer_id", "uuid"),
    ("expected_version", "int8"),
    ("as_of", "timestamptz"),
)
# The value rows through their primary key (`= ANY`), whatever the statistics say.
_BOUND_ROWS = "cv.customer_id = ANY($2::uuid[]) AND "
_ARRAY_PUBLISHED_STATES = {
    restate: _PUBLISHED_STATE.replace(
        "FROM staged_scores s JOIN", f"FROM {_array_source(_STATE_KEYS, 1)} JOIN"
    ).format(written=_BOUND_ROWS + _written(restate=restate, pages=None))
    for restate in (False, True)
}
_ARRAY_UPDATES = {
    restate: f"WITH published_events AS ({outbox_insert('outbox', 6 + len(_STAGED))}) "
    + _UPDATE.replace("FROM staged_scores s ", f"FROM {_array_source(_STAGED, 6)} ")
    + "cv.customer_id = ANY($7::uuid[]) AND "
    + _written(restate=restate, pages=None)
    for restate in (False, True)
}


def _bound(columns: bulk.Columns, staged: dict[str, NDArray[Any]]) -> list[list[Any]]:
    """The staged columns as lists for array parameters."""
    return [
        uuid_strings(staged[name]) if pg_type == "uuid" else staged[name].tolist()
        for name, pg_type in columns
    ]


def _cents(values: FloatArray) -> IntArray:
    """Predicted money (expected spend, CLV) in cents, at most what Money holds: a customer whose
    purchases approach its limit gets predictions beyond it, which neither the values' columns
    (numeric(18, 4)) nor the events' `clv` can carry (the purchase that got a customer there was
    dead-lettered as a numeric overflow)."""
    finite = np.isfinite(values)
    cents = np.rint(np.clip(np.where(finite, values, 0.0), -MAX_MONEY, MAX_MONEY) * 100)
    return np.where(finite, cents, NO_MONEY).astype(np.int64)


def _money_column(cents: IntArray, currency: str) -> list[bytes]:
    """Cents (NO_MONEY: none) as the events' Money, in the currency's minor units as every
    service writes money ("389.70" USD, "390" JPY, "389.700" KWD); never below zero."""
    amounts = [None if c == NO_MONEY else max(c, 0) for c in cents.tolist()]
    if minor_units(currency) == 2:
        return [b"null" if c is None else b'"%d.%02d"' % divmod(c, 100) for c in amounts]
    return [
        b"null" if c is None else b'"%s"' % _money_text(Decimal(c).scaleb(-2), currency)
        for c in amounts
    ]


def _money_text(amount: Decimal, currency: str) -> bytes:
    return format(in_minor_units(amount, currency), "f").encode()


def _staged_rows(
    facts: Facts,
    scored: Scored,
    at: IntArray,
    *,
    cause: IntArray,
    facts_changed: bool,
) -> dict[str, NDArray[Any]]:
    valuation, ledger, loyalty = scored.valuation, facts.ledger, scored.valuation.loyalty
    score = valuation.score[at]
    has_score = ~np.isnan(score)
    csat_count = ledger.csat_count
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_csat = np.where(csat_count > 0, ledger.csat_sum / csat_count, np.nan)
    return {
        "position": np.arange(len(facts)),
        "customer_id": facts.customer_ids,
        "expected_version": facts.facts_version,
        "facts_version": facts.facts_version + (1 if facts_changed else 0),
        "as_of": facts.as_of,
        "orders": ledger.orders,
        "purchase_days": ledger.purchase_days,
        "first_purchase_at": ledger.first_purchase_at,
        "last_purchase_at": ledger.last_purchase_at,
        "gross_revenue": ledger.gross,
        "refunded_revenue": ledger.refunded,
        "net_revenue_365d": ledger.net_365d,
        "revenue_last_180d": ledger.last_180d,
        "revenue_prior_180d": ledger.prior_180d,
        "chargebacks": ledger.chargebacks,
        "categories": ledger.categories,
        "referrals": ledger.referrals,
        "open_complaints": ledger.open_complaints,
        "closed_complaints_with_csat": csat_count,
        "mean_csat": mean_csat,
        "score": score,
        "tier": _codes(valuation.tier[at], _TIERS),
        **{
            column: valuation.dimensions[dimension][at]
            for dimension, column in _DIMENSION_COLUMNS.items()
        },
        "rfm_recency": np.where(has_score, valuation.rfm.recency[at], 0),
        "rfm_frequency": np.where(has_score, valuation.rfm.frequency[at], 0),
        "rfm_monetary": np.where(has_score, valuation.rfm.monetary[at], 0),
        "rfm_segment": _codes(valuation.rfm.segment[at], _SEGMENTS),
        "behavioural_loyalty": loyalty.behavioural[at],
        "attitudinal_loyalty": loyalty.attitudinal[at],
        "satisfaction": loyalty.satisfaction[at],
        "loyalty_index": loyalty.index[at],
        "dick_basu": _codes(loyalty.dick_basu[at], _DICK_BASU),
        "jones_sasser": _codes(loyalty.jones_sasser[at], _JONES_SASSER),
        "p_alive": np.where(has_score, scored.p_alive[at], np.nan),
        "expected_purchases": np.where(has_score, scored.expected_purchases[at], np.nan),
        "expected_spend": _cents(np.where(has_score, scored.expected_spend[at], np.nan)),
        "clv": _cents(np.where(has_score & scored.has_clv, scored.clv[at], np.nan)),
        "cause": cause,
    }


class _Laps:
    """Adds the seconds since the previous lap to `timings[phase]` (when timings are kept)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.started = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self.started
        self.started = now


async def _staged_state(
    connection: asyncpg.Connection,
    staged: dict[str, NDArray[Any]],
    *,
    restate: bool,
    pages: tuple[int, int] | None,
) -> dict[str, NDArray[Any]]:
    """Stage the values in the temporary table (COPY) and lock the rows they replace."""
    # A cached generic plan cannot see the chunk's page range nor how many rows were staged,
    # and may loop over the page range once per staged row: plan every execution.
    setup = [_STAGE_TABLE, "SET LOCAL plan_cache_mode = force_custom_plan"]
    if pages is None:
        # Some customers (the catch-up): their rows through the primary key. While the table's
        # statistics lag behind its growth (a new database), the planner hashed the whole
        # table for every batch instead.
        setup += ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off"]
    await connection.execute("; ".join(setup))  # one round trip
    await bulk.write(connection, "staged_scores", _STAGED, staged)
    return await bulk.read(
        connection,
        _PUBLISHED_STATES[restate, pages is not None],
        *(pages or ()),
        columns=_PUBLISHED_COLUMNS,
    )


def _state_columns(rows: Sequence[asyncpg.Record]) -> dict[str, NDArray[Any]]:
    """The locking read's rows as the columns `bulk.read` gives."""
    return {
        "position": np.array([r[0] for r in rows], dtype=np.int64),
        "published": np.array([r[1] for r in rows], dtype=np.bool_),
        "score": np.array([r[2] for r in rows], dtype=np.float64),
        **{
            name: np.array([r[k] for r in rows], dtype=np.int64)
            for k, name in enumerate(("tier", "dick_basu", "jones_sasser"), start=3)
        },
    }


async def store_values(
    connection: asyncpg.Connection,
    facts: Facts,
    scored: Scored,
    *,
    rows: IntArray | None = None,
    pages: tuple[int, int] | None = None,
    causes: Sequence[list[dict[str, Any]]],
    cause_of: IntArray | None = None,
    model_version: str | None,
    policy: ValueModelPolicy,
    currency: str,
    facts_changed: bool,
    recompute: bool = False,
    restate: bool = False,
    timings: dict[str, float] | None = None,
) -> Written:
    """Write the values of `facts` (`scored[rows]` are theirs) where the stored facts version is
    still the one they were read at, and the events they publish to the outbox.

    `pages` (first, last) says the value rows were on those heap pages when the facts were
    read: a recompute chunk then reads just those pages (a TID range scan) instead of the
    table; a row that has moved since is not written (the catch-up re-scores it).

    `causes[cause_of[k]]` are the causes of customer k (all of them `causes[0]` by default);
    a `recompute`'s cause replaces the previous recompute's among the pending causes.
    Nothing is published before the first recompute (no model version) or without a score.
    A stored value newer than the new one is kept unless `restate` (a recompute for a past
    date); the rows not written are left to the caller (a recompute's catch-up).
    """
    n = len(facts)
    if n == 0:
        return Written(0, [])
    lap = _Laps(timings)
    at = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    cause = np.ones(n, dtype=np.int64) if cause_of is None else np.asarray(cause_of) + 1
    staged = _staged_rows(facts, scored, at, cause=cause, facts_changed=facts_changed)
    bound = pages is None and n <= ARRAY_BOUND_LIMIT
    if bound:
        state = _state_columns(
            await connection.fetch(_ARRAY_PUBLISHED_STATES[restate], *_bound(_STATE_KEYS, staged))
        )
        lap("write_lock")
    else:
        state = await _staged_state(connection, staged, restate=restate, pages=pages)
        lap("write_lock")
    locked = state["position"]
    score = staged["score"][locked]
    tier = scored.valuation.tier[at][locked]
    dick_basu = scored.valuation.loyalty.dick_basu[at][locked]
    jones_sasser = scored.valuation.loyalty.jones_sasser[at][locked]
    previous_tier = _decode(state["tier"], _TIERS)
    publish = np.zeros(len(locked), dtype=np.bool_)
    if model_version is not None:
        publish = ~np.isnan(score) & publish_mask(
            previously_published=state["published"],
            previous_score=state["score"],
            previous_tier=previous_tier,
            previous_dick_basu=_decode(state["dick_basu"], _DICK_BASU),
            previous_jones_sasser=_decode(state["jones_sasser"], _JONES_SASSER),
            score=score,
            tier=tier,
            dick_basu=dick_basu,
            jones_sasser=jones_sasser,
            min_score_change=policy.publish_min_score_change,
        )
    lap("publish_rule")

    def publications() -> list[OutboxEvent]:
        if not publish.any():
            return []
        moved_tier = publish & tier_changed_mask(
            previously_published=state["published"], previous_tier=previous_tier, tier=tier
        )
        from_tier = previous_tier.copy()
        from_tier[~state["published"]] = None
        publishers = locked[publish]
        return value_events(
            facts.customer_ids[publishers],
            facts.as_of[publishers],
            scored,
            at[publishers],
            previous_tier=from_tier[publish],
            tier_moved=moved_tier[publish],
            model_version=model_version,
            currency=currency,
        )

    arguments = (
        model_version,
        currency,
        [orjson.dumps(c).decode() for c in causes],
        locked[publish].tolist(),
        recompute,
    )
    if bound:
        # A handler batch: its events first, then one statement writes the values and puts
        # the events in the outbox.
        events = publications()
        lap("build_events")
        status = await connection.execute(
            _ARRAY_UPDATES[restate],
            *arguments,
            *_bound(_STAGED, staged),
            *_outbox_columns(events),
        )
        lap("write_update")
    else:
        # The UPDATE runs in PostgreSQL while the events are built (they need only the
        # decision): the two sides of a large chunk overlap instead of taking turns. They are
        # built in a thread: tens of thousands of them are a few hundred ms of CPU, which
        # held the event loop (the worker's consumers, HTTP) for as long, chunk after chunk.
        update = asyncio.ensure_future(
            connection.execute(_UPDATES[restate, pages is not None], *arguments, *(pages or ()))
        )
        events = []
        try:
            await asyncio.sleep(0)  # the statement goes out first
            events = await asyncio.to_thread(publications)
            lap("build_events")
        finally:
            status = await update
        lap("write_update")
        await add_to_outbox(connection, events)
        lap("write_outbox")
    written = int(status.split()[-1])
    if written != len(locked):
        raise RuntimeError(f"wrote {written} values of {len(locked)} locked rows")
    return Written(written, events)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event ready for the outbox: its id, type, subject (the Kafka key) and JSON payload."""

    event_id: str
    type: str
    subject: str
    payload: bytes


_TIME = TypeAdapter(AwareDatetime)
# The CloudEvents as byte templates, in the envelope's field order (`CloudEvent.to_bytes`): one
# `%` per event where a Pydantic model or even a dict costs several times more, which matters at
# a first recompute (a million customers, two events each). The values are serialised by orjson
# a column at a time; a unit test checks the result against the contract's models.
_ENVELOPE = (
    b'{"specversion":"1.0","id":"%b","source":"' + SOURCE.encode() + b'","type":"%b",'
    b'"subject":"%b","time":%b,"datacontenttype":"application/json","data":'
)
_SCORED = _ENVELOPE + (
    b'{"customer_id":"%b","score":%b,"dimensions":{"current":%b,"future":%b,"credit":%b,'
    b'"loyalty":%b,"growth":%b},"tier":%b,"rfm":%b,"loyalty":{"index":%b,"behavioural":%b,'
    b'"attitudinal":%b,"dick_basu":%b,"jones_sasser":%b},"p_alive":%b,"clv":%b,"currency":%b,'
    b'"model_version":%b}}'
)
_RFM = b'{"recency":%b,"frequency":%b,"monetary":%b,"segment":%b}'
_TIER_CHANGED = _ENVELOPE + (
    b'{"customer_id":"%b","from_tier":%b,"to_tier":%b,"score":%b,"model_version":%b}}'
)


def _json_column(values: list[Any]) -> list[bytes]:
    """Each value as JSON, in one orjson call (numbers, None, strings without commas)."""
    if not values:
        return []
    pieces = orjson.dumps(values)[1:-1].split(b",")
    if len(pieces) != len(values):
        raise ValueError("a value of this column contains a comma: serialise it one by one")
    return pieces


def uuid_strings(ids: NDArray[Any]) -> list[str]:
    """16-byte ids as canonical UUID strings, made in bulk (uuid.UUID objects are slower)."""
    text = ids.tobytes().hex()
    return [
        f"{text[k : k + 8]}-{text[k + 8 : k + 12]}-{text[k + 12 : k + 16]}-"
        f"{text[k + 16 : k + 20]}-{text[k + 20 : k + 32]}"
        for k in range(0, len(text), 32)
    ]


def _event_ids(n: int) -> list[str]:
    """Time-ordered random UUIDs (version 7, as `shared.events.new_id`) as strings."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer((time.time_ns() // 1_000_000).to_bytes(8)[2:], dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return uuid_strings(raw.view("V16").ravel())


def value_events(
    customer_ids: NDArray[Any],
    as_of: IntArray,
    scored: Scored,
    rows: IntArray,
    *,
    previous_tier: ObjectArray,
    tier_moved: NDArray[np.bool_],
    model_version: str | None,
    currency: str,
) -> list[OutboxEvent]:
    """`crm.value.scored.v1` of customers whose values are `scored[rows]` (16-byte ids, as_of
    in microseconds), each followed by `crm.value.tier_changed.v1` where `tier_moved`."""
    valuation, loyalty = scored.valuation, scored.valuation.loyalty

    def column(values: NDArray[Any]) -> list[bytes]:
        return _json_column(values[rows].tolist())

    subjects = uuid_strings(customer_ids)
    instants = as_of.tolist()
    times = {instant: _TIME.dump_json(moment(instant)) for instant in set(instants)}
    score = _json_column(np.clip(valuation.score[rows], 0.0, 100.0).tolist())
    tier = column(valuation.tier)
    rfm = [
        b"null" if segment is None else _RFM % (r, f, m, orjson.dumps(segment))
        for segment, r, f, m in zip(
            valuation.rfm.segment[rows].tolist(),
            column(valuation.rfm.recency),
            column(valuation.rfm.frequency),
            column(valuation.rfm.monetary),
            strict=True,
        )
    ]
    clv = _money_column(_cents(np.where(scored.has_clv, scored.clv[rows], np.nan)), currency)
    with_currency, version = orjson.dumps(currency), orjson.dumps(model_version)
    scored_type, tier_type = ev.VALUE_SCORED.encode(), ev.TIER_CHANGED.encode()
    ids = _event_ids(len(rows) + int(np.count_nonzero(tier_moved)))
    moved_from = _json_column(previous_tier.tolist())
    moved = tier_moved.tolist()
    events: list[OutboxEvent] = []
    for k, (subject, *value) in enumerate(
        zip(
            subjects,
            *(column(valuation.dimensions[d]) for d in Dimension),
            tier,
            rfm,
            column(loyalty.index),
            column(loyalty.behavioural),
            column(loyalty.attitudinal),
            column(loyalty.dick_basu),
            column(loyalty.jones_sasser),
            _json_column(np.clip(scored.p_alive[rows], 0.0, 1.0).tolist()),
            clv,
            strict=True,
        )
    ):
        key, time = subject.encode(), times[instants[k]]
        event_id = ids[len(events)]
        # value: five dimensions, tier, rfm, five loyalty fields, p_alive, clv.
        payload = _SCORED % (
            event_id.encode(),
            scored_type,
            key,
            time,
            key,
            score[k],
            *value,
            b"null" if value[-1] == b"null" else with_currency,
            version,
        )
        events.append(OutboxEvent(event_id, ev.VALUE_SCORED, subject, payload))
        if moved[k]:
            event_id = ids[len(events)]
            payload = _TIER_CHANGED % (
                event_id.encode(),
                tier_type,
                key,
                time,
                key,
                moved_from[k],
                tier[k],
                score[k],
                version,
            )
            events.append(OutboxEvent(event_id, ev.TIER_CHANGED, subject, payload))
    return events


_OUTBOX_COLUMNS = ["event_id", "event_type", "topic", "key", "payload"]
_OUTBOX_INSERT = outbox_insert("outbox")


def _outbox_records(events: Sequence[OutboxEvent]) -> list[tuple[Any, ...]]:
    topics = {t: ev.topic_for(t) for t in _EVENT_MODELS}
    return [(e.event_id, e.type, topics[e.type], e.subject, e.payload) for e in events]


def _outbox_columns(events: Sequence[OutboxEvent]) -> list[list[Any]]:
    """The events as the arrays of `shared.messaging.outbox.outbox_insert`."""
    return [list(column) for column in zip(*_outbox_records(events), strict=True)] or [
        [] for _ in _OUTBOX_COLUMNS
    ]


async def add_to_outbox(connection: asyncpg.Connection, events: Sequence[OutboxEvent]) -> None:
    """Write events to the outbox (in the connection's transaction): the rows, and the way,
    of `shared.messaging.outbox.add_events` for CloudEvent models: COPY for many (a recompute
    chunk), one array-bound INSERT for some."""
    if not events:
        return
    records = _outbox_records(events)
    if len(records) >= COPY_THRESHOLD:
        await connection.copy_records_to_table("outbox", records=records, columns=_OUTBOX_COLUMNS)
        return
    await connection.execute(_OUTBOX_INSERT, *(list(c) for c in zip(*records, strict=True)))
