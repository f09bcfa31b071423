"""While PostgreSQL is down, the API answers an honest 503 problem+json with Retry-After (never a
500), on the ORM path and on the raw asyncpg read pool alike; once it is back, it answers again.

A PostgreSQL of this test's own (the session's server is shared), stopped the way the chaos
suite does it (SIGQUIT: an immediate, crash-like shutdown) and started again; the profile
service runs in-process against it (API role).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import auth, eventually, running

from services.profile.main import create_app
from shared.db import migrate
from shared.devstack import EmbeddedPostgres, PostgresServer, free_port
from shared.http.problems import RETRY_AFTER_SECONDS
from shared.runtime import Role

pytestmark = pytest.mark.integration

WRITER = auth("customers:read", "customers:write", subject="clerk")
READER = auth("customers:read", subject="viewer")


@pytest.fixture(scope="module")
def own_postgres(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedPostgres]:
    if not isinstance(postgres_server, EmbeddedPostgres):
        pytest.skip("needs the embedded PostgreSQL binaries to run a server of its own")
    # Durable: a crash of a server that skips fsync and synchronous commit loses commits.
    server = EmbeddedPostgres(
        Path(tmp_path_factory.mktemp("outage-postgres")) / "data", free_port()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def crash(server: EmbeddedPostgres) -> None:
    """SIGQUIT (immediate shutdown: connections dropped, no checkpoint), then wait for the end."""
    process = server._process
    assert process is not None and process.pid is not None and process.is_running()
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGQUIT)
    server.stop(timeout=30)


def assert_honest_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    body = response.json()
    assert body["status"] == 503 and body["type"].endswith("/service-unavailable")
    assert body["request_id"] == response.headers["x-request-id"]


async def test_reads_and_writes_answer_503_while_the_database_is_down(
    own_postgres: EmbeddedPostgres, service_settings: object
) -> None:
    database = f"crm_profile_outage_{uuid.uuid4().hex[:6]}"
    own_postgres.create_database(database)
    url = own_postgres.url(database)
    await asyncio.to_thread(migrate, "profile", url)
    assert callable(service_settings)
    settings = service_settings("profile", database_url=url, db_pool_size=4)
    app = create_app(role=Role.api, settings=settings, configure_logs=False)
    async with running(app) as client:
        created = await client.post(
            "/v1/customers",
            json={"name": "Ada Outage", "email": f"{uuid.uuid4().hex[:10]}@example.com"},
            headers=WRITER,
        )
        assert created.status_code == 201, created.text
        customer = created.json()["id"]
        reads = [f"/v1/customers/{customer}", f"/v1/customers/{customer}/360"]
        for path in reads:  # both pools hold live connections now
            assert (await client.get(path, headers=READER)).status_code == 200

        await asyncio.to_thread(crash, own_postgres)
        for _ in range(2):  # the dropped connections first, then refused new ones
            for path in reads:
                assert_honest_503(await client.get(path, headers=READER))
            assert_honest_503(
                await client.post("/v1/customers", json={"name": "Bo Down"}, headers=WRITER)
            )
            assert_honest_503(await client.get("/v1/customers?limit=5", headers=READER))
        ready = await client.get("/health/ready")
        assert ready.status_code == 503

        await asyncio.to_thread(own_postgres.start)

        async def all_read() -> bool:
            statuses = [(await client.get(p, headers=READER)).status_code for p in reads]
            assert set(statuses) <= {200, 503}, statuses  # recovering: never a 500
            return statuses == [200, 200]

        await eventually(all_read, timeout=60, interval=0.2, what="reads answer after restart")
        again = await client.post("/v1/customers", json={"name": "Cy Back"}, headers=WRITER)
        assert again.status_code == 201, again.text
