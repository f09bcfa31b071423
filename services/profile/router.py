"""HTTP edge of the profile service: schema in -> use case -> schema out."""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.profile import domain, schemas, service
from services.profile.config import ProfileSettings
from services.profile.schemas import (
    ConsentsRead,
    ConsentsUpdate,
    Customer360,
    CustomerCreate,
    CustomerRead,
    CustomerUpdate,
    ImportRead,
    InteractionCreate,
    InteractionRead,
    PurchaseCreate,
    PurchaseRead,
    RefundCreate,
    RefundRead,
)
from shared.db import transaction
from shared.errors import (
    Forbidden,
    InvalidInput,
    PreconditionRequired,
    Unauthorized,
)
from shared.events.payloads import Stage, Tier
from shared.http.auth import Principal, TokenVerifier, require, verify_token
from shared.http.deps import Runtime
from shared.http.idempotency import IDEMPOTENCY_HEADER, run_once
from shared.http.pagination import Page, PageParams, encode_cursor, page_params
from shared.http.preconditions import IfMatch, etag, parse_if_match
from shared.http.prefer import RESPOND_ASYNC, respond_async

router = APIRouter(prefix="/v1", tags=["customers"])

CanRead = Annotated[Principal, Depends(require("customers:read"))]
CanWrite = Annotated[Principal, Depends(require("customers:write"))]
Paging = Annotated[PageParams, Depends(page_params)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias=IDEMPOTENCY_HEADER, description="Retry-safe key: the same key replays the answer"),
]


def _settings(rt: Runtime) -> ProfileSettings:
    settings = rt.settings
    assert isinstance(settings, ProfileSettings)
    return settings


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _condition(if_match: str | None) -> IfMatch:
    condition = parse_if_match(if_match, what="the customer")
    if condition is None:
        raise PreconditionRequired(
            "Send If-Match with the ETag of the customer you read (lost updates are refused), "
            "or * to overwrite whatever is current"
        )
    return condition


async def _idempotent(
    rt: Runtime,
    *,
    key: str | None,
    scope: str,
    request_body: Any,
    action: Any,
    response: Response,
) -> Any:
    """Run a write once per Idempotency-Key (or plainly without one); replays say so."""
    async with transaction(rt.sessions) as session:
        if key is None:
            status_code, body = await action(session)
            response.status_code = status_code
            return body
        stored = await run_once(
            session,
            rt.tables,
            scope=scope,
            key=key,
            request=request_body,
            action=lambda: action(session),
        )
    response.status_code = stored.status_code
    if stored.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return stored.body


# --- the 360 view (first: routes are matched in order, and it is the hot path) ----------


async def _reader_360(request: Request) -> Principal:
    """`require("customers:read")` inline: on the hot read path, solving dependencies costs more
    than this whole check (the shared verifier remembers verified tokens until they expire)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing bearer token: send `Authorization: Bearer <jwt>`")
    verifier: TokenVerifier = request.app.state.token_verifier
    principal = await verify_token(verifier, token.strip())  # raises Unauthorized
    if not principal.has("customers:read"):
        raise Forbidden("The token lacks the scope(s): customers:read", required=["customers:read"])
    return principal


async def _serve_360(request: Request, customer_id: uuid.UUID) -> Response:
    principal = await _reader_360(request)
    rt = request.app.state.runtime  # not the Runtime dependency: it is a thread hop too
    unmasked = principal.has("pii:read")
    async with request.app.state.read_pool.acquire() as conn:
        row = await service.customer_360(
            conn,
            customer_id=customer_id,
            audit_actor=principal.subject if unmasked else None,
            request_id=_request_id(request),
            now=rt.clock.now(),
        )
    document = schemas.view_360(row, masked=not unmasked, currency=_settings(rt).base_currency)
    # Built by hand and serialised once: this is the hot read path (see the benchmark).
    return Response(orjson.dumps(document, default=str), media_type="application/json")


async def _view_360_lean(request: Request) -> Response:
    """The 360 as a plain Starlette endpoint, for ids in canonical form (the `uuid` convertor):
    FastAPI's per-request work (request models, dependency solving) was a third of this read's
    Python time. Other ids fall through to the documented route below (422 when not UUIDs)."""
    request.scope["route"] = _DOCUMENTED_360  # metrics and the access log name the route as before
    if request.method != "GET":  # as the documented route answers (no HEAD either)
        raise StarletteHTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": "GET"})
    return await _serve_360(request, request.path_params["customer_id"])


# Added before the documented route, so that it matches first. It takes every method and
# answers the others itself: a 405 the documented route's way, under its route label.
router.add_route(
    f"{router.prefix}/customers/{{customer_id:uuid}}/360",
    _view_360_lean,
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)


@router.get(
    "/customers/{customer_id}/360",
    response_model=Customer360,
    summary="Unified view: profile, consent, purchases, stage, value, loyalty, open complaints",
    description="Served from local projections only, so it answers when other services are down.",
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def view_360(customer_id: uuid.UUID, request: Request) -> Response:
    return await _serve_360(request, customer_id)


_DOCUMENTED_360 = next(r for r in router.routes if getattr(r, "endpoint", None) is view_360)


# --- customers ---------------------------------------------------------------------------------


@router.post(
    "/customers",
    status_code=status.HTTP_201_CREATED,
    response_model=CustomerRead,
    summary="Register a customer (person or organization), with consents",
    responses={409: {"description": "E-mail or external_ref taken; `existing_id` names the owner"}},
)
async def register(
    body: CustomerCreate,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    async def act(session: Any) -> tuple[int, Any]:
        customer = await service.register_customer(
            session, data=body, settings=_settings(rt), now=rt.clock.now()
        )
        shown = schemas.customer_read(customer, masked=not principal.has("pii:read"))
        return status.HTTP_201_CREATED, shown.model_dump(mode="json")

    shown = await _idempotent(
        rt,
        key=idempotency_key,
        scope=f"profile:register:{principal.subject}",
        request_body=body.model_dump(mode="json"),
        action=act,
        response=response,
    )
    response.headers["Location"] = f"/v1/customers/{shown['id']}"
    response.headers["ETag"] = etag(shown["version"])
    return shown


@router.get(
    "/customers",
    response_model=Page[CustomerRead],
    summary="Search by name, e-mail, phone or external_ref; filter by stage and tier",
)
async def search(
    rt: Runtime,
    principal: CanRead,
    paging: Paging,
    request: Request,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description=(
                "Search term. With `pii:read`: part of a name, the start of an e-mail, 4+ digits "
                "of a phone, or an external_ref. Without it (the results are masked): a whole "
                "name, e-mail, phone number with its country code, or an external_ref. Names "
                "match regardless of accents and letter case, both ways: `muller` finds "
                "`Müller`, `José` finds `Jose`, `strauss` finds `Strauß`"
            ),
        ),
    ] = None,
    stage: Annotated[Stage | None, Query(description="Lifecycle stage")] = None,
    tier: Annotated[Tier | None, Query(description="Value tier")] = None,
) -> Page[CustomerRead]:
    unmasked = principal.has("pii:read")
    async with transaction(rt.sessions) as session:
        rows, cursor = await service.search_customers(
            session,
            q=q,
            stage=stage,
            tier=tier,
            limit=paging.limit,
            cursor=paging.cursor,
            partial_pii=unmasked,
        )
        if unmasked:
            await service.audit_pii_read(
                session,
                customer_ids=[row.id for row in rows],
                actor=principal.subject,
                action="search",
                request_id=_request_id(request),
                now=rt.clock.now(),
            )
    return Page[CustomerRead](
        items=[schemas.customer_read(row, masked=not unmasked) for row in rows],
        next_cursor=encode_cursor(cursor) if cursor else None,
    )


@router.get("/customers/{customer_id}", response_model=CustomerRead, summary="Read a customer")
async def read(
    customer_id: uuid.UUID, rt: Runtime, principal: CanRead, response: Response, request: Request
) -> CustomerRead:
    unmasked = principal.has("pii:read")
    async with transaction(rt.sessions) as session:
        customer = await service.get_customer(session, customer_id=customer_id)
        if unmasked:
            await service.audit_pii_read(
                session,
                customer_ids=[customer.id],
                actor=principal.subject,
                action="read",
                request_id=_request_id(request),
                now=rt.clock.now(),
            )
    response.headers["ETag"] = etag(customer.version)
    return schemas.customer_read(customer, masked=not unmasked)


@router.patch(
    "/customers/{customer_id}",
    response_model=CustomerRead,
    summary="Update master data (needs If-Match with the ETag read)",
    responses={412: {"description": "Stale ETag"}, 428: {"description": "If-Match missing"}},
)
async def update(
    customer_id: uuid.UUID,
    body: CustomerUpdate,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    if_match: Annotated[str | None, Header(description="ETag from the last read")] = None,
) -> CustomerRead:
    condition = _condition(if_match)
    async with transaction(rt.sessions) as session:
        customer = await service.update_customer(
            session,
            customer_id=customer_id,
            data=body,
            if_match=condition,
            settings=_settings(rt),
            now=rt.clock.now(),
        )
    response.headers["ETag"] = etag(customer.version)
    return schemas.customer_read(customer, masked=not principal.has("pii:read"))


@router.delete(
    "/customers/{customer_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase personal data irreversibly (right to be forgotten)",
)
async def erase(customer_id: uuid.UUID, rt: Runtime, _: CanWrite) -> Response:
    async with transaction(rt.sessions) as session:
        await service.erase_customer(session, customer_id=customer_id, now=rt.clock.now())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- consent -----------------------------------------------------------------------------------


async def _consents_read(rt: Runtime, customer_id: uuid.UUID) -> ConsentsRead:
    async with transaction(rt.sessions) as session:
        current, history = await service.consent_history(session, customer_id=customer_id)
    return ConsentsRead(
        customer_id=customer_id,
        current=[schemas.ConsentRead.model_validate(c, from_attributes=True) for c in current],
        history=[
            schemas.ConsentChangeRead.model_validate(h, from_attributes=True) for h in history
        ],
    )


@router.get(
    "/customers/{customer_id}/consents",
    response_model=ConsentsRead,
    summary="Current consent per purpose and the history of changes",
)
async def read_consents(customer_id: uuid.UUID, rt: Runtime, _: CanRead) -> ConsentsRead:
    return await _consents_read(rt, customer_id)


@router.put(
    "/customers/{customer_id}/consents",
    response_model=ConsentsRead,
    summary="Grant or withdraw consent per purpose (an event per purpose that changed)",
)
async def change_consents(
    customer_id: uuid.UUID, body: ConsentsUpdate, rt: Runtime, _: CanWrite
) -> ConsentsRead:
    async with transaction(rt.sessions) as session:
        await service.change_consents(
            session, customer_id=customer_id, data=body, settings=_settings(rt), now=rt.clock.now()
        )
    return await _consents_read(rt, customer_id)


# --- purchases, refunds, interactions ----------------------------------------------------------


@router.post(
    "/customers/{customer_id}/purchases",
    status_code=status.HTTP_201_CREATED,
    response_model=PurchaseRead,
    tags=["purchases"],
    summary="Record a purchase; the same order_id again returns it (200) without a new event",
)
async def record_purchase(
    customer_id: uuid.UUID, body: PurchaseCreate, rt: Runtime, _: CanWrite, response: Response
) -> PurchaseRead:
    now = rt.clock.now()
    purchase = service.purchase_from_request(body, settings=_settings(rt), now=now)
    async with transaction(rt.sessions) as session:
        row, created = await service.record_purchase(
            session, customer_id=customer_id, purchase=purchase
        )
        # A new purchase has the items it was given; a repeated one, those recorded.
        items = (
            list(purchase.items)
            if created
            else (await service.purchase_items(session, [row.id]))[row.id]
        )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/customers/{customer_id}/purchases/{row.id}"
    return schemas.purchase_read(row, items)


@router.get(
    "/customers/{customer_id}/purchases",
    response_model=Page[PurchaseRead],
    tags=["purchases"],
    summary="Purchases, most recent first",
)
async def list_purchases(
    customer_id: uuid.UUID, rt: Runtime, _: CanRead, paging: Paging
) -> Page[PurchaseRead]:
    async with transaction(rt.sessions) as session:
        rows, cursor = await service.list_purchases(
            session, customer_id=customer_id, limit=paging.limit, cursor=paging.cursor
        )
        items = await service.purchase_items(session, [row.id for row in rows])
    return Page[PurchaseRead](
        items=[schemas.purchase_read(row, items[row.id]) for row in rows],
        next_cursor=encode_cursor(cursor) if cursor else None,
    )


@router.post(
    "/customers/{customer_id}/refunds",
    status_code=status.HTTP_201_CREATED,
    response_model=RefundRead,
    tags=["purchases"],
    summary="Refund part or all of an order (never more than was paid)",
)
async def refund(
    customer_id: uuid.UUID,
    body: RefundCreate,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    async def act(session: Any) -> tuple[int, Any]:
        row, purchase = await service.record_refund(
            session,
            customer_id=customer_id,
            data=body,
            settings=_settings(rt),
            now=rt.clock.now(),
        )
        return status.HTTP_201_CREATED, schemas.refund_read(row, purchase).model_dump(mode="json")

    return await _idempotent(
        rt,
        key=idempotency_key,
        scope=f"profile:refund:{customer_id}",
        request_body=body.model_dump(mode="json"),
        action=act,
        response=response,
    )


@router.post(
    "/customers/{customer_id}/interactions",
    status_code=status.HTTP_201_CREATED,
    response_model=InteractionRead,
    tags=["interactions"],
    summary="Record a contact with the customer",
)
async def record_interaction(
    customer_id: uuid.UUID,
    body: InteractionCreate,
    rt: Runtime,
    principal: CanWrite,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    async def act(session: Any) -> tuple[int, Any]:
        row = await service.record_interaction(
            session,
            customer_id=customer_id,
            data=body,
            recorded_by=principal.subject,
            settings=_settings(rt),
            now=rt.clock.now(),
        )
        shown = InteractionRead.model_validate(row, from_attributes=True)
        return status.HTTP_201_CREATED, shown.model_dump(mode="json")

    return await _idempotent(
        rt,
        key=idempotency_key,
        scope=f"profile:interaction:{customer_id}",
        request_body=body.model_dump(mode="json"),
        action=act,
        response=response,
    )


@router.get(
    "/customers/{customer_id}/interactions",
    response_model=Page[InteractionRead],
    tags=["interactions"],
    summary="Contact history, most recent first",
)
async def list_interactions(
    customer_id: uuid.UUID, rt: Runtime, _: CanRead, paging: Paging
) -> Page[InteractionRead]:
    async with transaction(rt.sessions) as session:
        rows, cursor = await service.list_interactions(
            session, customer_id=customer_id, limit=paging.limit, cursor=paging.cursor
        )
    return Page[InteractionRead](
        items=[InteractionRead.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=encode_cursor(cursor) if cursor else None,
    )


# --- bulk import -------------------------------------------------------------------------------

ImportPrefer = Annotated[
    str | None,
    Header(
        description="`respond-async`: answer 202 as soon as the import is registered and let it "
        "run on; its `Location` shows the progress"
    ),
]

CSV_EXAMPLE = (
    "external_ref,order_id,occurred_at,amount,currency,sku,category,quantity\n"
    "shop-42,A-1001,2024-05-01T10:00:00Z,39.80,USD,TEE-1,apparel,2\n"
)


@router.post(
    "/imports/purchases",
    response_model=ImportRead,
    tags=["imports"],
    summary="Bulk import of historical purchases (CSV body), creating unknown customers",
    description=(
        "Body: `text/csv` (or a multipart form with a `file` field), UTF-8, header required: "
        "`external_ref,order_id,occurred_at,amount,currency[,sku,category,quantity]`. A row's "
        "amount is its line total; rows sharing an order_id form one order. Orders already "
        "recorded count as duplicates; bad rows are reported with their line number and never "
        "stop the rest.\n\n"
        "The answer comes when every row is written (a minute or more for a large file). With "
        "`Prefer: respond-async` it comes at once, 202 with the import running; its `Location` "
        "(`GET /v1/imports/{id}`) shows the progress (`orders_done` of `orders_total`), then the "
        "same summary. Either way a file without a usable header is a 422 at once.\n\n"
        f"```\n{CSV_EXAMPLE}```"
    ),
    responses={
        202: {
            "model": ImportRead,
            "description": "Asked with `Prefer: respond-async`: the import, running; its "
            "`Location` shows the progress and, once done, the summary",
        }
    },
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def import_purchases(
    request: Request, rt: Runtime, principal: CanWrite, prefer: ImportPrefer = None
) -> ImportRead | JSONResponse:
    settings = _settings(rt)
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.import_max_bytes:
        raise InvalidInput.field("body", f"larger than {settings.import_max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput.field("body.file", "attach the CSV as the `file` field")
        raw = await upload.read()
    else:
        raw = await request.body()
    if len(raw) > settings.import_max_bytes:
        raise InvalidInput.field("body", f"larger than {settings.import_max_bytes} bytes")
    try:
        csv_text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInput.field("body", f"not UTF-8 text: {error}") from error
    if respond_async(prefer):
        return await _import_in_background(rt, csv_text=csv_text, actor=principal.subject)
    run = await service.import_purchases(
        rt.sessions,
        csv_text=csv_text,
        actor=principal.subject,
        settings=settings,
        now=rt.clock.now(),
    )
    return schemas.import_read(run)


async def _import_in_background(rt: Runtime, *, csv_text: str, actor: str) -> JSONResponse:
    """Start the import, answer 202 once it can be read, and let it run on (stopping the service
    stops it between two chunks, recorded as failed with what to do)."""
    domain.check_purchase_csv_header(io.StringIO(csv_text, newline=""))
    registered: asyncio.Future[uuid.UUID] = asyncio.get_running_loop().create_future()
    import_id = uuid.uuid4()
    work = rt.run_in_background(
        service.import_purchases(
            rt.sessions,
            csv_text=csv_text,
            actor=actor,
            settings=_settings(rt),
            now=rt.clock.now(),
            import_id=import_id,
            registered=registered.set_result,
            stopping=rt.stop_event,
        ),
        name=f"import {import_id}",
    )
    await asyncio.wait({registered, work}, return_when=asyncio.FIRST_COMPLETED)
    if not registered.done():
        work.result()  # it failed before it could be read (the database): that error, answered
    async with transaction(rt.sessions) as session:
        run = await service.get_import(session, import_id=import_id, now=rt.clock.now())
    return JSONResponse(
        schemas.import_read(run).model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={
            "Location": f"/v1/imports/{import_id}",
            "Preference-Applied": RESPOND_ASYNC,
            "Vary": "Prefer",
        },
    )


@router.get(
    "/imports/{import_id}",
    response_model=ImportRead,
    tags=["imports"],
    summary="Progress and summary of a bulk import",
)
async def read_import(import_id: uuid.UUID, rt: Runtime, _: CanRead) -> ImportRead:
    async with transaction(rt.sessions) as session:
        run = await service.get_import(session, import_id=import_id, now=rt.clock.now())
    return schemas.import_read(run)
