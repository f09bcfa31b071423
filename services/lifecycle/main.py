"""Lifecycle service: the stage of each customer, moved by purchases, complaints and time."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.lifecycle import worker
from services.lifecycle.config import LifecycleSettings
from services.lifecycle.models import MESSAGING
from services.lifecycle.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: LifecycleSettings | None = None, **runtime_options: Any
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or LifecycleSettings(), tables=MESSAGING, role=role, **runtime_options
    )
    return create_service_app(
        runtime=runtime,
        title="CRM lifecycle service",
        description=(
            "Customer lifecycle stages (prospect, growth, mature, decline, churned), moved by "
            "purchases, complaints, the value model and time; their history and policy."
        ),
        routers=[router],
        start_worker=worker.start,
    )
