"""The FastAPI application every service builds: problem+json, auth, CORS, request ids, metrics,
health endpoints, and a lifespan that owns the engine, the Kafka producer and the worker tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.routing import Route

from shared.http.auth import TokenVerifier
from shared.http.middleware import RequestContextMiddleware
from shared.http.problems import PROBLEM_RESPONSES, install_problem_handlers
from shared.observability import metrics
from shared.runtime import Role, ServiceRuntime

WorkerStarter = Callable[[ServiceRuntime], Sequence[Awaitable[None]]]


def create_service_app(
    *,
    runtime: ServiceRuntime,
    title: str,
    description: str,
    routers: Sequence[APIRouter],
    start_worker: WorkerStarter | None = None,
    version: str = "1.0.0",
) -> FastAPI:
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        if runtime.role in (Role.worker, Role.all) and start_worker is not None:
            runtime.spawn_worker(start_worker)
        try:
            yield
        finally:
            await runtime.stop()

    # /docs and /redoc from the package's own copies of Swagger UI and ReDoc, not a CDN:
    # self-hosted deployments are often without the internet.
    app = FastAPIOffline(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
    )
    app.state.runtime = runtime
    app.state.token_verifier = TokenVerifier(settings)
    install_problem_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Idempotent-Replayed"],
        )
    app.add_middleware(RequestContextMiddleware, service=settings.service_name)
    # The service's routes first: routes match in order, and the API is the hot path.
    if runtime.role in (Role.api, Role.all):
        # A router's plain Starlette routes (`router.add_route`: lean endpoints of hot reads) are
        # matched ahead of every included router: FastAPI's dispatch into an included router costs
        # more per request than such an endpoint's own work.
        for router in routers:
            for route in router.routes:
                if type(route) is Route:
                    app.add_route(
                        route.path,
                        route.endpoint,
                        methods=sorted(route.methods or ()),
                        name=route.name,
                        include_in_schema=route.include_in_schema,
                    )
        for router in routers:
            app.include_router(router)
    app.include_router(health_router(runtime))
    return app


def health_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health/live", summary="The process is up")
    async def live() -> dict[str, str]:
        return {
            "status": "ok",
            "service": runtime.settings.service_name,
            "role": runtime.role.value,
        }

    @router.get("/health/ready", summary="The database and Kafka answer")
    async def ready() -> JSONResponse:
        checks: dict[str, Any] = {}
        db_ok = await _check_db(runtime, checks)
        kafka_ok, why = await runtime.kafka_probe.check()
        checks["kafka"] = why
        ok = db_ok and kafka_ok
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def scrape(request: Request) -> Response:
        await _refresh_outbox_gauges(runtime)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


async def _check_db(runtime: ServiceRuntime, checks: dict[str, Any]) -> bool:
    try:
        async with runtime.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
        checks["database"] = "ok"
        return True
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        return False


async def _refresh_outbox_gauges(runtime: ServiceRuntime) -> None:
    try:
        async with runtime.engine.connect() as conn:
            row = (
                await asyncio.wait_for(
                    conn.execute(
                        text(
                            "SELECT count(*) AS n, "
                            "coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age FROM outbox"
                        )
                    ),
                    timeout=2,
                )
            ).one()
        metrics.OUTBOX_BACKLOG.labels(runtime.settings.service_name).set(row.n)
        metrics.OUTBOX_AGE.labels(runtime.settings.service_name).set(float(row.age))
    except Exception:
        pass
