"""The HTTP contract of the complaints service, checked without a database: paths, auth, route
order, and the mapping of domain events onto the contract payloads."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import httpx
import pytest
from fastapi.routing import APIRoute
from support import auth

from services.complaints import domain, service
from services.complaints.config import ComplaintsSettings
from services.complaints.main import create_app
from services.complaints.router import router

WORKFLOW = [
    "acknowledge",
    "investigate",
    "propose",
    "await-customer",
    "resolve",
    "close",
    "reopen",
    "escalate",
]


@pytest.fixture(scope="module")
def app():  # type: ignore[no-untyped-def]
    return create_app(settings=ComplaintsSettings(crm_env="test"), configure_logs=False)


def test_contract_paths_are_served(app) -> None:  # type: ignore[no-untyped-def]
    paths = app.openapi()["paths"]
    assert {"post", "get"} <= set(paths["/v1/complaints"])
    assert "get" in paths["/v1/complaints/{complaint_id}"]
    assert "post" in paths["/v1/complaints/sla/evaluate"]
    assert "get" in paths["/v1/complaints/analytics"]
    for step in WORKFLOW:
        assert "post" in paths[f"/v1/complaints/{{complaint_id}}/{step}"], step
    list_parameters = {p["name"] for p in paths["/v1/complaints"]["get"]["parameters"]}
    assert {"customer_id", "status", "breached", "limit", "cursor"} <= list_parameters
    analytics_parameters = {
        p["name"] for p in paths["/v1/complaints/analytics"]["get"]["parameters"]
    }
    assert {"from", "to"} <= analytics_parameters


def test_static_paths_come_before_the_complaint_id() -> None:
    # Starlette matches in registration order: `{complaint_id}` first would answer 422 for them
    order = [r.path for r in router.routes if isinstance(r, APIRoute) and "GET" in r.methods]
    by_id = order.index("/v1/complaints/{complaint_id}")
    assert order.index("/v1/complaints/analytics") < by_id
    assert order.index("/v1/complaints/policy") < by_id


async def test_tokens_and_scopes_are_required(app) -> None:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        anonymous = await client.get("/v1/complaints")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        read_only = await client.post(
            f"/v1/complaints/{UUID(int=1)}/escalate",
            json={"reason": "x"},
            headers=auth("complaints:read"),
        )
        assert read_only.status_code == 403
        wrong_service = await client.get("/v1/complaints", headers=auth("customers:read"))
        assert wrong_service.status_code == 403


def test_domain_events_become_contract_cloud_events() -> None:
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    complaint, (opened,) = domain.open_complaint(
        complaint_id=UUID(int=5),
        customer_id=UUID(int=6),
        channel=domain.Channel.store,
        category=domain.Category.service,
        severity=domain.Severity.critical,
        tier=domain.Tier.key,
        received_at=at,
        policy=domain.SlaPolicy(),
        order_id="SO-77",
    )
    event = service.to_cloud_event(opened)
    assert (event.type, event.source, event.subject, event.time) == (
        "crm.complaint.opened.v1",
        "/crm/complaints",
        str(UUID(int=6)),
        at,
    )
    assert event.data.model_dump(mode="json") == {
        "complaint_id": str(UUID(int=5)),
        "customer_id": str(UUID(int=6)),
        "severity": "critical",
        "channel": "store",
        "category": "service",
        "order_id": "SO-77",
        "first_response_due": "2026-01-05T09:30:00Z",
        "resolution_due": "2026-01-05T21:00:00Z",
        "tier_at_intake": "key",
    }
    (escalated,) = domain.escalate(complaint, at=at, reason="VIP").events
    assert service.to_cloud_event(escalated).data.model_dump(mode="json") == {
        "complaint_id": str(UUID(int=5)),
        "customer_id": str(UUID(int=6)),
        "severity": "critical",
        "level": 1,
        "reason": "manual",
    }


@pytest.mark.parametrize(
    ("method", "path", "request_args", "field"),
    [
        ("post", "/v1/complaints", {"json": {"subject": "a\x00b"}}, "body.subject"),
        (
            "post",
            f"/v1/complaints/{UUID(int=1)}/escalate",
            {"json": {"reason": "\x00"}},
            "body.reason",
        ),
        (
            "post",
            f"/v1/complaints/{UUID(int=1)}/investigate",
            {"json": {"note": "a\x00"}},
            "body.note",
        ),
        (
            "post",
            "/v1/complaints",
            {"json": {"received_at": "0001-01-01T00:00:00+01:00"}},
            "body.received_at",
        ),
        (
            "post",
            "/v1/complaints/sla/evaluate",
            {"json": {"as_of": "9999-12-31T23:00:00-05:00"}},
            "body.as_of",
        ),
        (
            "post",
            "/v1/complaints/sla/evaluate",
            {"json": {"as_of": "9999-12-31T23:00:00Z"}},
            "body.as_of",
        ),
        (
            "get",
            "/v1/complaints/analytics",
            {"params": {"from": "0001-01-01T00:00:00+01:00"}},
            "query.from",
        ),
    ],
)
async def test_what_the_database_cannot_store_is_refused_at_the_edge(  # type: ignore[no-untyped-def]
    app, method: str, path: str, request_args: dict[str, object], field: str
) -> None:
    # U+0000 in text, and times with no UTC datetime (or at the end of time), used to reach
    # PostgreSQL or the SLA arithmetic and come back as 500
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(
            method, path, headers=auth("complaints:read", "complaints:write"), **request_args
        )
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize("satisfaction", [True, False])
async def test_a_boolean_is_not_a_satisfaction_score(  # type: ignore[no-untyped-def]
    app, satisfaction: bool
) -> None:
    # Lax mode read JSON `true` as a CSAT of 1 (and `false` as 0, refused only as too low).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            f"/v1/complaints/{UUID(int=1)}/close",
            json={"satisfaction": satisfaction, "feedback": "fine"},
            headers=auth("complaints:read", "complaints:write"),
        )
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "body.satisfaction", "reason": "Input should be a valid integer"}
    ]
