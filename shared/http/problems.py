"""RFC 9457 problem+json for every error, in one place."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import CrmError
from shared.messaging.consumer import is_transient
from shared.observability.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://crm.example.org/problems/"
# A PostgreSQL restart or fail-over takes seconds; the pools reconnect on the next request.
RETRY_AFTER_SECONDS = 5
# What the database (SQLAlchemy or a raw asyncpg pool) raises while it is down or restarting;
# `is_unavailable` decides, these only route the exception to the handler that asks it.
_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,  # ConnectionRefusedError and friends; TimeoutError (asyncio's too) is one
)


class FieldError(BaseModel):
    field: str = Field(description="Where: e.g. body.email, query.limit, header.if-match")
    reason: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": title}
    for code, title in [
        (400, "Bad request"),
        (401, "Missing or invalid bearer token"),
        (403, "Token lacks the required scope"),
        (404, "Not found"),
        (422, "Invalid input, with the field errors"),
        (500, "Internal error"),
        (503, "A dependency (the database) is unavailable; retry after Retry-After seconds"),
    ]
}


def is_unavailable(exc: BaseException) -> bool:
    """The database is down, restarting or saturated: an honest 503, not a bug (500).

    The consumers' classification (`is_transient`: connection errors, asyncpg's
    CannotConnectNow/ConnectionDoesNotExist/AdminShutdown, SQLAlchemy's wrapped and invalidated
    connections, deadlocks) plus SQLAlchemy's pool checkout timeout.
    """
    return isinstance(exc, sa_exc.TimeoutError) or is_transient(exc)


def problem_response(
    request: Request,
    *,
    status: int,
    title: str,
    slug: str,
    detail: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if errors is not None:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _field_error(request: Request, error: Any) -> dict[str, str]:
    """One validation error as `{field, reason}`. Two of FastAPI's name no field a client can act
    on: a body that is not JSON (its location is the character where parsing stopped, so the
    field read `body.31` and the reason `JSON decode error`), and a body not read as JSON at all
    because the request said another content type (curl's `-d` alone sends a form)."""
    loc = tuple(error["loc"])
    if error["type"] == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        cause = (error.get("ctx") or {}).get("error") or error["msg"]
        return {"field": "body", "reason": f"invalid JSON{where}: {cause}"}
    if loc == ("body",) and isinstance(error.get("input"), bytes | bytearray):
        content_type = request.headers.get("content-type") or "none"
        return {
            "field": "body",
            "reason": f"{error['msg']}: the body was not read as JSON (content-type "
            f"{content_type}); send it with `content-type: application/json`",
        }
    return {"field": _location(loc), "reason": error["msg"]}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(CrmError)
    async def crm_error(request: Request, exc: CrmError) -> JSONResponse:
        errors = getattr(exc, "errors", None)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(
            request,
            status=exc.status,
            title=exc.title,
            slug=exc.slug,
            detail=exc.detail,
            errors=errors or None,
            headers=headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_field_error(request, e) for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return problem_response(
            request,
            status=422,
            title="Unprocessable content",
            slug="validation-error",
            detail=detail,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized"}
        return problem_response(
            request,
            status=exc.status_code,
            title=titles.get(exc.status_code, "Error"),
            slug=f"http-{exc.status_code}",
            detail=str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if not is_unavailable(exc):
            raise exc  # a bug, not an outage: the request middleware answers 500 and logs it
        # Type names only: a wrapped DBAPI error's text carries the statement's parameters.
        cause = getattr(exc, "orig", None) or exc.__cause__
        log.warning(
            "http.database_unavailable",
            error=type(exc).__name__,
            cause=type(cause).__name__ if cause is not None else None,
        )
        return problem_response(
            request,
            status=503,
            title="Service unavailable",
            slug="service-unavailable",
            detail=(
                "The database is unavailable or restarting; "
                f"retry in {RETRY_AFTER_SECONDS} seconds."
            ),
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    for error in _DATABASE_ERRORS:
        app.add_exception_handler(error, database_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        return problem_response(
            request,
            status=500,
            title="Internal error",
            slug="internal-error",
            detail="An unexpected error occurred; quote the request_id when reporting it.",
        )
