"""A database that is down, restarting or saturated is an honest 503 problem+json with
Retry-After, never a 500; a database error that is a bug (bad SQL, a constraint) stays a 500.

The connection failures are real ones (a closed port on loopback) where they can be had without
a server; the server-side ones (starting up, connection gone) are the exceptions asyncpg and
SQLAlchemy raise for them, raised from a route.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import make_metadata
from shared.http.app import create_service_app
from shared.http.problems import RETRY_AFTER_SECONDS, is_unavailable
from shared.messaging.tables import messaging_tables
from shared.runtime import Role, ServiceRuntime
from shared.settings import ServiceSettings


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrapped(
    orig: BaseException, kind: type[sa_exc.DBAPIError] = sa_exc.OperationalError
) -> Exception:
    """What SQLAlchemy raises around a driver error (the adapter's error caused by asyncpg's)."""
    adapter_error = Exception(str(orig))
    adapter_error.__cause__ = orig
    return kind("SELECT 1", {}, adapter_error)


def invalidated() -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True)


UNAVAILABLE: dict[str, Callable[[], BaseException]] = {
    "refused": lambda: ConnectionRefusedError(111, "Connect call failed"),
    "reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "os-error-on-connect": lambda: OSError("Multiple exceptions: [Errno 111] Connect call failed"),
    "starting-up": lambda: asyncpg.CannotConnectNowError("the database system is starting up"),
    "connection-gone": lambda: asyncpg.ConnectionDoesNotExistError("connection was closed"),
    "admin-shutdown": lambda: asyncpg.AdminShutdownError("terminating connection"),
    "too-many-connections": lambda: asyncpg.TooManyConnectionsError("too many clients"),
    "asyncpg-interface": lambda: asyncpg.InterfaceError("connection is closed"),
    "pool-acquire-timeout": lambda: TimeoutError(),
    "sa-operational": lambda: wrapped(asyncpg.CannotConnectNowError("not yet accepting")),
    "sa-interface": lambda: wrapped(
        asyncpg.ConnectionDoesNotExistError("closed"), sa_exc.InterfaceError
    ),
    "sa-dbapi-reset": lambda: wrapped(ConnectionResetError(104, "reset"), sa_exc.DBAPIError),
    "sa-invalidated": invalidated,
    "sa-pool-timeout": lambda: sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10"),
}

BUGS: dict[str, Callable[[], BaseException]] = {
    "sa-undefined-table": lambda: wrapped(
        asyncpg.UndefinedTableError('relation "nope" does not exist'), sa_exc.ProgrammingError
    ),
    "sa-unique-violation": lambda: wrapped(
        asyncpg.UniqueViolationError("duplicate key"), sa_exc.IntegrityError
    ),
    "asyncpg-syntax": lambda: asyncpg.PostgresSyntaxError("syntax error"),
    "sa-no-result": lambda: sa_exc.NoResultFound("No row was found"),
    "value-error": lambda: ValueError("a bug"),
}


@pytest.mark.parametrize("name", sorted(UNAVAILABLE))
def test_outages_are_unavailable(name: str) -> None:
    assert is_unavailable(UNAVAILABLE[name]())


@pytest.mark.parametrize("name", sorted(BUGS))
def test_bugs_are_not_unavailable(name: str) -> None:
    assert not is_unavailable(BUGS[name]())


def build_app() -> FastAPI:
    router = APIRouter(prefix="/v1")
    port = closed_port()

    @router.get("/raise/{name}")
    async def raise_named(name: str) -> dict[str, str]:
        raise {**UNAVAILABLE, **BUGS}[name]()

    @router.get("/orm")
    async def orm() -> dict[str, str]:
        engine = create_async_engine(f"postgresql+asyncpg://crm@127.0.0.1:{port}/crm")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        return {"ok": "yes"}

    @router.get("/raw-pool")
    async def raw_pool() -> dict[str, str]:
        pool = await asyncpg.create_pool(f"postgresql://crm@127.0.0.1:{port}/crm", min_size=0)
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        finally:
            await pool.close()
        return {"ok": "yes"}

    @router.get("/pool-wait")
    async def pool_wait() -> dict[str, str]:
        await asyncio.wait_for(asyncio.Event().wait(), timeout=0.01)  # an acquire that times out
        return {"ok": "yes"}

    runtime = ServiceRuntime(
        settings=ServiceSettings(service_name="unit"),
        tables=messaging_tables(make_metadata()),
        role=Role.api,
    )
    return create_service_app(runtime=runtime, title="t", description="d", routers=[router])


@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(), raise_app_exceptions=False),
        base_url="http://t",
    )


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = response.json()
    assert body["status"] == 503
    assert body["type"].endswith("/service-unavailable")
    assert body["request_id"] == response.headers["x-request-id"]
    assert "database" in body["detail"]


@pytest.mark.parametrize("path", ["/v1/orm", "/v1/raw-pool", "/v1/pool-wait"])
async def test_a_real_refused_connection_is_503(client: httpx.AsyncClient, path: str) -> None:
    assert_unavailable(await client.get(path))


@pytest.mark.parametrize("name", sorted(UNAVAILABLE))
async def test_each_outage_error_is_503(client: httpx.AsyncClient, name: str) -> None:
    assert_unavailable(await client.get(f"/v1/raise/{name}"))


# Two of them: every 500 logs a formatted traceback, which is slow.
@pytest.mark.parametrize("name", ["sa-undefined-table", "asyncpg-syntax"])
async def test_database_bugs_stay_500(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/v1/raise/{name}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in response.headers
    assert response.json()["type"].endswith("/internal-error")


def test_the_503_is_documented() -> None:
    spec = build_app().openapi()
    responses = spec["paths"]["/v1/orm"]["get"]["responses"]
    assert "application/problem+json" in responses["503"]["content"]
