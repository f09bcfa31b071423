"""RFC 9457 problem+json for every error, in one place."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import CrmError
from shared.observability.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://crm.example.org/problems/"


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
    ]
}


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
        errors = [{"field": _location(e["loc"]), "reason": e["msg"]} for e in exc.errors()]
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
