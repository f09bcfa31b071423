"""Messaging housekeeping: its settings fail fast, and every worker schedules it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import ValidationError
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.clock import FixedClock
from shared.messaging.housekeeping import PruneResult, prune_messaging_tables
from shared.messaging.tables import messaging_tables
from shared.runtime import HOUSEKEEPING_JOB, ServiceRuntime
from shared.settings import ServiceSettings

TABLES = messaging_tables(MetaData())


def test_retention_defaults() -> None:
    s = ServiceSettings()
    assert s.inbox_retention_hours == 168
    assert s.idempotency_key_retention_hours == 24
    assert s.housekeeping_interval_seconds == 600


def test_retention_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOX_RETENTION_HOURS", "336")
    monkeypatch.setenv("IDEMPOTENCY_KEY_RETENTION_HOURS", "48")
    monkeypatch.setenv("HOUSEKEEPING_INTERVAL_SECONDS", "60")
    s = ServiceSettings()
    assert (s.inbox_retention_hours, s.idempotency_key_retention_hours) == (336, 48)
    assert s.housekeeping_interval_seconds == 60


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("INBOX_RETENTION_HOURS", "0", "greater than or equal to 1"),
        ("INBOX_RETENTION_HOURS", "-5", "greater than or equal to 1"),
        ("INBOX_RETENTION_HOURS", "a week", "valid integer"),
        ("IDEMPOTENCY_KEY_RETENTION_HOURS", "0", "greater than or equal to 1"),
        ("IDEMPOTENCY_KEY_RETENTION_HOURS", "1000000", "less than or equal to"),
        ("HOUSEKEEPING_INTERVAL_SECONDS", "9", "greater than or equal to 10"),
        ("HOUSEKEEPING_INTERVAL_SECONDS", "0", "greater than or equal to 10"),
    ],
)
def test_bad_retention_settings_fail_fast(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message) as raised:
        ServiceSettings()
    assert variable in str(raised.value)


def test_the_smallest_allowed_values_are_accepted() -> None:
    s = ServiceSettings(
        INBOX_RETENTION_HOURS=1,
        IDEMPOTENCY_KEY_RETENTION_HOURS=1,
        HOUSEKEEPING_INTERVAL_SECONDS=10,
    )
    assert (s.inbox_retention_hours, s.idempotency_key_retention_hours) == (1, 1)
    assert s.housekeeping_interval_seconds == 10


async def test_every_worker_schedules_the_housekeeping_with_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    runtime = ServiceRuntime(
        settings=ServiceSettings(
            service_name="unit",
            INBOX_RETENTION_HOURS=100,
            IDEMPOTENCY_KEY_RETENTION_HOURS=10,
            HOUSEKEEPING_INTERVAL_SECONDS=30,
        ),
        tables=TABLES,
        clock=FixedClock(now),
        configure_logs=False,
    )
    scheduled: list[tuple[str, float, Callable[[], Awaitable[Any]]]] = []
    pruned: list[dict[str, Any]] = []
    own_jobs_ran: list[str] = []

    async def record_periodic(
        name: str, interval_seconds: float, job: Callable[[], Awaitable[Any]]
    ) -> None:
        scheduled.append((name, interval_seconds, job))

    async def record_prune(**kwargs: Any) -> PruneResult:
        pruned.append(kwargs)
        return PruneResult(inbox=0, idempotency_keys=0, capped=False)

    async def own_job() -> None:
        own_jobs_ran.append("own")

    runtime.engine = cast(AsyncEngine, object())  # start() is not called: no database here
    monkeypatch.setattr(runtime, "run_periodic", record_periodic)
    monkeypatch.setattr("shared.runtime.prune_messaging_tables", record_prune)
    runtime.spawn_worker(lambda rt: [own_job()])
    await asyncio.gather(*runtime.tasks)

    assert own_jobs_ran == ["own"]
    assert [(name, interval) for name, interval, _ in scheduled] == [(HOUSEKEEPING_JOB, 30)]
    await scheduled[0][2]()
    (call,) = pruned
    assert call["now"] == now and call["service"] == "unit" and call["tables"] is TABLES
    assert call["engine"] is runtime.engine
    assert call["inbox_retention"] == timedelta(hours=100)
    assert call["idempotency_retention"] == timedelta(hours=10)


async def test_a_naive_now_or_an_empty_chunk_is_refused() -> None:
    engine: Any = None  # refused before any statement
    with pytest.raises(ValueError, match="timezone-aware"):
        await prune_messaging_tables(
            engine=engine,
            tables=TABLES,
            service="unit",
            now=datetime(2026, 3, 1),
            inbox_retention=timedelta(hours=1),
            idempotency_retention=timedelta(hours=1),
        )
    with pytest.raises(ValueError, match="at least 1"):
        await prune_messaging_tables(
            engine=engine,
            tables=TABLES,
            service="unit",
            now=datetime(2026, 3, 1, tzinfo=UTC),
            inbox_retention=timedelta(hours=1),
            idempotency_retention=timedelta(hours=1),
            chunk_size=0,
        )
