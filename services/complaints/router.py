"""HTTP edge of the complaints service: schema in -> use case -> schema out."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from services.complaints import service
from services.complaints.config import ComplaintsSettings
from services.complaints.domain import ComplaintPolicy, Severity, Status
from services.complaints.models import MESSAGING
from services.complaints.schemas import (
    AcknowledgeBody,
    Analytics,
    AwaitCustomerBody,
    CloseBody,
    ComplaintCreate,
    ComplaintDetail,
    ComplaintRead,
    EscalateBody,
    InvestigateBody,
    PolicyRead,
    ProposeBody,
    ReopenBody,
    ResolveBody,
    SlaEvaluate,
    SlaRun,
    StepBody,
)
from shared.db import transaction
from shared.errors import InvalidInput
from shared.http.auth import Principal, require
from shared.http.deps import Runtime
from shared.http.idempotency import IDEMPOTENCY_HEADER, run_once
from shared.http.inputs import BusinessTime, rules_as_of
from shared.http.pagination import Page, PageParams, encode_cursor, page_params
from shared.http.preconditions import PRECONDITION_RESPONSES, etag, parse_if_match

router = APIRouter(prefix="/v1", tags=["complaints"])

CanRead = Annotated[Principal, Depends(require("complaints:read"))]
CanWrite = Annotated[Principal, Depends(require("complaints:write"))]
IfMatchHeader = Annotated[
    str | None,
    Header(description="ETag(s) of the version this change is based on, or * (optional)"),
]
IdempotencyKey = Annotated[
    str | None, Header(alias=IDEMPOTENCY_HEADER, description="Makes a retried intake safe")
]
ANALYTICS_DEFAULT_PERIOD = timedelta(days=90)


def _settings(rt: Runtime) -> ComplaintsSettings:
    settings = rt.settings
    assert isinstance(settings, ComplaintsSettings)
    return settings


# Static paths first: `/complaints/{complaint_id}` would otherwise swallow them.


@router.get("/complaints/analytics", response_model=Analytics)
async def analytics(
    rt: Runtime,
    _: CanRead,
    period_from: Annotated[
        BusinessTime | None, Query(alias="from", description="Received at or after")
    ] = None,
    period_to: Annotated[
        BusinessTime | None, Query(alias="to", description="Received before")
    ] = None,
) -> Analytics:
    now = rt.clock.now()
    end = period_to or now
    try:
        start = period_from or end - ANALYTICS_DEFAULT_PERIOD
    except OverflowError:  # `to` within the default period of year 1: no earlier datetime exists
        raise InvalidInput.field(
            "query.to", "too early: give `from` too, or a later `to`"
        ) from None
    async with transaction(rt.sessions) as session:
        return await service.analytics(session, start=start, end=end, as_of=now)


@router.get("/complaints/policy", response_model=PolicyRead)
async def read_policy(rt: Runtime, _: CanRead, response: Response) -> PolicyRead:
    async with transaction(rt.sessions) as session:
        policy, version = await service.load_policy(session)
    response.headers["ETag"] = etag(version)
    return PolicyRead(**policy.model_dump(), version=version)


@router.put("/complaints/policy", response_model=PolicyRead, responses=PRECONDITION_RESPONSES)
async def replace_policy(
    body: ComplaintPolicy,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> PolicyRead:
    async with transaction(rt.sessions) as session:
        version = await service.replace_policy(
            session,
            policy=body,
            if_match=parse_if_match(if_match, what="the complaints policy"),
            actor=principal.subject,
            now=rt.clock.now(),
        )
    response.headers["ETag"] = etag(version)
    return PolicyRead(**body.model_dump(), version=version)


@router.post("/complaints/sla/evaluate", response_model=SlaRun)
async def evaluate_sla(rt: Runtime, _: CanWrite, body: SlaEvaluate | None = None) -> SlaRun:
    as_of = rules_as_of(
        body.as_of if body else None,
        now=rt.clock.now(),
        settings=rt.settings,
        what="the escalations",
    )
    return await service.evaluate_sla(rt.sessions, as_of=as_of)


@router.post("/complaints", status_code=status.HTTP_201_CREATED, response_model=ComplaintRead)
async def open_complaint(
    body: ComplaintCreate,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ComplaintRead:
    now = rt.clock.now()
    async with transaction(rt.sessions) as session:
        if idempotency_key is None:
            record = await service.open_complaint(
                session,
                data=body,
                actor=principal.subject,
                now=now,
                max_clock_skew=_settings(rt).max_clock_skew,
            )
        else:
            opened: list[service.ComplaintRecord] = []

            async def create() -> tuple[int, dict[str, str]]:
                opened.append(
                    await service.open_complaint(
                        session,
                        data=body,
                        actor=principal.subject,
                        now=now,
                        max_clock_skew=_settings(rt).max_clock_skew,
                    )
                )
                return status.HTTP_201_CREATED, {"id": str(opened[0].row.id)}

            stored = await run_once(
                session,
                MESSAGING,
                scope=f"complaints:intake:{principal.subject}",
                key=idempotency_key,
                request=body.model_dump(mode="json"),
                action=create,
            )
            if stored.replayed:
                response.headers["Idempotent-Replayed"] = "true"
                record = await service.get_complaint(
                    session, complaint_id=uuid.UUID(stored.body["id"])
                )
            else:
                record = opened[0]
    response.headers["Location"] = f"/v1/complaints/{record.row.id}"
    response.headers["ETag"] = etag(record.row.version)
    return service.complaint_read(record, as_of=now, pii=principal.has("pii:read"))


@router.get("/complaints", response_model=Page[ComplaintRead])
async def list_complaints(
    rt: Runtime,
    principal: CanRead,
    page: Annotated[PageParams, Depends(page_params)],
    customer_id: uuid.UUID | None = None,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    severity: Severity | None = None,
    breached: Annotated[
        bool | None,
        Query(description="Only complaints with (true) or without (false) a breached clock"),
    ] = None,
) -> Page[ComplaintRead]:
    now = rt.clock.now()
    async with transaction(rt.sessions) as session:
        records, next_key = await service.list_complaints(
            session,
            customer_id=customer_id,
            status=status_,
            severity=severity,
            breached_now=breached,
            limit=page.limit,
            cursor=page.cursor,
            as_of=now,
        )
    pii = principal.has("pii:read")
    return Page[ComplaintRead](
        items=[service.complaint_read(r, as_of=now, pii=pii) for r in records],
        next_cursor=encode_cursor(next_key) if next_key else None,
    )


@router.get("/complaints/{complaint_id}", response_model=ComplaintDetail)
async def read_complaint(
    complaint_id: uuid.UUID, rt: Runtime, principal: CanRead, response: Response
) -> ComplaintDetail:
    async with transaction(rt.sessions) as session:
        record = await service.get_complaint(session, complaint_id=complaint_id, with_history=True)
    response.headers["ETag"] = etag(record.row.version)
    return service.complaint_detail(record, as_of=rt.clock.now(), pii=principal.has("pii:read"))


# --- workflow steps: each its own endpoint and body; illegal moves are 409 with the allowed steps


async def _step(
    complaint_id: uuid.UUID,
    body: StepBody,
    rt: Runtime,
    principal: Principal,
    response: Response,
    if_match: str | None,
) -> ComplaintRead:
    now = rt.clock.now()
    async with transaction(rt.sessions) as session:
        await service.take_step(
            session,
            complaint_id=complaint_id,
            body=body,
            actor=principal.subject,
            now=now,
            if_match=parse_if_match(if_match, what="the complaint"),
        )
        record = await service.get_complaint(session, complaint_id=complaint_id)
    response.headers["ETag"] = etag(record.row.version)
    return service.complaint_read(record, as_of=now, pii=principal.has("pii:read"))


STEP_RESPONSES: dict[int | str, dict[str, object]] = {
    409: {"description": "Not allowed from the current status; `allowed` lists the next steps"},
    412: {"description": "If-Match does not name the current version"},
}


@router.post(
    "/complaints/{complaint_id}/acknowledge", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def acknowledge(
    complaint_id: uuid.UUID,
    body: AcknowledgeBody,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    """First response to the customer (stops the first-response clock)."""
    return await _step(complaint_id, body, rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/investigate", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def investigate(
    complaint_id: uuid.UUID,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    body: InvestigateBody | None = None,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    return await _step(complaint_id, body or InvestigateBody(), rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/propose", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def propose(
    complaint_id: uuid.UUID,
    body: ProposeBody,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    return await _step(complaint_id, body, rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/await-customer",
    response_model=ComplaintRead,
    responses=STEP_RESPONSES,
)
async def await_customer(
    complaint_id: uuid.UUID,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    body: AwaitCustomerBody | None = None,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    """Wait for the customer: the resolution clock pauses until the next step."""
    return await _step(complaint_id, body or AwaitCustomerBody(), rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/resolve", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def resolve(
    complaint_id: uuid.UUID,
    body: ResolveBody,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    return await _step(complaint_id, body, rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/close", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def close(
    complaint_id: uuid.UUID,
    body: CloseBody,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    return await _step(complaint_id, body, rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/reopen", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def reopen(
    complaint_id: uuid.UUID,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    body: ReopenBody | None = None,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    return await _step(complaint_id, body or ReopenBody(), rt, principal, response, if_match)


@router.post(
    "/complaints/{complaint_id}/escalate", response_model=ComplaintRead, responses=STEP_RESPONSES
)
async def escalate(
    complaint_id: uuid.UUID,
    body: EscalateBody,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: IfMatchHeader = None,
) -> ComplaintRead:
    """Manual escalation: one level up (at most 3)."""
    return await _step(complaint_id, body, rt, principal, response, if_match)
