"""HTTP edge of the scoring service: schema in -> service call -> schema out."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from fastapi.responses import JSONResponse

from services.scoring import service
from services.scoring.config import ScoringSettings
from services.scoring.domain import ValueModelPolicy
from services.scoring.models import MESSAGING
from services.scoring.schemas import (
    CustomerValueRead,
    ParetoRead,
    PyramidRead,
    RecomputeRequest,
    RecomputeRunRead,
    ValueModelRead,
    ValueModelUpdated,
)
from shared.db import transaction
from shared.http.auth import Principal, require
from shared.http.deps import Runtime
from shared.http.idempotency import IDEMPOTENCY_HEADER, run_once
from shared.http.inputs import rules_as_of
from shared.http.preconditions import etag, parse_if_match

router = APIRouter(prefix="/v1", tags=["value"])
CanRead = Annotated[Principal, Depends(require("scores:read"))]
CanAdmin = Annotated[Principal, Depends(require("scores:admin"))]
IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)]


def _settings(rt: Runtime) -> ScoringSettings:
    settings = rt.settings
    assert isinstance(settings, ScoringSettings)
    return settings


POLICY_ETAG_PREFIX = "policy-"


@router.get(
    "/customers/{customer_id}/value",
    response_model=CustomerValueRead,
    summary="RFM, CLV, composite score with its dimensions, tier, loyalty; what moved it",
)
async def read_value(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> CustomerValueRead:
    async with transaction(rt.sessions) as session:
        return await service.read_value(session, customer_id)


@router.get(
    "/value/pyramid",
    response_model=PyramidRead,
    summary="Customers, revenue and average CLV per tier",
)
async def read_pyramid(rt: Runtime, _: CanRead) -> PyramidRead:
    async with transaction(rt.sessions) as session:
        return await service.pyramid(session, settings=_settings(rt))


@router.get(
    "/value/pareto",
    response_model=ParetoRead,
    summary="Cumulative revenue share by customer percentile; share of the top 20%",
)
async def read_pareto(
    rt: Runtime,
    _: CanRead,
    points: Annotated[int, Query(ge=5, le=1000, description="Points on the curve")] = 100,
) -> ParetoRead:
    async with transaction(rt.sessions) as session:
        return await service.pareto(session, settings=_settings(rt), points=points)


@router.get(
    "/value/model",
    response_model=ValueModelRead,
    summary="Weights, tier cut-offs, settings and the fitted model parameters",
)
async def read_model(rt: Runtime, _: CanRead, response: Response) -> ValueModelRead:
    async with transaction(rt.sessions) as session:
        model = await service.read_model(session)
    response.headers["ETag"] = etag(model.policy_version, prefix=POLICY_ETAG_PREFIX)
    return model


@router.put(
    "/value/model",
    response_model=ValueModelUpdated,
    summary="Replace the value model policy (validated) and queue a re-score",
    description=(
        "The body replaces the whole policy (omitted fields take their defaults). Weights must "
        "sum to 1 and tier cut-offs be ordered, else 422 and nothing changes. Send `If-Match` "
        "with the ETag read to refuse lost updates (412 when stale)."
    ),
    responses={412: {"description": "Stale ETag"}},
)
async def replace_model(
    rt: Runtime,
    _: CanAdmin,
    response: Response,
    policy: Annotated[ValueModelPolicy, Body()],
    if_match: Annotated[str | None, Header(description="ETag from the last read")] = None,
) -> ValueModelUpdated:
    async with transaction(rt.sessions) as session:
        updated = await service.update_policy(
            session,
            policy=policy,
            if_match=parse_if_match(if_match, prefix=POLICY_ETAG_PREFIX, what="the value model"),
            now=rt.clock.now(),
        )
    response.headers["ETag"] = etag(updated.policy_version, prefix=POLICY_ETAG_PREFIX)
    return updated


@router.post(
    "/value/recompute",
    status_code=202,
    response_model=RecomputeRunRead,
    summary="Refit the models and re-score everyone, as of a given time",
    description=(
        "Queues a run (the worker executes it) and returns it; follow `Location` for progress. "
        "The models are fitted on purchases up to `as_of` (default now). A past `as_of` "
        "restates every value as of then; otherwise a value newer than `as_of` is re-scored "
        "with the new model at its own time. Retry safely with `Idempotency-Key`."
    ),
)
async def request_recompute(
    rt: Runtime,
    _: CanAdmin,
    request: Annotated[RecomputeRequest | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    body = request or RecomputeRequest()
    now = rt.clock.now()
    as_of = rules_as_of(body.as_of, now=now, settings=rt.settings, what="the values")

    async def action() -> tuple[int, object]:
        policy, _ = await service.current_policy(session)
        run = await service.request_recompute(
            session,
            as_of=as_of,
            time_unit=body.time_unit or policy.clv.time_unit,
            trigger="api",
            now=now,
        )
        return 202, service.run_read(run).model_dump(mode="json")

    async with transaction(rt.sessions) as session:
        if idempotency_key is None:
            status, payload = await action()
            replayed = False
        else:
            stored = await run_once(
                session,
                MESSAGING,
                scope="scoring:recompute",
                key=idempotency_key,
                request=body.model_dump(mode="json"),
                action=action,
            )
            status, payload, replayed = stored.status_code, stored.body, stored.replayed
    assert isinstance(payload, dict)
    headers = {"Location": f"/v1/value/recompute/{payload['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(payload, status_code=status, headers=headers)


@router.get(
    "/value/recompute/{run_id}",
    response_model=RecomputeRunRead,
    summary="A recompute run and its progress",
)
async def read_recompute(run_id: uuid.UUID, rt: Runtime, _: CanRead) -> RecomputeRunRead:
    async with transaction(rt.sessions) as session:
        return await service.read_run(session, run_id)
