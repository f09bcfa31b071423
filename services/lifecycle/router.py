"""HTTP edge of the lifecycle service: schema in -> use case -> schema out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse

from services.lifecycle import service
from services.lifecycle.config import LifecycleSettings
from services.lifecycle.schemas import (
    DistributionRead,
    EvaluateRequest,
    EvaluationRead,
    EvaluationRunRead,
    EvaluationStatus,
    LifecycleRead,
    PolicyRead,
    PolicyUpdate,
)
from shared.db import transaction
from shared.errors import InvalidInput
from shared.http.auth import Principal, require
from shared.http.deps import Runtime
from shared.http.inputs import BusinessTime, as_of_too_far_ahead, rules_as_of
from shared.http.pagination import Page, PageParams, encode_cursor, page_params
from shared.http.preconditions import PRECONDITION_RESPONSES, etag, parse_if_match
from shared.http.prefer import respond_async

router = APIRouter(prefix="/v1", tags=["lifecycle"])

CanRead = Annotated[Principal, Depends(require("lifecycle:read"))]
CanAdmin = Annotated[Principal, Depends(require("lifecycle:admin"))]
IfMatchHeader = Annotated[
    str | None,
    Header(description="ETag(s) of the policy version this change is based on, or * (optional)"),
]


# The largest version a cursor may name (the column is a PostgreSQL integer).
_MAX_VERSION = 2**31 - 1


def _not_a_cursor() -> InvalidInput:
    return InvalidInput.field("query.cursor", "not a cursor returned by this API")


def _runs_before(cursor: dict[str, Any]) -> tuple[datetime, uuid.UUID]:
    """The last run of the previous page, from a cursor of `list_evaluations`."""
    requested_at, run_id = cursor.get("requested_at"), cursor.get("run_id")
    if not isinstance(requested_at, str) or not isinstance(run_id, str):
        raise _not_a_cursor()
    try:
        before = datetime.fromisoformat(requested_at), uuid.UUID(run_id)
        if before[0].tzinfo is None:
            raise ValueError("naive")
        before[0].astimezone(UTC)  # has a UTC form (PostgreSQL compares in UTC)
    except (ValueError, OverflowError) as exc:
        raise _not_a_cursor() from exc
    return before


@router.get("/customers/{customer_id}/lifecycle", response_model=LifecycleRead)
async def read_lifecycle(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> LifecycleRead:
    """Current stage, since when and why, time in stage, and the history of transitions."""
    async with transaction(rt.sessions) as session:
        return await service.customer_lifecycle(
            session, customer_id=customer_id, as_of=rt.clock.now()
        )


@router.get("/lifecycle/distribution", response_model=DistributionRead)
async def read_distribution(
    rt: Runtime,
    _: CanRead,
    as_of: Annotated[
        BusinessTime | None,
        Query(
            description="A past time: counts from the stage history (at most "
            "MAX_FUTURE_AS_OF_SECONDS ahead of the server's clock)"
        ),
    ] = None,
) -> DistributionRead:
    """Customers per stage (the funnel) with the median time in stage."""
    # The history reaches as far as the time rules have run, up to now (or up to the as_of a
    # simulation ran them at): later, it would pass the last known stages off as that day's.
    now = rt.clock.now()
    if as_of is not None and (problem := as_of_too_far_ahead(as_of, now=now, settings=rt.settings)):
        raise InvalidInput.field(
            "query.as_of",
            f"{problem}: the stage history does not reach it (the time rules have not run "
            "there). Leave as_of out for the current counts",
        )
    async with transaction(rt.sessions) as session:
        return await service.distribution(session, as_of=as_of, now=now)


Prefer = Annotated[
    str | None,
    Header(
        description="`respond-async`: answer 202 at once and run it in the worker (backfills); "
        "follow the `Location` to see where it stands"
    ),
]


@router.post(
    "/lifecycle/evaluate",
    response_model=EvaluationRead,
    responses={
        202: {
            "model": EvaluationRunRead,
            "description": "Asked with `Prefer: respond-async`: the run, pending; its `Location` "
            "says where it stands",
        }
    },
)
async def evaluate(
    rt: Runtime,
    principal: CanAdmin,
    body: EvaluateRequest | None = None,
    prefer: Prefer = None,
) -> EvaluationRead | JSONResponse:
    """Run the time rules (lapsing, inactivity) now, or `as_of` a given business time.

    Waited on by default (a run of a million changes takes about a minute); with
    `Prefer: respond-async` the worker runs it and the answer is 202 with the run."""
    settings = rt.settings
    assert isinstance(settings, LifecycleSettings)
    now = rt.clock.now()
    as_of = rules_as_of(
        body.as_of if body else None, now=now, settings=settings, what="the stage changes"
    )
    if respond_async(prefer):
        async with transaction(rt.sessions) as session:
            run = await service.request_evaluation(
                session, as_of=as_of, requested_by=principal.subject, now=now
            )
        return JSONResponse(
            run.model_dump(mode="json"),
            status_code=202,
            headers={
                "Location": f"/v1/lifecycle/evaluations/{run.run_id}",
                "Preference-Applied": "respond-async",
                "Vary": "Prefer",
            },
        )
    return await service.evaluate(
        rt.sessions,
        as_of=as_of,
        requested_by=principal.subject,
        now=now,
        chunk_size=settings.sweep_chunk_size,
        pause_ratio=0.0,  # asked for and waited on: no pauses (the scheduled sweep makes them)
    )


@router.get("/lifecycle/evaluations/{run_id}", response_model=EvaluationRunRead)
async def read_evaluation(run_id: uuid.UUID, rt: Runtime, _: CanRead) -> EvaluationRunRead:
    """A run of the time rules and where it stands (pending, running, succeeded, failed)."""
    async with transaction(rt.sessions) as session:
        return await service.evaluation_run(session, run_id=run_id)


@router.get("/lifecycle/evaluations", response_model=Page[EvaluationRunRead])
async def list_evaluations(
    rt: Runtime,
    _: CanRead,
    page: Annotated[PageParams, Depends(page_params)],
    status: Annotated[EvaluationStatus | None, Query(description="Only runs in this state")] = None,
    moved_customers: Annotated[
        bool | None,
        Query(description="Only runs that moved somebody (true) or nobody (false)"),
    ] = None,
) -> Page[EvaluationRunRead]:
    """Runs of the time rules (scheduled sweeps and requested ones), newest first; the sweep
    runs every minute, so `moved_customers=true` leaves out the ones that found nobody due."""
    before = _runs_before(page.cursor) if page.cursor is not None else None
    async with transaction(rt.sessions) as session:
        items = await service.evaluation_runs(
            session,
            limit=page.limit,
            status=status,
            moved_customers=moved_customers,
            before=before,
        )
    next_cursor = (
        encode_cursor(
            {"requested_at": items[-1].requested_at.isoformat(), "run_id": str(items[-1].run_id)}
        )
        if len(items) == page.limit
        else None
    )
    return Page[EvaluationRunRead](items=items, next_cursor=next_cursor)


@router.get("/lifecycle/policy", response_model=PolicyRead)
async def read_policy(rt: Runtime, _: CanRead, response: Response) -> PolicyRead:
    async with transaction(rt.sessions) as session:
        current = await service.policy_in_force(session, shared_lock=False)
    response.headers["ETag"] = etag(current.version)
    return service.policy_read(current)


@router.put("/lifecycle/policy", response_model=PolicyRead, responses=PRECONDITION_RESPONSES)
async def replace_policy(
    body: PolicyUpdate,
    rt: Runtime,
    principal: CanAdmin,
    response: Response,
    if_match: IfMatchHeader = None,
) -> PolicyRead:
    """Replace the thresholds; applies to evaluations from now on and is recorded as a version."""
    policy = await service.replace_policy(
        rt.sessions,
        policy=body,
        if_match=parse_if_match(if_match, what="the lifecycle policy"),
        changed_by=principal.subject,
        now=rt.clock.now(),
    )
    response.headers["ETag"] = etag(policy.version)
    return policy


@router.get("/lifecycle/policy/versions", response_model=Page[PolicyRead])
async def list_policy_versions(
    rt: Runtime, _: CanRead, page: Annotated[PageParams, Depends(page_params)]
) -> Page[PolicyRead]:
    """Every policy ever set, newest first."""
    before = page.cursor.get("version") if page.cursor else None
    # bool is an int to Python, not to SQL; and the column holds 32 bits.
    if before is not None and (type(before) is not int or not 0 <= before <= _MAX_VERSION):
        raise _not_a_cursor()
    async with transaction(rt.sessions) as session:
        items = await service.policy_versions(session, limit=page.limit, before=before)
    next_cursor = (
        encode_cursor({"version": items[-1].version}) if len(items) == page.limit else None
    )
    return Page[PolicyRead](items=items, next_cursor=next_cursor)
