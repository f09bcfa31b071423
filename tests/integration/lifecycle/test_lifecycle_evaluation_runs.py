"""Runs of the time rules as records: asked for asynchronously (`Prefer: respond-async`) and
run by the worker, waited on, or cut short by a process that stopped."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from integration.lifecycle.lifecycle_helpers import ADMIN, READER, T0, Lifecycle, day
from sqlalchemy import text
from support import api_replica, assert_field_problem, eventually

from services.lifecycle import service
from services.lifecycle.main import create_app
from shared.http.pagination import encode_cursor

pytestmark = pytest.mark.integration


async def _lapsing_customer(lifecycle: Lifecycle) -> uuid.UUID:
    """A growth customer with one purchase at day 10: lapsing is due at day 130."""
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    await lifecycle.wait_for(customer, "growth")
    return customer


async def _run(lifecycle: Lifecycle, run_id: object) -> dict[str, Any]:
    response = await lifecycle.client.get(f"/v1/lifecycle/evaluations/{run_id}", headers=READER)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _finished(lifecycle: Lifecycle, run_id: object) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        run = await _run(lifecycle, run_id)
        return run if run["status"] in ("succeeded", "failed") else None

    return await eventually(probe, timeout=30, interval=0.1, what=f"run {run_id} finished")


async def _transitions_of(lifecycle: Lifecycle, run_id: object) -> int:
    async with lifecycle.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM stage_transitions WHERE evaluation_run_id = :r"),
                    {"r": run_id},
                )
            ).scalar_one()
        )


async def test_an_evaluation_asked_for_asynchronously_is_run_by_the_worker(
    lifecycle: Lifecycle,
) -> None:
    customer = await _lapsing_customer(lifecycle)
    response = await lifecycle.client.post(
        "/v1/lifecycle/evaluate",
        json={"as_of": day(140).isoformat()},
        headers={**ADMIN, "Prefer": "respond-async, wait=5"},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert response.headers["location"] == f"/v1/lifecycle/evaluations/{accepted['run_id']}"
    assert response.headers["preference-applied"] == "respond-async"
    assert (accepted["status"], accepted["trigger"], accepted["total_moved"]) == (
        "pending",
        "async_request",
        0,
    )
    assert datetime.fromisoformat(accepted["as_of"]) == day(140)
    assert accepted["requested_by"] == "ops-1"

    run = await _finished(lifecycle, accepted["run_id"])
    assert run["status"] == "succeeded", run
    assert run["error"] is None and run["seconds"] is not None and run["chunks"] >= 1
    assert {"from_stage": "growth", "to_stage": "decline", "reason": "lapsing"}.items() <= next(
        m for m in run["moved"] if m["from_stage"] == "growth"
    ).items()
    # Its counts are those of the moves it committed, each recorded with the run's id.
    assert run["total_moved"] == await _transitions_of(lifecycle, run["run_id"]) >= 1
    body = await lifecycle.lifecycle(customer)
    assert body is not None and body["stage"] == "decline"
    assert body["history"][-1]["evaluation_run_id"] == run["run_id"]


async def test_an_as_of_ahead_of_the_clock_is_refused_and_records_nothing(
    lifecycle: Lifecycle,
) -> None:
    """With the production default (5 minutes), an `as_of` days ahead of the server's clock is
    a 422, waited on or asked for asynchronously: no run, nobody moved. The test stack's own
    allowance then runs it, so the refusal is what held the customer back."""
    customer = await _lapsing_customer(lifecycle)
    runs = "SELECT count(*) FROM evaluation_runs"
    async with lifecycle.engine.connect() as conn:
        before = (await conn.execute(text(runs))).scalar_one()
    async with api_replica(
        create_app, lifecycle.settings, lifecycle.clock, max_future_as_of_seconds=300
    ) as strict:
        for prefer in ({}, {"Prefer": "respond-async"}):
            response = await strict.post(
                "/v1/lifecycle/evaluate",
                json={"as_of": day(140).isoformat()},
                headers={**ADMIN, **prefer},
            )
            reason = assert_field_problem(response, "body.as_of", reason_has="in the future")
            assert "MAX_FUTURE_AS_OF_SECONDS" in reason and T0.date().isoformat() in reason
    async with lifecycle.engine.connect() as conn:
        assert (await conn.execute(text(runs))).scalar_one() == before
    body = await lifecycle.lifecycle(customer)
    assert body is not None and body["stage"] == "growth"

    await lifecycle.evaluate(day(140))
    body = await lifecycle.lifecycle(customer)
    assert body is not None and body["stage"] == "decline"


async def test_a_waited_on_evaluation_is_recorded_as_it_answered(lifecycle: Lifecycle) -> None:
    await _lapsing_customer(lifecycle)
    answered = await lifecycle.evaluate(day(140))
    run = await _run(lifecycle, answered["run_id"])
    assert (run["status"], run["trigger"], run["requested_by"]) == (
        "succeeded",
        "request",
        "ops-1",
    )
    assert run["moved"] == answered["moved"]
    assert run["total_moved"] == answered["total_moved"] >= 1
    assert run["policy_version"] == answered["policy_version"]


async def test_runs_are_listed_newest_first_page_by_page(lifecycle: Lifecycle) -> None:
    first = await lifecycle.evaluate(day(141))
    second = await lifecycle.evaluate(day(142))
    lifecycle.clock.set(T0)  # both asked for at the same clock time: the id breaks the tie
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 1, "status": "succeeded"}
        if cursor:
            params["cursor"] = cursor
        response = await lifecycle.client.get(
            "/v1/lifecycle/evaluations", params=params, headers=READER
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [r["run_id"] for r in seen]
    assert len(ids) == len(set(ids))  # no run twice across pages
    assert {first["run_id"], second["run_id"]} <= set(ids)
    keys = [(datetime.fromisoformat(r["requested_at"]), uuid.UUID(r["run_id"])) for r in seen]
    assert keys == sorted(keys, reverse=True)
    assert all(r["status"] == "succeeded" for r in seen)

    naive = encode_cursor({"requested_at": "2026-01-01T00:00:00", "run_id": str(uuid.uuid4())})
    response = await lifecycle.client.get(
        "/v1/lifecycle/evaluations", params={"cursor": naive}, headers=READER
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "query.cursor" in response.text


async def test_an_unknown_run_is_a_404(lifecycle: Lifecycle) -> None:
    response = await lifecycle.client.get(
        f"/v1/lifecycle/evaluations/{uuid.uuid4()}", headers=READER
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def _insert_run(
    lifecycle: Lifecycle, *, trigger: str, requested_at: datetime, as_of: datetime, moved: int
) -> uuid.UUID:
    run_id = uuid.uuid4()
    counts = [
        {"from_stage": "growth", "to_stage": "decline", "reason": "lapsing", "customers": moved}
    ]
    async with lifecycle.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO evaluation_runs (run_id, status, trigger, as_of, requested_at,"
                " requested_by, started_at, updated_at, moved, chunks, last_pass)"
                " VALUES (:r, 'running', :t, :a, :q, 'ops-1', :q, :q, CAST(:m AS jsonb), 2, 0)"
            ),
            {
                "r": run_id,
                "t": trigger,
                "a": as_of,
                "q": requested_at,
                "m": orjson.dumps(counts if moved else []).decode(),
            },
        )
    return run_id


async def test_a_run_cut_short_is_resumed_if_asked_for_async_else_marked_failed(
    lifecycle: Lifecycle,
) -> None:
    """Runs left `running` by a process that stopped: nobody holds their lock."""
    customer = await _lapsing_customer(lifecycle)
    early = T0 - timedelta(days=30)  # before every other run: looked at first
    async with lifecycle.engine.connect() as holder:
        # Still at work in another process: its lock is held, so it is left alone.
        busy = await _insert_run(
            lifecycle, trigger="request", requested_at=early, as_of=day(140), moved=0
        )
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": service.run_lock_key(busy)})
        waited_on = await _insert_run(
            lifecycle,
            trigger="request",
            requested_at=early + timedelta(seconds=1),
            as_of=day(140),
            moved=0,
        )
        resumed = await _insert_run(
            lifecycle,
            trigger="async_request",
            requested_at=early + timedelta(seconds=2),
            as_of=day(140),
            moved=3,  # committed before the process stopped
        )

        run = await _finished(lifecycle, resumed)
        assert run["status"] == "succeeded", run
        assert run["total_moved"] == 3 + await _transitions_of(lifecycle, resumed)
        assert run["chunks"] >= 3
        body = await lifecycle.lifecycle(customer)
        assert body is not None and body["stage"] == "decline"
        assert body["history"][-1]["evaluation_run_id"] == str(resumed)

        abandoned = await _run(lifecycle, waited_on)
        assert abandoned["status"] == "failed"
        assert abandoned["error"].startswith("abandoned: the process running it stopped")
        assert abandoned["finished_at"] is not None
        assert (await _run(lifecycle, busy))["status"] == "running"
        await holder.execute(
            text("SELECT pg_advisory_unlock(:k)"), {"k": service.run_lock_key(busy)}
        )
        await holder.commit()

    stopped = await _finished(lifecycle, busy)
    assert stopped["status"] == "failed" and stopped["error"].startswith("abandoned")


async def _listed(lifecycle: Lifecycle, **params: Any) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        query = {**params, "limit": 200, **({"cursor": cursor} if cursor else {})}
        response = await lifecycle.client.get(
            "/v1/lifecycle/evaluations", params=query, headers=READER
        )
        assert response.status_code == 200, response.text
        ids |= {r["run_id"] for r in response.json()["items"]}
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("more pages than expected")


async def test_runs_that_moved_nobody_can_be_left_out(lifecycle: Lifecycle) -> None:
    await _lapsing_customer(lifecycle)
    mover = await lifecycle.evaluate(day(150))
    idle = await lifecycle.evaluate(day(150))  # the same run again: nobody left to move
    assert mover["total_moved"] >= 1 and idle["total_moved"] == 0
    moved = await _listed(lifecycle, moved_customers="true")
    nobody = await _listed(lifecycle, moved_customers="false")
    assert mover["run_id"] in moved and mover["run_id"] not in nobody
    assert idle["run_id"] in nobody and idle["run_id"] not in moved
    assert moved | nobody == await _listed(lifecycle)
