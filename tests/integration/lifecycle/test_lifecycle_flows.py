"""The lifecycle service on real Kafka and PostgreSQL: events in, stages and events out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from datetime import datetime, timedelta

import pytest
from integration.lifecycle.lifecycle_helpers import ADMIN, READER, Lifecycle, day, moves
from sqlalchemy import text
from support import api_replica, assert_field_problem, auth, eventually

from services.lifecycle import domain, service
from services.lifecycle.domain import LifecyclePolicy
from services.lifecycle.main import create_app

pytestmark = pytest.mark.integration


async def test_a_purchase_moves_a_prospect_to_growth_within_a_second(lifecycle: Lifecycle) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.wait_for(customer, "prospect")
    started = time.monotonic()
    purchase = await lifecycle.purchase(customer, day(1))
    body = await lifecycle.wait_for(customer, "growth", timeout=5)
    elapsed = time.monotonic() - started
    print(f"purchase -> growth visible over HTTP after {elapsed:.3f}s")
    assert elapsed < 1.0, f"growth after {elapsed:.3f}s"
    assert moves(body) == [
        (None, "prospect", "registered"),
        ("prospect", "growth", "first_purchase"),
    ]
    assert body["history"][1]["causing_event_id"] == str(purchase.id)
    assert datetime.fromisoformat(body["history"][1]["at"]) == day(1)

    published = await lifecycle.stage_changed_events(customer, want=2)
    assert [(e["data"].get("from_stage"), e["data"]["to_stage"]) for e in published] == [
        (None, "prospect"),
        ("prospect", "growth"),
    ]
    assert published[1]["data"]["causing_event_id"] == str(purchase.id)
    assert datetime.fromisoformat(published[1]["time"]) == day(1)
    assert {e["source"] for e in published} == {"/crm/lifecycle"}


async def test_a_high_complaint_declines_a_mature_customer_and_a_satisfied_closure_recovers(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    for n in (1, 46, 91):
        await lifecycle.purchase(customer, day(n))
    await lifecycle.wait_for(customer, "mature")

    complaint = uuid.uuid4()
    await lifecycle.complaint_opened(customer, complaint, day(100), severity="high")
    declined = await lifecycle.wait_for(customer, "decline")
    assert declined["reason"] == "complaint"
    assert declined["decline_causes"] == [str(complaint)]
    assert declined["stage_before_decline"] == "mature"

    closure = await lifecycle.complaint_closed(customer, complaint, day(103), satisfaction=5)
    recovered = await lifecycle.wait_for(customer, "mature", changes=5)
    assert moves(recovered)[-2:] == [
        ("mature", "decline", "complaint"),
        ("decline", "mature", "service_recovery"),
    ]
    assert recovered["history"][-1]["causing_event_id"] == str(closure.id)
    assert datetime.fromisoformat(recovered["since"]) == day(103)


async def test_a_low_complaint_or_an_unsatisfied_closure_moves_nothing_back(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(1))
    low, high = uuid.uuid4(), uuid.uuid4()
    await lifecycle.complaint_opened(customer, low, day(2), severity="low")
    await lifecycle.complaint_opened(customer, high, day(3), severity="critical")
    await lifecycle.wait_for(customer, "decline")
    last = await lifecycle.complaint_closed(
        customer, high, day(4), satisfaction=2, severity="critical"
    )
    await lifecycle.processed(last)
    body = await lifecycle.lifecycle(customer)
    assert body is not None
    assert (body["stage"], body["reason"]) == ("decline", "complaint")
    assert body["open_complaints"] == [str(low)]


async def test_a_sweep_as_of_200_days_declines_and_later_churns_a_growth_customer(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    body = await lifecycle.wait_for(customer, "growth")
    # one purchase day: g = 60 -> lapsing after 120 idle days, inactive after 240
    assert datetime.fromisoformat(body["decline_due_at"]) == day(130)
    assert datetime.fromisoformat(body["churn_due_at"]) == day(250)

    run = await lifecycle.evaluate(day(210))
    assert {"from_stage": "growth", "to_stage": "decline", "reason": "lapsing"}.items() <= next(
        m for m in run["moved"] if m["from_stage"] == "growth"
    ).items()
    declined = await lifecycle.lifecycle(customer)
    assert declined is not None
    assert (declined["stage"], declined["reason"]) == ("decline", "lapsing")
    assert datetime.fromisoformat(declined["since"]) == day(130)
    assert declined["history"][-1]["evaluation_run_id"] == run["run_id"]
    await lifecycle.evaluate(day(210))  # the same run again moves this customer no further
    again = await lifecycle.lifecycle(customer)
    assert again is not None and again["history"] == declined["history"]

    await lifecycle.evaluate(day(260))
    churned = await lifecycle.lifecycle(customer)
    assert churned is not None
    assert moves(churned)[-2:] == [
        ("growth", "decline", "lapsing"),
        ("decline", "churned", "inactive"),
    ]
    assert datetime.fromisoformat(churned["since"]) == day(250)

    published = await lifecycle.stage_changed_events(customer, want=4)
    assert [e["data"]["to_stage"] for e in published] == [
        "prospect",
        "growth",
        "decline",
        "churned",
    ]
    assert published[3]["data"]["evaluation_run_id"] is not None
    assert datetime.fromisoformat(published[3]["time"]) == day(250)


async def test_a_sweep_goes_around_a_customer_a_batch_holds_and_moves_them_last(
    lifecycle: Lifecycle,
) -> None:
    held, free = await lifecycle.register(day(0)), await lifecycle.register(day(0))
    await lifecycle.purchase(held, day(10))
    await lifecycle.purchase(free, day(10))
    await lifecycle.wait_for(held, "growth")
    await lifecycle.wait_for(free, "growth")  # both lapse at day 130

    async def stage(customer: uuid.UUID) -> str:
        body = await lifecycle.lifecycle(customer)
        assert body is not None
        return str(body["stage"])

    async with lifecycle.engine.connect() as batch:  # what a consumer batch holds
        await batch.execute(
            text("SELECT 1 FROM customer_lifecycles WHERE customer_id = :c FOR UPDATE"),
            {"c": held},
        )
        sweep = asyncio.create_task(lifecycle.evaluate(day(140)))
        # The free customer's chunk commits while the batch still holds the other one.
        await eventually(
            lambda: _is(stage(free), "decline"), timeout=10, what="free customer swept"
        )
        assert await stage(held) == "growth"
        await asyncio.sleep(0.2)
        assert not sweep.done()  # the last pass waits for the held customer
        await batch.rollback()
    run = await asyncio.wait_for(sweep, timeout=10)
    assert await stage(held) == "decline"
    assert run["total_moved"] >= 2
    for customer in (held, free):
        body = await lifecycle.lifecycle(customer)
        assert body is not None
        assert body["history"][-1]["evaluation_run_id"] == run["run_id"]


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_one_sweep_takes_an_idle_customer_through_decline_to_churned(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    await lifecycle.wait_for(customer, "growth")
    await lifecycle.evaluate(day(400))
    body = await lifecycle.lifecycle(customer)
    assert body is not None
    assert [(t["reason"], datetime.fromisoformat(t["at"])) for t in body["history"][-2:]] == [
        ("lapsing", day(130)),
        ("inactive", day(250)),
    ]


async def test_a_purchase_after_churn_is_a_winback(lifecycle: Lifecycle) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(1))
    await lifecycle.wait_for(customer, "growth")
    await lifecycle.evaluate(day(300))
    await lifecycle.wait_for(customer, "churned")
    purchase = await lifecycle.purchase(customer, day(320))
    body = await lifecycle.wait_for(customer, "growth", changes=5)
    assert moves(body)[-1] == ("churned", "growth", "winback")
    assert body["history"][-1]["causing_event_id"] == str(purchase.id)


async def test_a_late_purchase_reactivates_at_the_start_of_the_decline(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(80))
    await lifecycle.wait_for(customer, "growth")
    await lifecycle.evaluate(day(201))  # lapsed at day 200
    await lifecycle.wait_for(customer, "decline")
    await lifecycle.purchase(customer, day(150))  # late: it happened before the lapse
    body = await lifecycle.wait_for(customer, "growth", changes=4)
    assert moves(body)[-1] == ("decline", "growth", "reactivated")
    assert datetime.fromisoformat(body["history"][-1]["at"]) == day(200)


async def test_events_before_the_registration_register_implicitly(lifecycle: Lifecycle) -> None:
    customer = uuid.uuid4()
    await lifecycle.purchase(customer, day(5))
    body = await lifecycle.wait_for(customer, "growth")
    assert moves(body) == [
        (None, "prospect", "registered"),
        ("prospect", "growth", "first_purchase"),
    ]
    registration = await lifecycle.registration(customer, day(1))
    await lifecycle.processed(registration)
    again = await lifecycle.lifecycle(customer)
    assert again is not None and len(again["history"]) == 2


async def test_erasure_deletes_the_lifecycle_and_keeps_late_events_out(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(1))
    await lifecycle.wait_for(customer, "growth")
    await lifecycle.erased(customer, day(2))
    await eventually(lambda: _gone(lifecycle, customer), timeout=20, what="lifecycle erased")
    late = await lifecycle.purchase(customer, day(3))
    await lifecycle.processed(late)
    assert await lifecycle.lifecycle(customer) is None
    async with lifecycle.engine.connect() as conn:
        history = (
            await conn.execute(
                text("SELECT count(*) FROM stage_transitions WHERE customer_id = :c"),
                {"c": customer},
            )
        ).scalar_one()
    assert history == 0


async def _gone(lifecycle: Lifecycle, customer: uuid.UUID) -> bool:
    return await lifecycle.lifecycle(customer) is None


async def test_distribution_now_and_as_of_a_past_date(lifecycle: Lifecycle) -> None:
    lifecycle.clock.set(day(20))
    before = (await lifecycle.client.get("/v1/lifecycle/distribution", headers=READER)).json()
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    await lifecycle.wait_for(customer, "growth")
    now = (await lifecycle.client.get("/v1/lifecycle/distribution", headers=READER)).json()
    growth_now = {s["stage"]: s["customers"] for s in now["stages"]}
    growth_before = {s["stage"]: s["customers"] for s in before["stages"]}
    assert growth_now["growth"] == growth_before["growth"] + 1
    assert now["total"] == before["total"] + 1
    assert now["from_history"] is False

    # as of day 5 this customer was a prospect: the history says so
    past = (
        await lifecycle.client.get(
            "/v1/lifecycle/distribution",
            params={"as_of": day(5).isoformat()},
            headers=READER,
        )
    ).json()
    later = (
        await lifecycle.client.get(
            "/v1/lifecycle/distribution",
            params={"as_of": day(11).isoformat()},
            headers=READER,
        )
    ).json()
    assert past["from_history"] is True
    prospects = {s["stage"]: s["customers"] for s in past["stages"]}["prospect"]
    prospects_later = {s["stage"]: s["customers"] for s in later["stages"]}["prospect"]
    assert prospects >= 1
    assert prospects_later <= prospects - 1 + (later["total"] - past["total"])
    assert sum(s["customers"] for s in now["stages"]) == now["total"]

    # Days ahead, the history says nothing yet (the time rules have not run there): a replica
    # with the production allowance (5 minutes) says so rather than answer the stages of now.
    async with api_replica(
        create_app, lifecycle.settings, lifecycle.clock, max_future_as_of_seconds=300
    ) as strict:
        ahead = await strict.get(
            "/v1/lifecycle/distribution", params={"as_of": day(30).isoformat()}, headers=READER
        )
        reason = assert_field_problem(ahead, "query.as_of", reason_has="in the future")
        assert "Leave as_of out" in reason
        soon = await strict.get(
            "/v1/lifecycle/distribution",
            params={"as_of": (day(20) + timedelta(minutes=4)).isoformat()},
            headers=READER,
        )
        assert soon.status_code == 200, soon.text
        assert soon.json()["from_history"] is True
        # From the history, as the day-11 count was: everyone counted then is counted now.
        assert soon.json()["total"] >= later["total"]
    lifecycle.clock.set(day(0))


async def test_time_in_stage_is_reported(lifecycle: Lifecycle) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    await lifecycle.wait_for(customer, "growth")
    lifecycle.clock.set(day(40))
    body = await lifecycle.lifecycle(customer)
    assert body is not None
    assert body["days_in_stage"] == pytest.approx(30.0)
    lifecycle.clock.set(day(0))


async def test_policy_is_validated_versioned_and_replans_the_due_times(
    lifecycle: Lifecycle,
) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    body = await lifecycle.wait_for(customer, "growth")
    assert datetime.fromisoformat(body["decline_due_at"]) == day(130)

    current = await lifecycle.client.get("/v1/lifecycle/policy", headers=READER)
    assert current.status_code == 200
    etag = current.headers["ETag"]
    policy = current.json()["policy"]

    bad = await lifecycle.client.put(
        "/v1/lifecycle/policy", json={**policy, "churn_min_days": 30}, headers=ADMIN
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "must exceed lapse_min_days" in bad.text
    # what the API fuzzer sent (it had been a 500: the re-planned due times overflowed)
    huge = await lifecycle.client.put(
        "/v1/lifecycle/policy",
        json={**policy, "churn_min_days": 9.247052665259949e307, "lapse_min_days": 1.6e240},
        headers=ADMIN,
    )
    assert huge.status_code == 422, huge.text
    assert huge.headers["content-type"].startswith("application/problem+json")
    assert "less than or equal to 36500" in huge.text and "churn_min_days" in huge.text
    unchanged = await lifecycle.client.get("/v1/lifecycle/policy", headers=READER)
    assert unchanged.headers["ETag"] == etag

    changed = await lifecycle.client.put(
        "/v1/lifecycle/policy",
        json={**policy, "lapse_gap_multiplier": 1.0, "lapse_min_days": 30, "default_gap_days": 45},
        headers={**ADMIN, "If-Match": etag},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["policy"]["lapse_min_days"] == 30
    assert changed.json()["changed_by"] == "ops-1"
    try:
        replanned = await lifecycle.lifecycle(customer)
        assert replanned is not None
        # One purchase day, so g is the new default 45: lapsing after max(30, 1 * 45) days
        assert replanned["median_gap_days"] == 45
        assert datetime.fromisoformat(replanned["decline_due_at"]) == day(55)

        stale = await lifecycle.client.put(
            "/v1/lifecycle/policy", json=policy, headers={**ADMIN, "If-Match": etag}
        )
        assert stale.status_code == 412
        versions = (
            await lifecycle.client.get("/v1/lifecycle/policy/versions", headers=READER)
        ).json()
        assert versions["items"][0]["version"] == changed.json()["version"]
    finally:
        restored = await lifecycle.client.put("/v1/lifecycle/policy", json=policy, headers=ADMIN)
        assert restored.status_code == 200
    again = await lifecycle.lifecycle(customer)
    assert again is not None and datetime.fromisoformat(again["decline_due_at"]) == day(130)


async def test_g_shown_is_the_new_default_for_customers_without_two_purchase_days(
    lifecycle: Lifecycle,
) -> None:
    """Not only growth, mature and declining customers: a prospect's g (and a churned
    customer's with one purchase day) is the policy's `default_gap_days` in force."""
    prospect = await lifecycle.register(day(0))
    churned = await lifecycle.register(day(0))
    await lifecycle.purchase(churned, day(1))
    await lifecycle.wait_for(churned, "growth")
    await lifecycle.evaluate(day(400))
    await lifecycle.wait_for(churned, "churned")
    await lifecycle.wait_for(prospect, "prospect")
    policy = (await lifecycle.client.get("/v1/lifecycle/policy", headers=READER)).json()["policy"]
    changed = await lifecycle.client.put(
        "/v1/lifecycle/policy", json={**policy, "default_gap_days": 45}, headers=ADMIN
    )
    assert changed.status_code == 200, changed.text
    try:
        for customer in (prospect, churned):
            body = await lifecycle.lifecycle(customer)
            assert body is not None and body["median_gap_days"] == 45, body
    finally:
        restored = await lifecycle.client.put("/v1/lifecycle/policy", json=policy, headers=ADMIN)
        assert restored.status_code == 200


async def test_auth_scopes(lifecycle: Lifecycle) -> None:
    customer = uuid.uuid4()
    no_token = await lifecycle.client.get(f"/v1/customers/{customer}/lifecycle")
    assert no_token.status_code == 401
    wrong_scope = await lifecycle.client.get(
        f"/v1/customers/{customer}/lifecycle", headers=auth("customers:read")
    )
    assert wrong_scope.status_code == 403
    reader_evaluates = await lifecycle.client.post(
        "/v1/lifecycle/evaluate", json={}, headers=READER
    )
    assert reader_evaluates.status_code == 403
    reader_changes_policy = await lifecycle.client.put(
        "/v1/lifecycle/policy", json={}, headers=READER
    )
    assert reader_changes_policy.status_code == 403
    unknown = await lifecycle.client.get(f"/v1/customers/{customer}/lifecycle", headers=READER)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")


async def test_evaluate_without_as_of_uses_the_clock(lifecycle: Lifecycle) -> None:
    customer = await lifecycle.register(day(0))
    await lifecycle.purchase(customer, day(10))
    await lifecycle.wait_for(customer, "growth")
    lifecycle.clock.set(day(140))
    try:
        response = await lifecycle.client.post("/v1/lifecycle/evaluate", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert datetime.fromisoformat(response.json()["as_of"]) == day(140)
    finally:
        lifecycle.clock.set(day(0))
    body = await lifecycle.lifecycle(customer)
    assert body is not None and body["stage"] == "decline"


async def test_the_sql_sweep_moves_exactly_what_the_pure_rules_move(lifecycle: Lifecycle) -> None:
    patterns = [(5,), (5, 9), (5, 40, 95), (5, 6, 7, 200), (5, 100, 101, 250)]
    customers = []
    last = None
    for days in patterns:
        customer = await lifecycle.register(day(0))
        for n in days:
            last = await lifecycle.purchase(customer, day(n))
        customers.append(customer)
    assert last is not None
    await lifecycle.processed(last)
    async with lifecycle.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT * FROM customer_lifecycles WHERE customer_id = ANY(:ids)"),
                {"ids": customers},
            )
        ).all()
        orders: dict[uuid.UUID, dict[str, domain.Order]] = defaultdict(dict)
        for r in await conn.execute(
            text("SELECT * FROM lifecycle_orders WHERE customer_id = ANY(:ids)"),
            {"ids": customers},
        ):
            orders[r.customer_id][r.order_id] = domain.Order(r.placed_at, r.amount, r.refunded)
    as_of = day(330)
    expected = {
        row.customer_id: [
            (c.from_stage.value if c.from_stage else None, c.to_stage.value, c.reason.value, c.at)
            for c in domain.evaluate(
                service._to_state(row._mapping, orders[row.customer_id]),
                LifecyclePolicy(),
                as_of=as_of,
            ).changes
        ]
        for row in rows
    }
    assert sum(len(changes) for changes in expected.values()) >= 5  # the rules have work to do

    await lifecycle.evaluate(as_of)
    for customer in customers:
        body = await lifecycle.lifecycle(customer)
        assert body is not None
        swept = [
            (t["from_stage"], t["to_stage"], t["reason"], datetime.fromisoformat(t["at"]))
            for t in body["history"]
            if t["evaluation_run_id"] is not None
        ]
        assert swept == expected[customer], customer
