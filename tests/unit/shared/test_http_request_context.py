"""The request middleware's access line, latency series and request context; the token cache."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from support import auth

from shared.db import make_metadata
from shared.http.app import create_service_app
from shared.http.auth import Principal, TokenVerifier, issue_dev_token, require
from shared.messaging.tables import messaging_tables
from shared.observability.logging import configure_logging
from shared.runtime import Role, ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = "unit-context"
router = APIRouter(prefix="/v1")


async def lean_gadget(request: Request) -> Response:
    return JSONResponse({"lean": request.path_params["gadget_id"]})


router.add_route("/v1/gadgets/{gadget_id:int}/lean", lean_gadget, include_in_schema=False)


@router.get("/gadgets/{gadget_id}/lean")
async def documented_gadget(gadget_id: str) -> dict[str, str]:
    return {"documented": gadget_id}


@router.get("/gadgets/{gadget_id}")
async def read(
    gadget_id: int, _: Annotated[Principal, Depends(require("customers:read"))]
) -> dict[str, Any]:
    return {"id": gadget_id, "context": structlog.contextvars.get_contextvars()}


@pytest.fixture
def client() -> Iterator[httpx.AsyncClient]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(service=SERVICE, level="INFO", fmt="json")
    runtime = ServiceRuntime(
        settings=ServiceSettings(service_name=SERVICE),
        tables=messaging_tables(make_metadata()),
        role=Role.api,
    )
    app: FastAPI = create_service_app(runtime=runtime, title="t", description="d", routers=[router])
    yield httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    )
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def requests_seen(route: str, status: str) -> float:
    labels = {"service": SERVICE, "method": "GET", "route": route, "status": status}
    return REGISTRY.get_sample_value("crm_http_request_duration_seconds_count", labels) or 0.0


async def test_one_access_line_per_request_with_its_id_route_and_status(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    ok = await client.get("/v1/gadgets/7?q=jane@example.com", headers=auth("customers:read"))
    denied = await client.get("/v1/gadgets/8", headers={"X-Request-ID": "req-42"})
    assert (ok.status_code, denied.headers["x-request-id"]) == (200, "req-42")
    await client.get("/health/live")  # probes stay out of the access log
    access = [
        record
        for record in map(json.loads, capsys.readouterr().err.splitlines())
        if record["event"] == "http.request"
    ]
    assert [(r["route"], r["status"], r["request_id"]) for r in access] == [
        ("/v1/gadgets/{gadget_id}", 200, ok.headers["x-request-id"]),
        ("/v1/gadgets/{gadget_id}", 401, "req-42"),
    ]
    assert all(r["service"] == SERVICE and r["duration_ms"] >= 0 for r in access)
    assert "jane@example.com" not in json.dumps(access)  # the query string is never logged


async def test_latency_series_count_each_request_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    before = requests_seen("/v1/gadgets/{gadget_id}", "200"), requests_seen("unmatched", "404")
    for gadget in range(3):
        await client.get(f"/v1/gadgets/{gadget}", headers=auth("customers:read"))
    await client.get("/nowhere")
    after = requests_seen("/v1/gadgets/{gadget_id}", "200"), requests_seen("unmatched", "404")
    assert (after[0] - before[0], after[1] - before[1]) == (3, 1)


async def test_the_request_id_is_bound_during_the_request_only(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/gadgets/1", headers={**auth("customers:read"), "X-Request-ID": "req-in"}
    )
    assert response.json()["context"] == {"request_id": "req-in"}
    # httpx runs the app in this task: nothing of the request is left in its context
    assert "request_id" not in structlog.contextvars.get_contextvars()


def test_verified_tokens_are_remembered_until_they_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServiceSettings()
    verifier = TokenVerifier(settings)
    checks: list[str] = []
    verify = verifier._verify

    def counting(token: str) -> tuple[Principal, float]:
        checks.append(token)
        return verify(token)

    monkeypatch.setattr(verifier, "_verify", counting)
    token = issue_dev_token(settings, scopes=["customers:read"], ttl_seconds=60)
    assert verifier.verify(token) == verifier.verify(token) == verifier.cached(token)
    assert verifier.verify(token).has("customers:read") and len(checks) == 1
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert verifier.cached(token) is None
    verifier.verify(token)  # checked again (PyJWT reads its own clock: still valid for it)
    assert len(checks) == 2


def test_the_token_cache_evicts_the_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServiceSettings()
    verifier = TokenVerifier(settings)
    monkeypatch.setattr(verifier, "CACHE_SIZE", 2)
    first, second, third = (
        issue_dev_token(settings, scopes=["customers:read"], subject=f"user-{i}") for i in range(3)
    )
    verifier.verify(first)
    verifier.verify(second)
    verifier.verify(first)  # used again: `second` is now the least recently used
    verifier.verify(third)
    assert verifier.cached(first) is not None and verifier.cached(third) is not None
    assert verifier.cached(second) is None


async def test_plain_routes_of_a_router_answer_first_and_stay_undocumented(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v1/gadgets/5/lean")).json() == {"lean": 5}
    # what the plain route's pattern does not take goes on to the documented route
    assert (await client.get("/v1/gadgets/five/lean")).json() == {"documented": "five"}
    app = client._transport.app  # type: ignore[attr-defined]
    assert list(app.openapi()["paths"]["/v1/gadgets/{gadget_id}/lean"]) == ["get"]
    # matched at the top, not through FastAPI's dispatch into the included router
    assert "/v1/gadgets/{gadget_id:int}/lean" in [
        getattr(route, "path", "") for route in app.routes
    ]
