"""SLA targets by tier and escalation through the HTTP API, with the events on real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from support import api_replica, assert_field_problem, auth, eventually

from services.complaints import worker
from services.complaints.main import create_app
from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.outbox import advisory_key

pytestmark = pytest.mark.integration

H = timedelta(hours=1)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_key_tier_customer_gets_halved_targets(complaints: Any) -> None:
    now = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
    complaints.clock.set(now)
    key = await complaints.customer(tier=p.Tier.key)
    ordinary = await complaints.customer(tier=p.Tier.ordinary)

    for_key = await complaints.open(key, severity="high")
    for_ordinary = await complaints.open(ordinary, severity="high")

    assert for_key["tier_at_intake"] == "key"
    assert at(for_key["sla"]["first_response"]["due"]) == now + 2 * H
    assert at(for_key["sla"]["resolution"]["target_due"]) == now + 36 * H
    assert at(for_ordinary["sla"]["first_response"]["due"]) == now + 4 * H
    assert at(for_ordinary["sla"]["resolution"]["target_due"]) == now + 72 * H
    assert for_key["sla"]["first_response"]["state"] == "pending"

    (opened,) = await complaints.events_of(for_key["id"], want=1)
    assert opened["type"] == "crm.complaint.opened.v1"
    assert opened["subject"] == str(key)
    assert opened["data"]["tier_at_intake"] == "key"
    assert at(opened["data"]["first_response_due"]) == now + 2 * H
    assert at(opened["data"]["resolution_due"]) == now + 36 * H
    assert at(opened["time"]) == now
    assert "description" not in opened["data"] and "subject" not in opened["data"]


async def test_tier_from_tier_changes_and_the_newest_wins(complaints: Any) -> None:
    now = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    complaints.clock.set(now)
    customer = await complaints.customer(tier=p.Tier.key, at=now)
    # an older tier change arrives late: it must not replace the newer tier
    await complaints.publish(_tier_changed(customer, tier=p.Tier.small, at=now - 10 * H))
    # a score is read past: had its tier (newer than the next change) been taken, the customer
    # would stay `small`
    await complaints.publish(_scored(customer, tier=p.Tier.small, at=now + 2 * H))
    await complaints.publish(_tier_changed(customer, tier=p.Tier.major, at=now + H))
    await _until_tier(complaints, customer, "major")
    complaints.clock.set(now + 2 * H)
    complaint = await complaints.open(customer, severity="critical")
    assert complaint["tier_at_intake"] == "major"
    assert at(complaint["sla"]["first_response"]["due"]) == now + 3 * H


async def test_unacknowledged_medium_complaint_escalates_to_level_one_once(
    complaints: Any,
) -> None:
    received = datetime(2026, 2, 4, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="medium")

    first = await complaints.evaluate(received + 25 * H)
    # evaluated again, at the same and at a later time: nothing new (checked below)
    await complaints.evaluate(received + 25 * H)
    await complaints.evaluate(received + 26 * H)

    assert first["by_level"].get("1", 0) >= 1
    response = await complaints.client.get(f"/v1/complaints/{complaint['id']}", headers=_writer())
    body = response.json()
    assert body["escalation_level"] == 1
    assert [(e["level"], e["reason"], at(e["at"])) for e in body["escalations"]] == [
        (1, "first_response_breached", received + 24 * H)
    ]
    assert body["escalations"][0]["actor"] is None
    assert [s["action"] for s in body["history"]] == ["open", "escalate"]
    assert body["history"][1]["actor"] == "sla-checker"
    escalated = [
        e
        for e in await complaints.events_of(complaint["id"], want=2)
        if e["type"] == "crm.complaint.escalated.v1"
    ]
    assert len(escalated) == 1
    assert escalated[0]["data"]["level"] == 1
    assert escalated[0]["data"]["reason"] == "first_response_breached"
    assert at(escalated[0]["time"]) == received + 24 * H


async def test_no_escalation_exactly_at_the_due_time(complaints: Any) -> None:
    received = datetime(2026, 2, 5, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="critical")
    await complaints.evaluate(received + H)
    assert await _level(complaints, complaint["id"]) == 0
    await complaints.evaluate(received + H + timedelta(microseconds=1))
    assert await _level(complaints, complaint["id"]) == 1


async def test_an_as_of_ahead_of_the_clock_is_refused_and_escalates_nothing(
    complaints: Any,
) -> None:
    """With the production default (5 minutes), an `as_of` a day ahead of the server's clock
    is a 422 and escalates nothing; the test stack's own allowance then escalates it."""
    received = datetime(2026, 2, 5, 14, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="critical")
    async with api_replica(
        create_app, complaints.settings, complaints.clock, max_future_as_of_seconds=300
    ) as strict:
        response = await strict.post(
            "/v1/complaints/sla/evaluate",
            json={"as_of": (received + 25 * H).isoformat()},
            headers=_writer(),
        )
    reason = assert_field_problem(response, "body.as_of", reason_has="in the future")
    assert "MAX_FUTURE_AS_OF_SECONDS" in reason
    assert await _level(complaints, complaint["id"]) == 0

    await complaints.evaluate(received + 25 * H)
    assert await _level(complaints, complaint["id"]) == 2


async def test_concurrent_evaluations_raise_each_level_once(complaints: Any) -> None:
    received = datetime(2026, 2, 6, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    opened = [await complaints.open(customer, severity="high") for _ in range(5)]
    as_of = received + 200 * H  # first response, resolution and level 3 all due
    runs = await asyncio.gather(*(complaints.evaluate(as_of) for _ in range(4)))
    assert sum(r["escalations"] for r in runs) >= 15
    async with complaints.engine.connect() as conn:
        levels = (
            await conn.execute(
                text(
                    "SELECT complaint_id::text, array_agg(level ORDER BY level) AS levels "
                    "FROM complaint_escalations WHERE complaint_id = ANY(CAST(:ids AS uuid[])) "
                    "GROUP BY complaint_id"
                ),
                {"ids": [c["id"] for c in opened]},
            )
        ).all()
    assert sorted(r.levels for r in levels) == [[1, 2, 3]] * 5
    events = await complaints.events_of(opened[0]["id"], want=4)
    assert [e["data"].get("level") for e in events if e["type"].endswith("escalated.v1")] == [
        1,
        2,
        3,
    ]


async def test_manual_escalation_then_automatic(complaints: Any) -> None:
    received = datetime(2026, 2, 7, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="medium")
    complaints.clock.set(received + H)
    manual = await complaints.step(complaint["id"], "escalate", {"reason": "Journalist asking"})
    assert manual["escalation_level"] == 1
    assert manual["escalations"][0]["actor"] == "agent-7"
    assert manual["escalations"][0]["reason"] == "manual"
    await complaints.evaluate(received + 25 * H)
    assert await _level(complaints, complaint["id"]) == 1  # level 1 already reached by hand
    await complaints.evaluate(received + 121 * H)
    assert await _level(complaints, complaint["id"]) == 2


async def test_a_manual_escalation_before_the_checker_runs_comes_after_the_missed_clocks(
    complaints: Any,
) -> None:
    """First response missed at 1 h; an agent escalates at 2 h, before the checker's next run:
    the miss is level 1 (the checker's, dated at the breach) and the agent's step level 2, as
    had the checker run between."""
    received = datetime(2026, 2, 7, 14, 0, tzinfo=UTC)
    complaints.clock.set(received)
    complaint = await complaints.open(await complaints.customer(), severity="critical")
    cid = complaint["id"]
    complaints.clock.set(received + 2 * H)
    manual = await complaints.step(cid, "escalate", {"reason": "Customer on the phone"})
    assert manual["escalation_level"] == 2
    assert [(e["level"], e["reason"], at(e["at"]), e["actor"]) for e in manual["escalations"]] == [
        (1, "first_response_breached", received + H, None),
        (2, "manual", received + 2 * H, "agent-7"),
    ]
    detail = (await complaints.client.get(f"/v1/complaints/{cid}", headers=_writer())).json()
    assert [(s["action"], s["actor"], s["facts"].get("level")) for s in detail["history"]] == [
        ("open", "agent-7", None),
        ("escalate", "sla-checker", 1),
        ("escalate", "agent-7", 2),
    ]
    events = await complaints.events_of(cid, want=3)
    assert [(e["data"].get("level"), e["data"].get("reason")) for e in events[1:]] == [
        (1, "first_response_breached"),
        (2, "manual"),
    ]
    await complaints.evaluate(received + 2 * H)
    assert await _level(complaints, cid) == 2


async def test_an_evaluation_as_of_a_past_instant_raises_what_was_due_then(
    complaints: Any,
) -> None:
    """Answered 2 h late and resolved 6 h late, evaluated as of a time in between: only the
    missed first response is raised; the missed resolution comes with a later evaluation."""
    received = datetime(2026, 2, 7, 20, 0, tzinfo=UTC)
    complaints.clock.set(received)
    complaint = await complaints.open(await complaints.customer(), severity="critical")
    cid = complaint["id"]
    complaints.clock.set(received + 3 * H)
    await complaints.step(cid, "acknowledge", {"message": "Sorry for the wait"})
    await complaints.step(cid, "investigate")
    complaints.clock.set(received + 30 * H)
    resolution = {"root_cause": "policy", "root_cause_detail": "d", "resolution": "r"}
    await complaints.step(cid, "resolve", resolution)

    async def escalations() -> list[tuple[int, datetime]]:
        detail = (await complaints.client.get(f"/v1/complaints/{cid}", headers=_writer())).json()
        return [(e["level"], at(e["at"])) for e in detail["escalations"]]

    await complaints.evaluate(received + 2 * H)
    assert await escalations() == [(1, received + H)]
    await complaints.evaluate(received + 30 * H)
    assert await escalations() == [(1, received + H), (2, received + 24 * H)]


async def test_await_customer_pauses_the_resolution_clock_exactly(complaints: Any) -> None:
    received = datetime(2026, 2, 8, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="high")
    cid = complaint["id"]
    complaints.clock.set(received + H)
    await complaints.step(cid, "acknowledge", {"message": "We are looking into it."})
    await complaints.step(cid, "investigate")
    complaints.clock.set(received + 10 * H)
    paused = await complaints.step(cid, "await-customer", {"note": "Asked for a photo"})
    assert paused["sla"]["resolution"]["state"] == "paused"
    assert at(paused["sla"]["resolution"]["paused_since"]) == received + 10 * H
    waited = 5 * H + timedelta(microseconds=7)
    complaints.clock.set(received + 10 * H + waited)
    resumed = await complaints.step(cid, "propose", {"proposed_resolution": "Replacement unit"})
    assert resumed["sla"]["resolution"]["state"] == "pending"
    assert at(resumed["sla"]["resolution"]["due"]) == received + 72 * H + waited
    assert at(resumed["sla"]["resolution"]["target_due"]) == received + 72 * H

    await complaints.evaluate(received + 72 * H + waited)
    assert await _level(complaints, cid) == 0
    await complaints.evaluate(received + 72 * H + waited + timedelta(microseconds=1))
    assert await _level(complaints, cid) == 2


async def test_breached_filter_agrees_with_the_clocks(complaints: Any) -> None:
    received = datetime(2026, 2, 9, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    late = await complaints.open(customer, severity="critical")  # never acknowledged
    on_time = await complaints.open(customer, severity="low")
    paused = await complaints.open(customer, severity="critical")
    complaints.clock.set(received + 30 * 60 * timedelta(seconds=1))
    await complaints.step(on_time["id"], "acknowledge", {"message": "Hello"})
    await complaints.step(paused["id"], "acknowledge", {"message": "Hello"})
    await complaints.step(paused["id"], "investigate")
    await complaints.step(paused["id"], "await-customer")
    complaints.clock.set(received + 48 * H)

    async def ids(**query: str) -> dict[str, dict[str, Any]]:
        response = await complaints.client.get(
            "/v1/complaints", params={"customer_id": str(customer), **query}, headers=_writer()
        )
        assert response.status_code == 200, response.text
        return {c["id"]: c for c in response.json()["items"]}

    everything = await ids()
    breached = await ids(breached="true")
    in_time = await ids(breached="false")
    assert set(everything) == {late["id"], on_time["id"], paused["id"]}
    assert set(breached) == {late["id"]}
    assert set(in_time) == {on_time["id"], paused["id"]}
    for complaint in everything.values():
        states = {
            complaint["sla"]["first_response"]["state"],
            complaint["sla"]["resolution"]["state"],
        }
        assert ("breached" in states) == (complaint["id"] in breached)
    assert everything[paused["id"]]["sla"]["resolution"]["state"] == "paused"


async def test_scheduled_checker_escalates_on_its_own(complaints: Any) -> None:
    received = datetime(2026, 2, 10, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="critical")
    complaints.clock.set(received + 2 * H)
    runtime = complaints.client._transport.app.state.runtime  # type: ignore[attr-defined]
    job = asyncio.create_task(runtime.run_periodic("sla-check-test", 0.1, worker.sla_job(runtime)))
    try:

        async def escalated() -> bool:
            return await _level(complaints, complaint["id"]) == 1

        await _eventually(escalated)
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


async def test_a_scheduled_job_holds_its_lock_outside_a_transaction(complaints: Any) -> None:
    """The job's session lock must not keep a transaction open while the job runs (it would
    show as idle in transaction, and a session timeout for those would end it)."""
    runtime = complaints.client._transport.app.state.runtime  # type: ignore[attr-defined]
    key = advisory_key(f"job:{runtime.service}:lock-test")
    seen: list[list[tuple[str, bool]]] = []

    async def job() -> None:
        async with runtime.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT a.state, l.granted FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND (l.classid::int8 << 32 | l.objid::int8) = CAST(:key AS int8)"
                ),
                {"key": key},
            )
            seen.append([(r.state, r.granted) for r in rows])

    task = asyncio.create_task(runtime.run_periodic("lock-test", 0.05, job))
    try:

        async def ran() -> bool:
            return bool(seen)

        await _eventually(ran)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert seen[0] == [("idle", True)]


# --- helpers -------------------------------------------------------------------------------------


async def test_closing_a_late_complaint_before_the_checker_runs_still_escalates_it(
    complaints: Any,
) -> None:
    """Closed complaints are not escalated; a close that comes before the checker's next run
    raises first what the clocks called for (dated at the breach), as the checker would have."""
    received = datetime(2026, 2, 9, 8, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="high")  # 4 h, 72 h
    cid = complaint["id"]
    complaints.clock.set(received + 5 * H)  # first response late
    await complaints.step(cid, "acknowledge", {"message": "Sorry for the wait"})
    await complaints.step(cid, "investigate")
    complaints.clock.set(received + 80 * H)  # resolution late
    resolution = {"root_cause": "policy", "root_cause_detail": "d", "resolution": "r"}
    await complaints.step(cid, "resolve", resolution)
    closed = await complaints.step(cid, "close", {"satisfaction": 2, "feedback": "Too slow"})

    assert closed["status"] == "closed"
    assert closed["escalation_level"] == 2
    assert [(e["level"], e["reason"], at(e["at"]), e["actor"]) for e in closed["escalations"]] == [
        (1, "first_response_breached", received + 4 * H, None),
        (2, "resolution_breached", received + 72 * H, None),
    ]
    detail = await complaints.client.get(f"/v1/complaints/{cid}", headers=_writer())
    assert [(s["action"], s["actor"]) for s in detail.json()["history"]][-3:] == [
        ("escalate", "sla-checker"),
        ("escalate", "sla-checker"),
        ("close", "agent-7"),
    ]
    await complaints.evaluate(received + 500 * H)  # nothing more once closed
    assert await _level(complaints, cid) == 2
    events = await complaints.events_of(cid, want=7)
    assert [(e["type"].split(".")[2], e["data"].get("level")) for e in events] == [
        ("opened", None),
        ("acknowledged", None),
        ("resolved", None),
        ("escalated", 1),
        ("escalated", 2),
        ("closed", None),
    ]


def _writer() -> dict[str, str]:
    return auth("complaints:read", "complaints:write", "pii:read", subject="agent-7")


def _scored(customer: Any, *, tier: p.Tier, at: datetime) -> Any:
    return new_event(
        type=ev.VALUE_SCORED,
        source="/crm/scoring",
        subject=customer,
        time=at,
        data=p.ValueScored(
            customer_id=customer,
            score=80.0,
            dimensions=p.ValueDimensions(current=80, future=80, credit=80, loyalty=80, growth=80),
            tier=tier,
            loyalty=p.LoyaltyScore(
                index=70, behavioural=70, attitudinal=70, dick_basu="true", jones_sasser="apostle"
            ),
        ),
    )


def _tier_changed(customer: Any, *, tier: p.Tier, at: datetime) -> Any:
    return new_event(
        type=ev.TIER_CHANGED,
        source="/crm/scoring",
        subject=customer,
        time=at,
        data=p.TierChanged(customer_id=customer, from_tier=p.Tier.small, to_tier=tier, score=80.0),
    )


async def _until_tier(complaints: Any, customer: Any, tier: str) -> None:
    async def probe() -> bool:
        async with complaints.engine.connect() as conn:
            found = (
                await conn.execute(
                    text("SELECT tier FROM known_customers WHERE customer_id = :c"), {"c": customer}
                )
            ).scalar()
        return bool(found == tier)

    await _eventually(probe)


async def _level(complaints: Any, complaint_id: str) -> int:
    response = await complaints.client.get(f"/v1/complaints/{complaint_id}", headers=_writer())
    return int(response.json()["escalation_level"])


async def _eventually(probe: Any, timeout: float = 20.0) -> None:
    await eventually(probe, timeout=timeout)


async def test_pages_of_a_filtered_list_have_no_gaps_or_repeats(complaints: Any) -> None:
    """Newest first, ties on `received_at` broken by id: walking the cursor with a small page
    gives the whole filtered list once, in the order of one big page."""
    now = datetime(2026, 2, 11, 8, 0, tzinfo=UTC)
    complaints.clock.set(now)
    customer = await complaints.customer()
    opened = []
    for n in range(9):
        # three complaints at each of three instants (two back-dated), alternating severities
        received = now - (n % 3) * H
        opened.append(
            await complaints.open(
                customer,
                severity="critical" if n % 2 else "low",
                received_at=received.isoformat(),
            )
        )
    complaints.clock.set(now + 2 * H)  # the critical ones are late for their first response

    async def walk(limit: int, **query: str) -> list[str]:
        found: list[str] = []
        cursor: str | None = None
        while True:
            params = {"customer_id": str(customer), "limit": str(limit), **query}
            if cursor:
                params["cursor"] = cursor
            response = await complaints.client.get(
                "/v1/complaints", params=params, headers=_writer()
            )
            assert response.status_code == 200, response.text
            page = response.json()
            found += [c["id"] for c in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    for query in ({}, {"breached": "true"}, {"breached": "false"}, {"status": "received"}):
        whole = await walk(200, **query)
        for limit in (1, 2, 4):
            assert await walk(limit, **query) == whole, (query, limit)
    everything = await walk(200)
    assert sorted(everything) == sorted(c["id"] for c in opened)
    by_id = {c["id"]: c for c in opened}
    keys = [(at(by_id[i]["received_at"]), i) for i in everything]
    assert keys == sorted(keys, reverse=True)
    late = {c["id"] for c in opened if c["severity"] == "critical"}
    assert set(await walk(2, breached="true")) == late
    assert set(await walk(2, breached="false")) == set(everything) - late
