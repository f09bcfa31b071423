"""The workflow over HTTP: steps and their fields, 409 with the allowed steps, events on Kafka,
auth and masking, idempotent intake, and erasure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from support import auth, eventually

from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
WRITER = auth("complaints:read", "complaints:write", "pii:read", subject="agent-7")
READER = auth("complaints:read", subject="viewer")
MASK = "***"


async def resolved(complaints: Any, customer: uuid.UUID, start: datetime) -> dict[str, Any]:
    complaints.clock.set(start)
    complaint = await complaints.open(customer, severity="high")
    cid = complaint["id"]
    complaints.clock.set(start + H)
    await complaints.step(cid, "acknowledge", {"message": "Sorry, we are on it."})
    complaints.clock.set(start + 2 * H)
    await complaints.step(cid, "investigate", {"note": "Checked courier scans"})
    complaints.clock.set(start + 3 * H)
    await complaints.step(cid, "propose", {"proposed_resolution": "Resend with express"})
    complaints.clock.set(start + 4 * H)
    return await complaints.step(
        cid,
        "resolve",
        {
            "root_cause": "delivery_delay",
            "root_cause_detail": "Hub backlog",
            "resolution": "Resent, arrived next day",
        },
    )


async def test_closing_with_satisfaction_publishes_the_lifecycle_of_events(complaints: Any) -> None:
    start = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    customer = await complaints.customer()
    complaint = await resolved(complaints, customer, start)
    cid = complaint["id"]
    assert complaint["status"] == "resolved"
    assert complaint["allowed_actions"] == ["close", "reopen", "escalate"]
    complaints.clock.set(start + 5 * H)
    closed = await complaints.step(cid, "close", {"satisfaction": 5, "feedback": "Great service"})
    assert (closed["status"], closed["satisfaction"]) == ("closed", 5)
    assert closed["sla"]["first_response"]["state"] == "met"
    assert closed["sla"]["resolution"]["state"] == "met"

    events = await complaints.events_of(cid, want=4)
    assert [e["type"] for e in events] == [
        "crm.complaint.opened.v1",
        "crm.complaint.acknowledged.v1",
        "crm.complaint.resolved.v1",
        "crm.complaint.closed.v1",
    ]
    acknowledged, resolved_event, closed_event = events[1:]
    assert acknowledged["data"]["first_response_met"] is True
    assert resolved_event["data"] == {
        "complaint_id": cid,
        "customer_id": str(customer),
        "severity": "high",
        "root_cause": "delivery_delay",
        "resolution_met": True,
    }
    assert closed_event["data"]["satisfaction"] == 5
    assert closed_event["subject"] == str(customer)
    assert datetime.fromisoformat(closed_event["time"]) == start + 5 * H
    assert {e["source"] for e in events} == {"/crm/complaints"}

    detail = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert [
        (s["action"], s["from_status"], s["to_status"], s["actor"]) for s in detail["history"]
    ] == [
        ("open", None, "received", "agent-7"),
        ("acknowledge", "received", "acknowledged", "agent-7"),
        ("investigate", "acknowledged", "investigating", "agent-7"),
        ("propose", "investigating", "resolution_proposed", "agent-7"),
        ("resolve", "resolution_proposed", "resolved", "agent-7"),
        ("close", "resolved", "closed", "agent-7"),
    ]
    assert detail["history"][2]["note"] == "Checked courier scans"
    assert detail["history"][4]["facts"] == {"root_cause": "delivery_delay"}
    assert detail["history"][5]["facts"] == {"satisfaction": 5}
    assert detail["history"][5]["texts"] == {"feedback": "Great service"}


async def test_illegal_move_is_409_with_the_allowed_steps(complaints: Any) -> None:
    complaints.clock.set(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    complaint = await complaints.open(await complaints.customer())
    response = await complaints.client.post(
        f"/v1/complaints/{complaint['id']}/close",
        json={"satisfaction": 4, "feedback": "ok"},
        headers=WRITER,
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["allowed"] == ["acknowledge", "escalate"]
    assert (problem["status"], problem["current_status"]) == (409, "received")
    assert "cannot close" in problem["detail"]


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("acknowledge", {}, "body.message"),
        ("acknowledge", {"message": "   "}, "body.message"),
        ("escalate", {}, "body.reason"),
    ],
)
async def test_step_fields_are_required(
    complaints: Any, action: str, body: dict[str, Any], field: str
) -> None:
    complaints.clock.set(datetime(2026, 3, 4, 9, 0, tzinfo=UTC))
    complaint = await complaints.open(await complaints.customer())
    response = await complaints.client.post(
        f"/v1/complaints/{complaint['id']}/{action}", json=body, headers=WRITER
    )
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_root_cause_must_come_from_the_managed_list(complaints: Any) -> None:
    complaints.clock.set(datetime(2026, 3, 5, 9, 0, tzinfo=UTC))
    complaint = await complaints.open(await complaints.customer())
    cid = complaint["id"]
    await complaints.step(cid, "acknowledge", {"message": "Hi"})
    await complaints.step(cid, "investigate")
    response = await complaints.client.post(
        f"/v1/complaints/{cid}/resolve",
        json={"root_cause": "gremlins", "root_cause_detail": "x", "resolution": "y"},
        headers=WRITER,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.root_cause"
    bad_csat = await complaints.client.post(
        f"/v1/complaints/{cid}/close", json={"satisfaction": 6, "feedback": "x"}, headers=WRITER
    )
    assert bad_csat.status_code == 422
    unchanged = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert unchanged["status"] == "investigating"


async def test_a_satisfaction_of_true_is_a_422_and_closes_nothing(complaints: Any) -> None:
    """JSON `true` was read as a CSAT of 1: the complaint closed with a rating nobody gave."""
    complaint = await resolved(
        complaints, await complaints.customer(), datetime(2026, 3, 5, 14, 0, tzinfo=UTC)
    )
    cid = complaint["id"]
    response = await complaints.client.post(
        f"/v1/complaints/{cid}/close", json={"satisfaction": True, "feedback": "x"}, headers=WRITER
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "body.satisfaction", "reason": "Input should be a valid integer"}
    ]
    unchanged = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert (unchanged["status"], unchanged["satisfaction"], unchanged["version"]) == (
        "resolved",
        None,
        complaint["version"],
    )


async def test_intake_validation(complaints: Any) -> None:
    now = datetime(2026, 3, 6, 9, 0, tzinfo=UTC)
    complaints.clock.set(now)
    base = {
        "channel": "phone",
        "category": "billing",
        "severity": "low",
        "subject": "Charged twice",
        "description": "Two charges on my card",
    }
    unknown = await complaints.client.post(
        "/v1/complaints", json={**base, "customer_id": str(uuid.uuid4())}, headers=WRITER
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [{"field": "body.customer_id", "reason": "unknown customer"}]
    customer = await complaints.customer()
    future = await complaints.client.post(
        "/v1/complaints",
        json={**base, "customer_id": str(customer), "received_at": (now + H).isoformat()},
        headers=WRITER,
    )
    assert future.status_code == 422
    assert future.json()["errors"] == [
        {
            "field": "body.received_at",
            "reason": f"{(now + H).isoformat()} is in the future; at most 0:05:00 after the "
            f"server's clock ({now.isoformat()}) is accepted",
        }
    ]
    bad_channel = await complaints.client.post(
        "/v1/complaints",
        json={**base, "customer_id": str(customer), "channel": "fax"},
        headers=WRITER,
    )
    assert bad_channel.status_code == 422
    assert bad_channel.json()["errors"][0]["field"] == "body.channel"
    backdated = await complaints.open(
        customer, severity="low", received_at=(now - 30 * H).isoformat()
    )
    assert datetime.fromisoformat(backdated["sla"]["first_response"]["due"]) == now - 6 * H
    assert backdated["sla"]["first_response"]["state"] == "breached"
    # A sender's clock a little ahead (COMPLAINTS_MAX_CLOCK_SKEW_SECONDS, 300 by default) is
    # taken as now: the SLA clocks start at the service's time, never in the future.
    ahead = await complaints.open(
        customer, severity="low", received_at=(now + timedelta(minutes=4)).isoformat()
    )
    assert datetime.fromisoformat(ahead["received_at"]) == now
    assert datetime.fromisoformat(ahead["sla"]["first_response"]["due"]) == now + 24 * H


async def test_auth_and_masking(complaints: Any) -> None:
    complaints.clock.set(datetime(2026, 3, 7, 9, 0, tzinfo=UTC))
    complaint = await complaints.open(await complaints.customer())
    cid = complaint["id"]
    await complaints.step(cid, "acknowledge", {"message": "Call me at +44 20 7946 0018"})
    no_token = await complaints.client.get(f"/v1/complaints/{cid}")
    assert no_token.status_code == 401
    no_scope = await complaints.client.post(
        f"/v1/complaints/{cid}/investigate", json={}, headers=READER
    )
    assert no_scope.status_code == 403
    masked = (await complaints.client.get(f"/v1/complaints/{cid}", headers=READER)).json()
    assert masked["pii_masked"] is True
    assert (masked["subject"], masked["description"]) == (MASK, MASK)
    assert masked["history"][1]["texts"] == {"message": MASK}
    clear = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert clear["subject"] == "Parcel never arrived"
    assert clear["history"][1]["texts"] == {"message": "Call me at +44 20 7946 0018"}


async def test_intake_is_idempotent_with_a_key(complaints: Any) -> None:
    complaints.clock.set(datetime(2026, 3, 8, 9, 0, tzinfo=UTC))
    customer = await complaints.customer()
    body = {
        "customer_id": str(customer),
        "channel": "web",
        "category": "product",
        "severity": "high",
        "subject": "Broken lid",
        "description": "Lid cracked on arrival",
    }
    headers = {**WRITER, "Idempotency-Key": f"intake-{uuid.uuid4()}"}
    first = await complaints.client.post("/v1/complaints", json=body, headers=headers)
    retry = await complaints.client.post("/v1/complaints", json=body, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert first.json()["id"] == retry.json()["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    other = await complaints.client.post(
        "/v1/complaints", json={**body, "severity": "low"}, headers=headers
    )
    assert other.status_code == 422
    listed = await complaints.client.get(
        "/v1/complaints", params={"customer_id": str(customer)}, headers=WRITER
    )
    assert len(listed.json()["items"]) == 1
    opened = await complaints.events_of(first.json()["id"], want=1)
    assert len(opened) == 1


async def test_if_match_guards_a_step(complaints: Any) -> None:
    complaints.clock.set(datetime(2026, 3, 9, 9, 0, tzinfo=UTC))
    complaint = await complaints.open(await complaints.customer())
    cid = complaint["id"]
    stale = await complaints.client.post(
        f"/v1/complaints/{cid}/acknowledge",
        json={"message": "Hi"},
        headers={**WRITER, "If-Match": '"99"'},
    )
    assert stale.status_code == 412
    fresh = await complaints.client.post(
        f"/v1/complaints/{cid}/acknowledge",
        json={"message": "Hi"},
        headers={**WRITER, "If-Match": f'"{complaint["version"]}"'},
    )
    assert fresh.status_code == 200
    assert fresh.headers["ETag"] == f'"{complaint["version"] + 1}"'
    # RFC 9110: a list matches when any of its tags does, * whatever is current; a tag this
    # API never issued matches nothing (412, with what to send), and changes nothing.
    for if_match, expected in [
        ('"abc"', 412),
        ('"\u00b2"'.encode("latin-1"), 412),
        (f'"99", {fresh.headers["ETag"]}', 200),
        ("*", 200),
    ]:
        step = await complaints.client.post(
            f"/v1/complaints/{cid}/escalate",
            json={"reason": "Asked for a manager"},
            headers={**WRITER, "If-Match": if_match},
        )
        assert step.status_code == expected, (if_match, step.text)
        if expected == 412:
            assert "send the ETag header of your last read" in step.json()["detail"]
    detail = await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)
    assert detail.json()["escalation_level"] == 2


async def test_reopen_goes_back_to_investigating(complaints: Any) -> None:
    start = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    customer = await complaints.customer()
    complaint = await resolved(complaints, customer, start)
    cid = complaint["id"]
    complaints.clock.set(start + 6 * H)
    await complaints.step(cid, "close", {"satisfaction": 2, "feedback": "Meh"})
    complaints.clock.set(start + 10 * H)
    reopened = await complaints.step(cid, "reopen", {"note": "Item broke again"})
    assert (reopened["status"], reopened["reopen_count"], reopened["satisfaction"]) == (
        "reopened",
        1,
        None,
    )
    assert reopened["allowed_actions"] == ["investigate", "escalate"]
    # the 6 hours while resolved or closed do not count against the resolution clock
    assert datetime.fromisoformat(reopened["sla"]["resolution"]["due"]) == start + 72 * H + 6 * H
    await complaints.step(cid, "investigate")
    types = [e["type"] for e in await complaints.events_of(cid, want=5)]
    assert types[-2:] == ["crm.complaint.closed.v1", "crm.complaint.reopened.v1"]


async def test_erasure_keeps_an_anonymous_record(complaints: Any) -> None:
    start = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)
    customer = await complaints.customer()
    complaint = await resolved(complaints, customer, start)
    open_one = await complaints.open(customer, order_id="SO-991")
    await complaints.publish(
        new_event(
            type=ev.CUSTOMER_ERASED,
            source="/crm/profile",
            subject=customer,
            time=start + 5 * H,
            data=p.CustomerErased(customer_id=customer),
        )
    )

    async def anonymised() -> bool:
        response = await complaints.client.get(f"/v1/complaints/{complaint['id']}", headers=WRITER)
        return bool(response.json()["anonymised"])

    await eventually(anonymised, timeout=30, what="complaint anonymised")
    for cid in (complaint["id"], open_one["id"]):
        detail = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
        assert detail["customer_id"] is None
        assert (detail["subject"], detail["description"], detail["order_id"]) == (None, None, None)
        assert all(s["texts"] is None and s["note"] is None for s in detail["history"])
        assert detail["allowed_actions"] == []
    detail = (
        await complaints.client.get(f"/v1/complaints/{complaint['id']}", headers=WRITER)
    ).json()
    assert (detail["root_cause"], detail["severity"], detail["status"]) == (
        "delivery_delay",
        "high",
        "resolved",
    )
    async with complaints.engine.connect() as conn:
        leftovers = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM complaints c JOIN complaint_steps s ON s.complaint_id = c.id "
                    "WHERE c.id = ANY(CAST(:ids AS uuid[])) AND (s.texts IS NOT NULL OR s.note IS NOT NULL "
                    "OR c.description IS NOT NULL OR c.subject IS NOT NULL OR c.customer_id IS NOT NULL)"
                ),
                {"ids": [complaint["id"], open_one["id"]]},
            )
        ).scalar()
    assert leftovers == 0
    refused = await complaints.client.post(
        f"/v1/complaints/{open_one['id']}/acknowledge", json={"message": "Hi"}, headers=WRITER
    )
    assert refused.status_code == 409
    again = await complaints.client.post(
        "/v1/complaints",
        json={
            "customer_id": str(customer),
            "channel": "web",
            "category": "other",
            "severity": "low",
            "subject": "x",
            "description": "y",
        },
        headers=WRITER,
    )
    assert again.status_code == 422
    # a late registration-era event does not bring the customer back
    late = new_event(
        type=ev.CUSTOMER_UPDATED,
        source="/crm/profile",
        subject=customer,
        time=start,
        data=p.CustomerUpdated(customer_id=customer, changed_fields=["email"], version=2),
    )
    await complaints.publish(late)

    async def processed() -> bool:
        async with complaints.engine.connect() as conn:
            return bool(
                (
                    await conn.execute(
                        text("SELECT count(*) FROM inbox WHERE event_id = :e"), {"e": late.id}
                    )
                ).scalar()
            )

    await eventually(processed, timeout=30, what="late event processed")
    async with complaints.engine.connect() as conn:
        known = (
            await conn.execute(
                text("SELECT known FROM known_customers WHERE customer_id = :c"), {"c": customer}
            )
        ).scalar()
    assert known is False
