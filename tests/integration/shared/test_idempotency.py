"""Idempotency-Key on real PostgreSQL: one effect per key, the stored response on retries (also
concurrent ones), and a 422 when the key is reused for a different request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine, make_metadata, session_factory, transaction
from shared.devstack import PostgresServer
from shared.errors import InvalidInput
from shared.http.idempotency import run_once
from shared.messaging.tables import messaging_tables

pytestmark = pytest.mark.integration

METADATA: MetaData = make_metadata()
TABLES = messaging_tables(METADATA)
EFFECTS = Table("effects", METADATA, Column("id", Integer, primary_key=True, autoincrement=True))


@pytest.fixture(scope="module")
async def engine(postgres_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    name = f"crm_idem_{uuid.uuid4().hex[:6]}"
    postgres_server.create_database(name)
    engine = create_engine(postgres_server.url(name))
    async with engine.begin() as conn:
        await conn.run_sync(METADATA.create_all)
    yield engine
    await engine.dispose()


async def effects(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(EFFECTS))).scalar_one())


async def submit(
    engine: AsyncEngine, key: str, request: dict[str, str], delay: float = 0.0
) -> tuple[int, object, bool]:
    sessions = session_factory(engine)
    async with transaction(sessions) as session:

        async def action() -> tuple[int, object]:
            new_id = (await session.execute(insert(EFFECTS).returning(EFFECTS.c.id))).scalar_one()
            await asyncio.sleep(
                delay
            )  # a slow first request: the concurrent retry must wait for it
            return 201, {"effect": new_id}

        stored = await run_once(
            session, TABLES, scope="POST /v1/things", key=key, request=request, action=action
        )
    return stored.status_code, stored.body, stored.replayed


async def test_retries_get_the_first_response_and_cause_no_second_effect(
    engine: AsyncEngine,
) -> None:
    before = await effects(engine)
    key = uuid.uuid4().hex
    first = await submit(engine, key, {"name": "a"})
    second = await submit(engine, key, {"name": "a"})
    assert first[:2] == second[:2] and first[0] == 201
    assert (first[2], second[2]) == (False, True)
    assert await effects(engine) == before + 1


async def test_concurrent_retries_wait_for_the_first_and_replay_it(engine: AsyncEngine) -> None:
    before = await effects(engine)
    key = uuid.uuid4().hex
    results = await asyncio.gather(
        *(submit(engine, key, {"name": "b"}, delay=0.3) for _ in range(4))
    )
    assert len({str(r[1]) for r in results}) == 1
    assert sorted(r[2] for r in results) == [False, True, True, True]
    assert await effects(engine) == before + 1


async def test_same_key_for_a_different_request_is_refused(engine: AsyncEngine) -> None:
    key = uuid.uuid4().hex
    await submit(engine, key, {"name": "c"})
    with pytest.raises(InvalidInput) as refused:
        await submit(engine, key, {"name": "d"})
    assert refused.value.errors == [
        {
            "field": "header.idempotency-key",
            "reason": "already used for a different request; use a new key",
        }
    ]


async def test_a_failed_first_attempt_leaves_the_key_free(engine: AsyncEngine) -> None:
    key = uuid.uuid4().hex
    sessions = session_factory(engine)

    async def failing() -> tuple[int, object]:
        raise InvalidInput.field("body.name", "bad")

    with pytest.raises(InvalidInput):
        async with transaction(sessions) as session:
            await run_once(
                session,
                TABLES,
                scope="POST /v1/things",
                key=key,
                request={"name": "e"},
                action=failing,
            )
    status, _, replayed = await submit(engine, key, {"name": "e"})
    assert status == 201 and replayed is False
