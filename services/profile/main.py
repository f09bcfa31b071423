"""Profile service: customers, consent, purchases, interactions, the 360 view."""

from __future__ import annotations

from fastapi import FastAPI

from services.profile import worker
from services.profile.config import ProfileSettings
from services.profile.models import MESSAGING
from services.profile.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: ProfileSettings | None = None, **runtime_options: object
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or ProfileSettings(), tables=MESSAGING, role=role, **runtime_options
    )  # type: ignore[arg-type]
    return create_service_app(
        runtime=runtime,
        title="CRM profile service",
        description="Customers, consent, purchases, refunds, interactions and the customer 360 view.",
        routers=[router],
        start_worker=worker.start,
    )
