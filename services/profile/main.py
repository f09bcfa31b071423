"""Profile service: customers, consent, purchases, interactions, imports, the 360 view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.profile import domain, worker
from services.profile.config import ProfileSettings
from services.profile.models import MESSAGING
from services.profile.router import router
from shared.db import asyncpg_dsn, server_settings
from shared.http.app import create_service_app
from shared.http.problems import problem_response
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: ProfileSettings | None = None, **runtime_options: Any
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or ProfileSettings(), tables=MESSAGING, role=role, **runtime_options
    )
    app = create_service_app(
        runtime=runtime,
        title="CRM profile service",
        description=(
            "Customers, consent, purchases, refunds, interactions, bulk imports and the "
            "customer 360 view. Personal fields are masked without the `pii:read` scope; "
            "unmasked reads are audited."
        ),
        routers=[router],
        start_worker=worker.start,
    )
    app.add_exception_handler(domain.RuleViolation, _rule_violation)  # type: ignore[arg-type]
    if role in (Role.api, Role.all):
        _with_read_pool(app, runtime)
    return app


def _with_read_pool(app: FastAPI, runtime: ServiceRuntime) -> None:
    """A plain asyncpg pool for the hot 360 read, opened inside the shared lifespan: the ORM's
    pool pings on every checkout, which doubles the round trips of a single-query read."""
    shared_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        async with shared_lifespan(application):
            application.state.read_pool = await asyncpg.create_pool(
                asyncpg_dsn(runtime.settings.database_url),
                min_size=1,
                max_size=runtime.settings.db_pool_size,
                server_settings=server_settings("crm-profile-read"),
                # The default reset is one more round trip per release; the 360 read leaves no
                # session state behind (no SET, LISTEN, advisory lock or open cursor).
                reset=_keep_session,
            )
            try:
                yield
            finally:
                await application.state.read_pool.close()

    app.router.lifespan_context = lifespan


async def _rule_violation(request: Request, error: domain.RuleViolation) -> JSONResponse:
    """Broken domain rules are 422s naming each field, like request validation errors."""
    extra: dict[str, Any] = {}
    if isinstance(error, domain.RefundExceedsPaid):
        extra = {"refundable": domain.format_money(error.refundable, _currency(request))}
    return problem_response(
        request,
        status=422,
        title="Unprocessable content",
        slug="validation-error",
        detail=str(error),
        errors=[
            {"field": ".".join(["body", *map(str, problem.loc)]), "reason": problem.message}
            for problem in error.problems
        ],
        **extra,
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    return None


def _currency(request: Request) -> str:
    settings = request.app.state.runtime.settings
    return str(settings.base_currency)
