"""HTTP edge of the lifecycle service: schema in -> use case -> schema out."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import AwareDatetime

from services.lifecycle import service
from services.lifecycle.config import LifecycleSettings
from services.lifecycle.schemas import (
    DistributionRead,
    EvaluateRequest,
    EvaluationRead,
    LifecycleRead,
    PolicyRead,
    PolicyUpdate,
)
from shared.db import transaction
from shared.errors import InvalidInput
from shared.http.auth import Principal, require
from shared.http.deps import Runtime
from shared.http.pagination import Page, PageParams, encode_cursor, page_params

router = APIRouter(prefix="/v1", tags=["lifecycle"])

CanRead = Annotated[Principal, Depends(require("lifecycle:read"))]
CanAdmin = Annotated[Principal, Depends(require("lifecycle:admin"))]
IfMatch = Annotated[
    str | None, Header(description="ETag of the policy version this change is based on (optional)")
]


def _etag(version: int) -> str:
    return f'"{version}"'


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise InvalidInput.field("header.if-match", "must be an ETag returned by this API")
    return int(raw)


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
        AwareDatetime | None, Query(description="A past time: counts from the stage history")
    ] = None,
) -> DistributionRead:
    """Customers per stage (the funnel) with the median time in stage."""
    async with transaction(rt.sessions) as session:
        return await service.distribution(session, as_of=as_of, now=rt.clock.now())


@router.post("/lifecycle/evaluate", response_model=EvaluationRead)
async def evaluate(
    rt: Runtime, principal: CanAdmin, body: EvaluateRequest | None = None
) -> EvaluationRead:
    """Run the time rules (lapsing, inactivity) now, or `as_of` a given business time."""
    settings = rt.settings
    assert isinstance(settings, LifecycleSettings)
    now = rt.clock.now()
    return await service.evaluate(
        rt.sessions,
        as_of=(body.as_of if body else None) or now,
        requested_by=principal.subject,
        now=now,
        chunk_size=settings.sweep_chunk_size,
        pause_ratio=0.0,  # asked for and waited on: no pauses (the scheduled sweep makes them)
    )


@router.get("/lifecycle/policy", response_model=PolicyRead)
async def read_policy(rt: Runtime, _: CanRead, response: Response) -> PolicyRead:
    async with transaction(rt.sessions) as session:
        current = await service.policy_in_force(session, shared_lock=False)
    response.headers["ETag"] = _etag(current.version)
    return service.policy_read(current)


@router.put("/lifecycle/policy", response_model=PolicyRead)
async def replace_policy(
    body: PolicyUpdate,
    rt: Runtime,
    principal: CanAdmin,
    response: Response,
    if_match: IfMatch = None,
) -> PolicyRead:
    """Replace the thresholds; applies to evaluations from now on and is recorded as a version."""
    policy = await service.replace_policy(
        rt.sessions,
        policy=body,
        if_match=_version(if_match),
        changed_by=principal.subject,
        now=rt.clock.now(),
    )
    response.headers["ETag"] = _etag(policy.version)
    return policy


@router.get("/lifecycle/policy/versions", response_model=Page[PolicyRead])
async def list_policy_versions(
    rt: Runtime, _: CanRead, page: Annotated[PageParams, Depends(page_params)]
) -> Page[PolicyRead]:
    """Every policy ever set, newest first."""
    before = page.cursor.get("version") if page.cursor else None
    if before is not None and not isinstance(before, int):
        raise InvalidInput.field("query.cursor", "not a cursor returned by this API")
    async with transaction(rt.sessions) as session:
        items = await service.policy_versions(session, limit=page.limit, before=before)
    next_cursor = (
        encode_cursor({"version": items[-1].version}) if len(items) == page.limit else None
    )
    return Page[PolicyRead](items=items, next_cursor=next_cursor)
