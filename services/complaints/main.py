"""Complaints service: intake, workflow, SLA clocks and escalation."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.complaints import worker
from services.complaints.config import ComplaintsSettings
from services.complaints.models import MESSAGING
from services.complaints.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: ComplaintsSettings | None = None, **runtime_options: Any
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or ComplaintsSettings(), tables=MESSAGING, role=role, **runtime_options
    )
    return create_service_app(
        runtime=runtime,
        title="CRM complaints service",
        description="Complaint intake, workflow, SLA clocks, escalation, root causes and satisfaction.",
        routers=[router],
        start_worker=worker.start,
    )
