"""Recompute: refit on purchases up to as_of, re-score everyone, safely while events arrive."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from integration.scoring.conftest import ADMIN, READER, T0, Scoring, purchase_event
from sqlalchemy import text
from support import api_replica, assert_field_problem, eventually

from services.scoring import bulk, facts, recompute, values
from services.scoring.main import create_app

pytestmark = pytest.mark.integration

# The seeded histories' daily BG/NBD parameters (see simulate_histories).
SIMULATED = {"r": 0.9, "alpha": 25.0, "a": 0.8, "b": 3.0}


async def test_the_recompute_fitted_the_simulated_parameters_and_stored_the_version(
    scoring: Scoring,
) -> None:
    run = scoring.seeded_run
    assert run["progress"] == 1.0 and run["customers_scored"] >= 250
    assert set(run["timings"]) >= {"load_facts", "fit", "clv", "valuation", "write_values"}
    rows = await scoring.sql(
        "SELECT as_of, time_unit, bgnbd, gamma_gamma, fit_error, fit_seconds, customers_with_purchase "
        "FROM model_versions WHERE version = :v",
        v=run["model_version"],
    )
    as_of, unit, bgnbd, gamma_gamma, fit_error, fit_seconds, purchasers = rows[0]
    assert (as_of, unit, fit_error) == (T0, "day", None)
    assert fit_seconds > 0 and bgnbd["n_customers"] == purchasers >= 250
    assert bgnbd["log_likelihood"] < 0 and gamma_gamma["n_customers"] == bgnbd["n_repeat_customers"]
    # 250 customers only: each parameter within 4 of its standard errors (log scale).
    errors = bgnbd["standard_errors"]
    assert errors is not None
    for name, truth in SIMULATED.items():
        estimate = bgnbd["parameters"][name]
        log_se = errors[name] / estimate
        assert abs(np.log(estimate / truth)) < 4 * log_se, (name, estimate, errors[name])


async def test_a_recompute_as_of_a_past_date_ignores_later_purchases(scoring: Scoring) -> None:
    customer = uuid.uuid4()
    early, late = T0 - timedelta(days=40), T0 - timedelta(days=10)
    await scoring.publish(
        purchase_event(customer, early, "30.00"), purchase_event(customer, late, "70.00")
    )
    await scoring.value_when(customer, lambda v: v["aggregates"]["orders"] == 2)

    as_of = T0 - timedelta(days=20)
    run = await scoring.recompute(as_of=as_of)

    value = await scoring.value(customer)
    assert value is not None and value["model_version"] == run["model_version"]
    assert value["as_of"] == as_of.isoformat().replace("+00:00", "Z")
    aggregates = value["aggregates"]
    # USD: its minor units
    assert aggregates["orders"] == 1 and aggregates["net_revenue"] == "30.00"
    assert aggregates["last_purchase_at"] == early.isoformat().replace("+00:00", "Z")
    # The fit saw exactly the customers who had bought by then.
    bought_by_then = await scoring.sql(
        "SELECT count(DISTINCT customer_id) FROM purchases WHERE purchased_at <= :t AND currency = 'USD'",
        t=as_of,
    )
    model = (await scoring.client.get("/v1/value/model", headers=READER)).json()["current"]
    assert model["version"] == run["model_version"]
    assert model["bgnbd"]["n_customers"] == bought_by_then[0][0]

    # Back to the present: the later purchase counts again.
    await scoring.recompute(as_of=T0)
    assert (await scoring.value(customer))["aggregates"]["orders"] == 2


async def test_a_recompute_as_of_now_never_moves_a_newer_value_back_in_time(
    scoring: Scoring,
) -> None:
    """The nightly run is as of its hour (and a run as of now reads facts a moment later):
    a value already newer than the run's as_of keeps its purchases and is re-scored with the
    new model at its own time."""
    customer = uuid.uuid4()
    later = T0 + timedelta(hours=3)  # handled before the run, with a business time after it
    await scoring.publish(purchase_event(customer, later, "45.00"))
    await scoring.value_when(customer, lambda v: v["aggregates"]["orders"] == 1)

    run = await scoring.recompute(as_of=T0)  # T0 is the clock's now: not a restatement

    value = await scoring.value(customer)
    assert value is not None and value["model_version"] == run["model_version"]
    assert value["as_of"] == later.isoformat().replace("+00:00", "Z")
    assert value["aggregates"]["orders"] == 1 and value["score"] is not None


async def test_a_history_too_short_to_fit_keeps_the_previous_parameters_and_says_why(
    scoring: Scoring,
) -> None:
    before = (await scoring.client.get("/v1/value/model", headers=READER)).json()["current"]
    run = await scoring.recompute(as_of=T0 - timedelta(days=330))
    model = (await scoring.client.get("/v1/value/model", headers=READER)).json()["current"]
    assert model["version"] == run["model_version"]
    assert "at least 20 customers with a repeat purchase" in model["fit_error"]
    assert model["bgnbd"]["carried_over_from"] == before["version"]
    assert model["bgnbd"]["parameters"] == before["bgnbd"]["parameters"]
    await scoring.recompute(as_of=T0)


async def test_recompute_is_safe_while_events_keep_arriving(scoring: Scoring) -> None:
    busy = scoring.population[100:140]
    response = await scoring.client.post(
        "/v1/value/recompute", json={"as_of": T0.isoformat(), "time_unit": "week"}, headers=ADMIN
    )
    assert response.status_code == 202
    for round_ in range(5):
        await scoring.publish(
            *(purchase_event(c, T0 + timedelta(hours=4, minutes=round_), "25.00") for c in busy)
        )
        await asyncio.sleep(0.05)
    run = await scoring.run_finished(response.headers["Location"])

    async def ingested() -> bool:
        rows = await scoring.sql(
            "SELECT count(*) FROM purchases WHERE customer_id = ANY(:ids) AND purchased_at > :t",
            ids=busy,
            t=T0,
        )
        return bool(rows[0][0] == 5 * len(busy))

    await eventually(ingested, timeout=30, what="purchases sent during the recompute handled")

    # Every customer ends on the new model, and every purchase is in their value.
    async def settled() -> bool:
        rows = await scoring.sql(
            "SELECT count(*) FROM customer_values cv WHERE cv.model_version IS DISTINCT FROM :v "
            "OR cv.orders <> (SELECT count(*) FROM purchases p WHERE p.customer_id = cv.customer_id "
            "AND p.purchased_at <= cv.as_of AND p.currency = 'USD')",
            v=run["model_version"],
        )
        return rows[0][0] == 0

    await eventually(settled, timeout=30, what="all values on the new model and up to date")
    for customer in busy[:5]:
        value = await scoring.value(customer)
        assert value is not None and value["clv"]["time_unit"] == "week"
        last_round = T0 + timedelta(hours=4, minutes=4)
        assert value["as_of"] == last_round.isoformat().replace("+00:00", "Z")
    async with scoring.engine.connect() as conn:
        unit = (
            await conn.execute(
                text("SELECT time_unit FROM model_versions WHERE version = :v"),
                {"v": run["model_version"]},
            )
        ).scalar_one()
    assert unit == "week"
    await scoring.recompute(as_of=T0)


async def test_values_changed_or_created_after_the_facts_were_read_are_caught_up(
    scoring: Scoring, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed, created, erased = scoring.population[7], uuid.uuid4(), uuid.uuid4()
    async with scoring.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO customer_values (customer_id, facts_version) VALUES (:c, 1)"),
            {"c": erased},
        )
    read_facts = recompute.load_facts

    async def facts_then_a_handler_commits(session: Any, **arguments: Any) -> Any:
        facts = await read_facts(session, **arguments)
        # What handler batches do meanwhile: a ledger change, a new customer, an erasure.
        async with scoring.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE customer_values SET facts_version = facts_version + 1 "
                    "WHERE customer_id = :c"
                ),
                {"c": changed},
            )
            await conn.execute(
                text("INSERT INTO customer_values (customer_id, facts_version) VALUES (:c, 1)"),
                {"c": created},
            )
            await conn.execute(
                text("DELETE FROM customer_values WHERE customer_id = :c"), {"c": erased}
            )
        return facts

    monkeypatch.setattr(recompute, "load_facts", facts_then_a_handler_commits)
    run = await scoring.recompute(as_of=T0)

    # Neither could be written with the facts read before them; the catch-up re-scored both.
    # The erased customer's value is not brought back.
    rows = await scoring.sql(
        "SELECT customer_id, model_version, as_of FROM customer_values "
        "WHERE customer_id = ANY(:ids)",
        ids=[changed, created, erased],
    )
    assert {(c, v) for c, v, _ in rows} == {
        (changed, run["model_version"]),
        (created, run["model_version"]),
    }
    total = await scoring.sql("SELECT count(*) FROM customer_values")
    assert run["customers_scored"] == total[0][0]


async def test_an_as_of_ahead_of_the_clock_is_refused_and_queues_no_run(
    scoring: Scoring,
) -> None:
    """With the production default (5 minutes), a recompute `as_of` days ahead of the server's
    clock is a 422, with or without an Idempotency-Key, and no run is queued; the key is not
    spent, so a corrected request with it runs."""
    ahead = {"as_of": (T0 + timedelta(days=3)).isoformat()}
    key = {"Idempotency-Key": f"ahead-{uuid.uuid4()}"}
    (before,) = await scoring.sql("SELECT count(*) FROM recompute_runs")
    async with api_replica(
        create_app, scoring.settings, scoring.clock, max_future_as_of_seconds=300
    ) as strict:
        for headers in (ADMIN, {**ADMIN, **key}):
            response = await strict.post("/v1/value/recompute", json=ahead, headers=headers)
            reason = assert_field_problem(response, "body.as_of", reason_has="in the future")
            assert "MAX_FUTURE_AS_OF_SECONDS" in reason
        assert await scoring.sql("SELECT count(*) FROM recompute_runs") == [before]
        response = await strict.post(
            "/v1/value/recompute", json={"as_of": T0.isoformat()}, headers={**ADMIN, **key}
        )
    assert response.status_code == 202, response.text
    assert await scoring.run_finished(response.headers["Location"])


async def test_a_recompute_that_moves_nobody_publishes_nothing(scoring: Scoring) -> None:
    first = await scoring.recompute(as_of=T0)
    again = await scoring.recompute(as_of=T0)

    # Same ledgers, same as_of: the same fit and scores, so no event; every value rewritten.
    assert again["events_published"] == 0
    assert again["customers_scored"] == first["customers_scored"] >= len(scoring.population)
    rows = await scoring.sql(
        "SELECT cv.model_version, c ->> 'run_id' FROM customer_values cv "
        "CROSS JOIN LATERAL jsonb_array_elements(cv.pending_causes) AS c "
        "WHERE c ->> 'type' = 'recompute'"
    )
    # The explanation keeps the latest recompute among the causes, not one per run.
    assert len(rows) == first["customers_scored"]
    assert {(version, run) for version, run in rows} == {(again["model_version"], again["id"])}


async def test_the_recompute_sums_up_and_builds_its_events_off_the_event_loop(
    scoring: Scoring, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seconds of CPU for a large population: on the loop's thread they held the worker's
    # consumers and HTTP for over a second at a time.
    ran_on: dict[str, list[int]] = {"facts": [], "events": [], "parse": []}

    def recording(name: str, function: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            ran_on[name].append(threading.get_ident())
            return function(*args, **kwargs)

        return record

    monkeypatch.setattr(facts, "_assemble", recording("facts", facts._assemble))
    monkeypatch.setattr(values, "value_events", recording("events", values.value_events))
    # Read payloads are parsed in a thread from 1 MiB on (a million customers' are tens of MB):
    # from 0 bytes here, so that this population's are too.
    monkeypatch.setattr(bulk, "parse", recording("parse", bulk.parse))
    monkeypatch.setattr(bulk, "PARSE_IN_THREAD_BYTES", 0)
    run = await scoring.recompute(as_of=T0 + timedelta(days=3))  # a new as_of: new scores
    assert run["events_published"] > 0
    loop_thread = threading.get_ident()
    assert ran_on["facts"] and loop_thread not in ran_on["facts"]
    assert ran_on["events"] and loop_thread not in ran_on["events"]
    assert ran_on["parse"] and loop_thread not in ran_on["parse"]


async def test_the_latest_due_nightly_run_is_requested_once_even_before_its_hour(
    scoring: Scoring,
) -> None:
    """Before today's hour the due run is yesterday's: a fresh install (or one down at that
    hour) catches up at once instead of publishing no score until the next night."""
    from services.scoring.recompute import schedule_nightly_recompute
    from shared.db import session_factory

    settings = scoring.settings.model_copy(
        update={"nightly_recompute": True, "nightly_recompute_hour_utc": 2}
    )
    # A day no other test's runs are as of.
    day = (T0 - timedelta(days=900)).replace(hour=0, minute=30, second=0, microsecond=0)
    sessions = session_factory(scoring.engine)
    requested = []
    for now in (day, day + timedelta(minutes=5), day + timedelta(hours=2)):
        async with sessions() as session, session.begin():
            run = await schedule_nightly_recompute(session, settings=settings, now=now)
            requested.append(None if run is None else run.as_of)
    today = day.replace(hour=2, minute=0)
    yesterday = today - timedelta(days=1)
    assert requested == [yesterday, None, today]
    # Not left for the worker to run: a model fitted as of 900 days ago for the next tests.
    async with scoring.engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM recompute_runs WHERE trigger = 'nightly' AND as_of < :t"),
            {"t": T0 - timedelta(days=800)},
        )


async def test_a_recompute_left_running_by_a_worker_that_stopped_is_run_again(
    scoring: Scoring,
) -> None:
    """A worker killed mid-run leaves its run `running`; the next holder of the recompute job's
    lock (which the stopped worker held) runs it again from the start."""
    run_id = uuid.uuid4()
    async with scoring.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO recompute_runs (id, status, trigger, as_of, time_unit, requested_at,"
                " started_at, phase, customers_total, customers_scored, events_published)"
                " VALUES (:id, 'running', 'api', :t, 'day', :t, :t, 'writing values', 300, 120, 7)"
            ),
            {"id": run_id, "t": T0},
        )
    run = await scoring.run_finished(f"/v1/value/recompute/{run_id}")
    assert run["phase"] == "done" and run["progress"] == 1.0
    assert run["customers_scored"] >= 250  # everyone, counted from zero again
    model = (await scoring.client.get("/v1/value/model", headers=READER)).json()["current"]
    assert model["version"] == run["model_version"]
