"""The HTTP edge: problem+json, bearer scopes, cursors, request ids — without infrastructure."""

from __future__ import annotations

import re
import time
from typing import Annotated

import httpx
import jwt
import pytest
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, Field
from support import auth

from shared.db import make_metadata
from shared.errors import Conflict, InvalidInput, NotFound
from shared.http.app import create_service_app
from shared.http.auth import Principal, require
from shared.http.pagination import PageParams, decode_cursor, encode_cursor, page_params
from shared.messaging.tables import messaging_tables
from shared.runtime import Role, ServiceRuntime
from shared.settings import DEV_JWT_SECRET, ServiceSettings

router = APIRouter(prefix="/v1")


class ThingCreate(BaseModel):
    name: str = Field(min_length=2)
    count: int = Field(ge=0)


@router.post("/things")
async def create(
    body: ThingCreate, _: Annotated[Principal, Depends(require("customers:write"))]
) -> dict[str, str]:
    if body.name == "taken":
        raise Conflict("A thing with this name exists", existing_id="t-1")
    if body.name == "odd":
        raise InvalidInput.field("body.name", "must not be odd")
    return {"ok": "yes"}


@router.get("/things/{thing_id}")
async def read(
    thing_id: int, who: Annotated[Principal, Depends(require("customers:read"))]
) -> dict[str, str]:
    if thing_id == 0:
        raise NotFound("No thing 0")
    if thing_id == 500:
        raise RuntimeError("boom")
    return {"subject": who.subject}


@router.get("/pages")
async def pages(page: Annotated[PageParams, Depends(page_params)]) -> dict[str, object]:
    return {"limit": page.limit, "cursor": page.cursor}


@pytest.fixture
def client() -> httpx.AsyncClient:
    runtime = ServiceRuntime(
        settings=ServiceSettings(service_name="unit"),
        tables=messaging_tables(make_metadata()),
        role=Role.api,
    )
    app: FastAPI = create_service_app(runtime=runtime, title="t", description="d", routers=[router])
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    )


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_missing_token_is_401_and_missing_scope_is_403(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/things/1"), 401)
    assert "bearer" in str(body["detail"]).lower()
    body = assert_problem(await client.get("/v1/things/1", headers=auth("scores:read")), 403)
    assert "customers:read" in str(body["detail"])
    ok = await client.get("/v1/things/1", headers=auth("customers:read", subject="agent-7"))
    assert ok.status_code == 200 and ok.json() == {"subject": "agent-7"}


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(
            {"sub": "x", "scope": "customers:read", "exp": int(time.time()) - 10},
            DEV_JWT_SECRET,
            "HS256",
        ),
        jwt.encode(
            {"sub": "x", "scope": "customers:read", "exp": int(time.time()) + 60},
            "another-secret-0123456789-0123456789",
            "HS256",
        ),
        jwt.encode(
            {"scope": "customers:read", "exp": int(time.time()) + 60}, DEV_JWT_SECRET, "HS256"
        ),
        "not.a.jwt",
    ],
    ids=["expired", "wrong-key", "no-subject", "garbage"],
)
async def test_bad_tokens_are_401(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/v1/things/1", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_validation_errors_name_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/things", json={"name": "a", "count": -1}, headers=auth())
    body = assert_problem(response, 422)
    fields = {e["field"]: e["reason"] for e in body["errors"]}  # type: ignore[union-attr]
    assert set(fields) == {"body.name", "body.count"}
    assert (
        "at least 2" in fields["body.name"] and "greater than or equal to 0" in fields["body.count"]
    )
    malformed = await client.post(
        "/v1/things", content=b"{", headers={**auth(), "content-type": "application/json"}
    )
    assert_problem(malformed, 422)


async def test_a_body_that_is_not_json_names_the_body_and_why(client: httpx.AsyncClient) -> None:
    """Not `body.31: JSON decode error` (a character offset as the field, no reason)."""
    trailing_comma = await client.post(
        "/v1/things",
        content=b'{"name": "ab", "count": 1,}',
        headers={**auth(), "content-type": "application/json"},
    )
    body = assert_problem(trailing_comma, 422)
    assert body["errors"] == [
        {
            "field": "body",
            "reason": "invalid JSON at character 26: Expecting property name enclosed in double quotes",
        }
    ]
    # curl -d without -H 'content-type: application/json' sends a form: say so
    form = await client.post(
        "/v1/things",
        content=b'{"name": "ab", "count": 1}',
        headers={**auth(), "content-type": "application/x-www-form-urlencoded"},
    )
    body = assert_problem(form, 422)
    [error] = body["errors"]  # type: ignore[misc]
    assert error["field"] == "body"
    assert "application/x-www-form-urlencoded" in error["reason"]
    assert "content-type: application/json" in error["reason"]
    # a JSON body of the wrong shape keeps pydantic's own words
    array = await client.post(
        "/v1/things", json=[1], headers={**auth(), "content-type": "application/json"}
    )
    body = assert_problem(array, 422)
    assert body["errors"] == [
        {
            "field": "body",
            "reason": "Input should be a valid dictionary or object to extract fields from",
        }
    ]


async def test_domain_errors_become_problems(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/v1/things", json={"name": "taken", "count": 1}, headers=auth()), 409
    )
    assert body["existing_id"] == "t-1"
    body = assert_problem(
        await client.post("/v1/things", json={"name": "odd", "count": 1}, headers=auth()), 422
    )
    assert body["errors"] == [{"field": "body.name", "reason": "must not be odd"}]
    assert_problem(await client.get("/v1/things/0", headers=auth()), 404)
    assert_problem(await client.get("/v1/nowhere", headers=auth()), 404)
    assert_problem(await client.delete("/v1/things/1", headers=auth()), 405)
    body = assert_problem(await client.get("/v1/things/500", headers=auth()), 500)
    assert "boom" not in str(body)  # internals are logged, not shown


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len((await client.get("/health/live")).headers["x-request-id"]) == 32


async def test_cursor_round_trip_and_tampering(client: httpx.AsyncClient) -> None:
    key = {"created_at": "2026-01-01T00:00:00+00:00", "id": "c-9"}
    assert decode_cursor(encode_cursor(key)) == key
    response = await client.get("/v1/pages", params={"limit": 10, "cursor": encode_cursor(key)})
    assert response.json() == {"limit": 10, "cursor": key}
    body = assert_problem(await client.get("/v1/pages", params={"cursor": "%%%"}), 422)
    assert body["errors"] == [
        {"field": "query.cursor", "reason": "not a cursor returned by this API"}
    ]
    assert_problem(await client.get("/v1/pages", params={"limit": 0}), 422)
    assert_problem(await client.get("/v1/pages", params={"limit": 201}), 422)


def test_openapi_declares_bearer_auth_and_problem_responses(client: httpx.AsyncClient) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    spec = app.openapi()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    responses = spec["paths"]["/v1/things"]["post"]["responses"]
    assert "application/problem+json" in responses["422"]["content"] or "422" in responses


async def test_the_api_docs_need_no_cdn(client: httpx.AsyncClient) -> None:
    """/docs loaded Swagger UI from cdn.jsdelivr.net: blank on a network without the internet."""
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        assert "cdn.jsdelivr.net" not in html and "http://" not in html and "https://" not in html
        scripts = re.findall(r'<script src="([^"]+)"', html)
        assert scripts, page
        for script in scripts:
            served = await client.get(script)
            assert served.status_code == 200, script
            assert "javascript" in served.headers["content-type"]
            assert len(served.content) > 100_000  # the bundle itself, not an error page
