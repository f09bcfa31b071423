"""Lifecycle service: the stage of each customer, moved by purchases, complaints and time."""

from __future__ import annotations

from fastapi import FastAPI

from services.lifecycle import worker
from services.lifecycle.config import LifecycleSettings
from services.lifecycle.models import MESSAGING
from services.lifecycle.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: LifecycleSettings | None = None, **runtime_options: object
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or LifecycleSettings(), tables=MESSAGING, role=role, **runtime_options
    )  # type: ignore[arg-type]
    return create_service_app(
        runtime=runtime,
        title="CRM lifecycle service",
        description="Customer lifecycle stages (prospect, growth, mature, decline, churned) and their history.",
        routers=[router],
        start_worker=worker.start,
    )
