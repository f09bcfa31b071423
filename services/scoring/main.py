"""Scoring service: value and loyalty of every customer."""

from __future__ import annotations

from fastapi import FastAPI

from services.scoring import worker
from services.scoring.config import ScoringSettings
from services.scoring.models import MESSAGING
from services.scoring.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: ScoringSettings | None = None, **runtime_options: object
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or ScoringSettings(), tables=MESSAGING, role=role, **runtime_options
    )  # type: ignore[arg-type]
    return create_service_app(
        runtime=runtime,
        title="CRM scoring service",
        description="RFM, CLV (BG/NBD + Gamma-Gamma), composite value, pyramid tiers and loyalty.",
        routers=[router],
        start_worker=worker.start,
    )
