"""Scoring service: value and loyalty of every customer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.scoring import worker
from services.scoring.config import ScoringSettings
from services.scoring.models import MESSAGING
from services.scoring.router import router
from shared.http.app import create_service_app
from shared.runtime import Role, ServiceRuntime


def create_app(
    role: Role = Role.all, settings: ScoringSettings | None = None, **runtime_options: Any
) -> FastAPI:
    runtime = ServiceRuntime(
        settings=settings or ScoringSettings(), tables=MESSAGING, role=role, **runtime_options
    )
    return create_service_app(
        runtime=runtime,
        title="CRM scoring service",
        description=(
            "Customer value and loyalty: RFM segments, probabilistic CLV (BG/NBD + Gamma-Gamma), "
            "the weighted composite value and its pyramid tiers, loyalty index and types. "
            "Scores move on every purchase, refund, complaint and referral; "
            "`POST /v1/value/recompute` refits the models and re-scores everyone."
        ),
        routers=[router],
        start_worker=worker.start,
    )
