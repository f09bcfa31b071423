"""The batch use case: refit the models at `as_of` and re-score every customer.

Queued by `service.request_recompute` (HTTP, a policy change, the nightly schedule) and run by
the worker, one at a time:

1. facts of everyone at `as_of`, streamed from the ledgers into NumPy (`facts.load_facts`);
2. both models fitted and everyone scored (NumPy/SciPy, in a thread);
3. the new model version made current, so that handlers score against it from now on;
4. values written in chunks of about `SCORING_RECOMPUTE_CHUNK_SIZE` customers whose rows share
   heap pages, one transaction each (`values.store_values`: COPY, one locking read, one
   UPDATE), and the events of the customers whose published score moves written to the outbox
   by COPY;
5. a catch-up re-scores whoever was left on another model: their facts moved meanwhile, they
   are new, or their value is newer than the run's as_of and the run does not restate a past
   date (`restates`), so the value is not moved back in time.

Safe while events keep arriving: a chunk only overwrites values computed from facts no newer
than it read (`facts_version`), and rows are locked in customer-id order by both paths. The run
records the seconds of each phase in `timings`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.scoring.config import ScoringSettings
from services.scoring.domain import (
    BgNbdParameters,
    GammaGammaParameters,
    ModelFitError,
    PopulationReference,
    TimeUnit,
    ValueModelPolicy,
    calibration_from_aggregates,
    fit_bgnbd,
    fit_gamma_gamma,
    value_population,
)
from services.scoring.domain._arrays import IntArray
from services.scoring.facts import Facts, load_facts, raw_connection
from services.scoring.models import ModelVersion, RecomputeRun
from services.scoring.service import (
    CurrentModel,
    calibration_and_clv,
    current_model,
    current_policy,
    customer_facts,
    request_recompute,
    rescore,
)
from services.scoring.values import Scored, store_values
from shared.clock import Clock
from shared.db import SessionFactory, transaction
from shared.errors import NotFound
from shared.observability.logging import get_logger

log = get_logger(__name__)

# Bounded retries of a chunk that deadlocked with a handler batch.
_CHUNK_ATTEMPTS = 5


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started


# --- the models -----------------------------------------------------------------------------


@dataclass
class Refit:
    bgnbd: dict[str, Any] | None
    gamma_gamma: dict[str, Any] | None
    fit_error: str | None
    fit_seconds: float
    scored: Scored
    reference: PopulationReference
    seconds: dict[str, float] = field(default_factory=dict)


def _fit_record(fit: Any) -> dict[str, Any]:
    record = {
        name: getattr(fit, name)
        for name in (
            "log_likelihood",
            "n_customers",
            "iterations",
            "n_repeat_customers",
            "n_distinct_rows",
            "frequency_spend_correlation",
        )
        if hasattr(fit, name)
    }
    record["parameters"] = vars_of(fit.parameters)
    record["standard_errors"] = vars_of(fit.standard_errors) if fit.standard_errors else None
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
    """CPU only (run in a thread): fit both models on the purchasers, score everyone.

    When the data cannot support a model's fit, the error is kept and that model's previous
    parameters (same unit) are carried over, or what needs it stays unknown: P(alive) and the
    expected purchases need BG/NBD, CLV both models.
    """
    seconds: dict[str, float] = {}
    with _timed(seconds, "fit"):
        ledger = facts.ledger
        calibration = calibration_from_aggregates(
            first_purchase_day=ledger.first_day,
            last_purchase_day=ledger.last_day,
            purchase_days=ledger.purchase_days,
            repeat_value=facts.money("repeat_value"),
            as_of_day=ledger.as_of_day,
            unit=unit,
        )
        bought = calibration.has_purchase
        x, t_x, age = calibration.x[bought], calibration.t_x[bought], calibration.T[bought]
        spend = np.maximum(calibration.m_x[bought], 0.0)
        minimum = policy.clv.min_repeat_customers
        carry_over = bool(previous.version) and previous.unit is unit
        errors: list[str] = []
        # Each model on its own: spend that Gamma-Gamma cannot fit (one customer spending 10^13
        # among customers spending 100) leaves P(alive) and the expected purchases, which
        # lifecycle's model churn needs, to BG/NBD; only CLV waits for both.
        bgnbd: BgNbdParameters | None = None
        bgnbd_record: dict[str, Any] | None = None
        try:
            bgnbd_fit = fit_bgnbd(x, t_x, age, min_repeat_customers=minimum)
            bgnbd, bgnbd_record = bgnbd_fit.parameters, _fit_record(bgnbd_fit)
        except ModelFitError as exc:
            errors.append(str(exc))
            if carry_over and previous.bgnbd:
                bgnbd = previous.bgnbd
                bgnbd_record = {"parameters": vars_of(bgnbd), "carried_over_from": previous.version}
        gg: GammaGammaParameters | None = None
        gg_record: dict[str, Any] | None = None
        try:
            gg_fit = fit_gamma_gamma(x, spend, min_repeat_customers=minimum)
            gg, gg_record = gg_fit.parameters, _fit_record(gg_fit)
        except ModelFitError as exc:
            errors.append(str(exc))
            if carry_over and previous.gamma_gamma:
                gg = previous.gamma_gamma
                gg_record = {"parameters": vars_of(gg), "carried_over_from": previous.version}
        fit_error = "; ".join(errors) or None
    with _timed(seconds, "clv"):
        p_alive, purchases, expected, clv, has_clv = calibration_and_clv(
            facts, unit, bgnbd, gg, policy
        )
    with _timed(seconds, "valuation"):
        valuation, reference = value_population(
            customer_facts(facts, clv), policy=policy, as_of=as_of
        )
    return Refit(
        bgnbd=bgnbd_record,
        gamma_gamma=gg_record,
        fit_error=fit_error,
        fit_seconds=seconds["fit"],
        scored=Scored(valuation, p_alive, purchases, expected, clv, has_clv),
        reference=reference,
        seconds=seconds,
    )


# --- running a requested recompute ------------------------------------------------------------


async def claim_pending_run(sessions: SessionFactory, *, now: datetime) -> uuid.UUID | None:
    """The next run: first one left running by a worker that stopped, then the oldest pending.

    Called under the recompute job's lock (`run_periodic`), which the worker running a run holds
    until it ends: a run still marked running here was cut short (a crash, a kill, a shutdown).
    It is run again from the start; a recompute is a refit and a re-score of everyone, so doing
    it again gives the same values.
    """
    async with transaction(sessions) as session:
        run = (
            await session.execute(
                select(RecomputeRun)
                .where(RecomputeRun.status.in_(("running", "pending")))
                .order_by((RecomputeRun.status == "running").desc(), RecomputeRun.requested_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
        ).scalar_one_or_none()
        if run is None:
            return None
        if run.status == "running":
            log.warning(
                "recompute.restarted",
                run_id=str(run.id),
                phase=run.phase,
                started_at=run.started_at.isoformat() if run.started_at else None,
                why="left running by a worker that stopped; run again from the start",
            )
            run.customers_scored = run.events_published = 0
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
    other run (nightly, policy, as of now) leaves values newer than its as_of to the catch-up.
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

        with _timed(timings, "load_facts"):
            async with transaction(sessions) as session:
                facts = await load_facts(session, currency=settings.currency, as_of=as_of)
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

        cause = [{"type": "recompute", "run_id": str(run_id), "time": as_of.isoformat()}]
        with _timed(timings, "write_values"):
            written, published = await _write_population(
                sessions,
                run_id,
                facts,
                refit.scored,
                version=version,
                cause=cause,
                policy=policy,
                settings=settings,
                restate=restate,
                timings=timings,
            )
        with _timed(timings, "catch_up"):
            caught_up, caught_up_published = await _catch_up(
                sessions, version=version, cause=cause, settings=settings, as_of=as_of
            )
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
        log.info(
            "recompute.done",
            run_id=str(run_id),
            model_version=version,
            customers=len(facts),
            caught_up=caught_up,
        )
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
            customers_with_purchase=int(np.count_nonzero(facts.ledger.purchase_days)),
            policy=policy.model_dump(mode="json"),
            reference=refit.reference.model_dump(mode="json"),
        )
        session.add(row)
        await session.flush()
        row.version = f"v{row.id}"
        return row.version


def page_chunks(page: IntArray, size: int) -> list[tuple[IntArray, tuple[int, int]]]:
    """Positions grouped in chunks of about `size` customers whose value rows lie on
    consecutive heap pages (first, last), a page never split; the ranges follow each other
    from page 0, so together they cover every page up to the last row's.

    Customer ids are random with respect to where rows lie, so chunks of consecutive ids would
    each touch most pages of the table, and each page would be read and dirtied once per chunk;
    these touch each page once. Within a chunk rows are still locked in customer-id order.
    """
    order = np.argsort(page, kind="stable")
    pages = page[order]
    chunks = []
    start, first_page = 0, 0
    while start < len(order):
        stop = min(start + size, len(order))
        stop = int(np.searchsorted(pages, pages[stop - 1], side="right"))
        last_page = int(pages[stop - 1])
        chunks.append((order[start:stop], (first_page, last_page)))
        start, first_page = stop, last_page + 1
    return chunks


async def _write_population(
    sessions: SessionFactory,
    run_id: uuid.UUID,
    facts: Facts,
    scored: Scored,
    *,
    version: str,
    cause: list[dict[str, Any]],
    policy: ValueModelPolicy,
    settings: ScoringSettings,
    restate: bool,
    timings: dict[str, float],
) -> tuple[int, int]:
    """Write every chunk, `settings.recompute_writers` at a time on as many connections, and
    return how many values and events were written.

    Chunks hold disjoint customers and pages, so writers never wait for each other's rows;
    while one waits for PostgreSQL another prepares its chunk or its events. The seconds of
    the phases inside (write_stage, write_update, ...) add up over the writers.
    """
    chunks = iter(page_chunks(facts.page, settings.recompute_chunk_size))
    done = {"values": 0, "events": 0}

    async def write(rows: IntArray, pages: tuple[int, int]) -> None:
        async with transaction(sessions) as session:
            connection = await raw_connection(session)
            # A value whose facts moved since they were read is left to the handler's newer
            # one (the version check), and unless the run restates a past date so is a value
            # newer than the run's as_of; the catch-up re-scores both with the new model.
            result = await store_values(
                connection,
                facts.take(rows),
                scored,
                rows=rows,
                pages=pages,
                causes=[cause],
                model_version=version,
                policy=policy,
                currency=settings.currency,
                facts_changed=False,
                recompute=True,
                restate=restate,
                timings=timings,
            )
            done["values"] += result.values
            done["events"] += len(result.events)
            await session.execute(
                update(RecomputeRun)
                .where(RecomputeRun.id == run_id)
                .values(customers_scored=done["values"], events_published=done["events"])
            )
            committing = time.perf_counter()
        timings["commit"] = timings.get("commit", 0.0) + time.perf_counter() - committing

    async def writer() -> None:
        for rows, pages in chunks:  # shared iterator: each chunk goes to one writer
            for attempt in range(1, _CHUNK_ATTEMPTS + 1):
                try:
                    await write(rows, pages)
                    break
                except (DBAPIError, asyncpg.DeadlockDetectedError) as exc:
                    if attempt == _CHUNK_ATTEMPTS or not _is_deadlock(exc):
                        raise
                    log.warning("recompute.chunk_deadlock_retry", attempt=attempt)

    try:
        async with asyncio.TaskGroup() as writers:  # one failing cancels the others
            for _ in range(settings.recompute_writers):
                writers.create_task(writer())
    except ExceptionGroup as group:
        raise group.exceptions[0] from group
    return done["values"], done["events"]


def _is_deadlock(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        exc = getattr(exc.orig, "__cause__", None) or exc.orig or exc
    return isinstance(exc, asyncpg.DeadlockDetectedError)


# Customers not on the run's model after its chunks: their facts moved after they were read
# (their row may have moved to another page too), their value was newer than a run that does
# not restate, or they were created meanwhile. One scan of the table finds them all.
_LEFT_BEHIND = "SELECT customer_id FROM customer_values WHERE model_version IS DISTINCT FROM $1"
# Bounded: after one round only a handler batch that read the previous model before the new
# one was published, and committed after the scan, can leave someone behind.
_CATCH_UP_ROUNDS = 3


async def _catch_up(
    sessions: SessionFactory,
    *,
    version: str,
    cause: list[dict[str, Any]],
    settings: ScoringSettings,
    as_of: datetime,
) -> tuple[int, int]:
    """Re-score, with the new model (now current), the customers the chunks left behind, each
    at the later of its own as_of and the run's."""
    scored = published = 0
    for _ in range(_CATCH_UP_ROUNDS):
        async with transaction(sessions) as session:
            rows = await (await raw_connection(session)).fetch(_LEFT_BEHIND, version)
        ids = sorted(row["customer_id"] for row in rows)
        if not ids:
            break
        for start in range(0, len(ids), settings.recompute_chunk_size):
            batch = ids[start : start + settings.recompute_chunk_size]
            async with transaction(sessions) as session:
                result = await rescore(
                    session,
                    dict.fromkeys(batch),
                    causes=dict.fromkeys(batch, cause),
                    settings=settings,
                    facts_changed=False,
                    default_as_of=as_of,
                    recompute=True,
                )
                scored += result.values
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
    """Request the latest nightly recompute that is due (as_of = its hour: today's once the
    hour has come, else yesterday's) unless it was requested already. A fresh install, or one
    down at that hour, catches up at once: until a first recompute no score is published."""
    if not settings.nightly_recompute:
        return None
    due = now.astimezone(UTC).replace(
        hour=settings.nightly_recompute_hour_utc, minute=0, second=0, microsecond=0
    )
    if now < due:
        due -= timedelta(days=1)
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
