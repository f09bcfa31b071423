"""Production auth: bearer tokens verified against the identity provider's JWKS URL."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, Depends

from shared.db import make_metadata
from shared.http.app import create_service_app
from shared.http.auth import Principal, require
from shared.messaging.tables import messaging_tables
from shared.runtime import Role, ServiceRuntime
from shared.settings import ServiceSettings

ISSUER, AUDIENCE = "https://idp.example.com/", "crm-api"
router = APIRouter(prefix="/v1")


@router.get("/things")
async def things(who: Annotated[Principal, Depends(require("customers:read"))]) -> dict[str, str]:
    return {"subject": who.subject}


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    server.shutdown()


def client_for(jwks_url: str) -> httpx.AsyncClient:
    settings = ServiceSettings(
        service_name="unit",
        crm_env="production",
        jwt_jwks_url=jwks_url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )  # type: ignore[arg-type]
    runtime = ServiceRuntime(
        settings=settings, tables=messaging_tables(make_metadata()), role=Role.api
    )
    app = create_service_app(runtime=runtime, title="t", description="d", routers=[router])
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    )


def token(key: Any = KEY, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "sub": "agent-1",
        "scope": "customers:read",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


async def get(client: httpx.AsyncClient, bearer: str) -> httpx.Response:
    return await client.get("/v1/things", headers={"Authorization": f"Bearer {bearer}"})


async def test_a_token_signed_by_the_identity_provider_is_accepted(jwks_url: str) -> None:
    async with client_for(jwks_url) as client:
        response = await get(client, token())
        assert response.status_code == 200 and response.json() == {"subject": "agent-1"}
        assert (await get(client, token(scope="scores:read"))).status_code == 403


@pytest.mark.parametrize(
    "bad",
    [
        lambda: token(key=OTHER_KEY),
        lambda: token(kid="unknown"),
        lambda: token(aud="another-api"),
        lambda: token(iss="https://elsewhere.example.com/"),
        lambda: token(exp=int(time.time()) - 5),
        # The development secret must not open a production service (algorithm confusion).
        lambda: jwt.encode(
            {"sub": "x", "scope": "customers:read", "exp": int(time.time()) + 60},
            ServiceSettings().jwt_secret,
            "HS256",
            headers={"kid": "k1"},
        ),
    ],
    ids=["other-key", "unknown-kid", "audience", "issuer", "expired", "hs256"],
)
async def test_other_tokens_are_401(jwks_url: str, bad: Any) -> None:
    async with client_for(jwks_url) as client:
        response = await get(client, bad())
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_unreachable_identity_provider_is_503_not_a_bad_token() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}/jwks") as client:
        response = await get(client, token())
    # A 401 would tell the client to throw away a valid token; the outage is ours.
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "JWKS" in response.json()["detail"]
