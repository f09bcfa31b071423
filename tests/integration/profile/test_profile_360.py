"""The 360 view from local projections fed by lifecycle, value and complaint events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from integration.profile.profile_helpers import PII_READER, READER, WRITER, Profile, produce
from pydantic import BaseModel
from support import auth, event, eventually

from shared.events import payloads as p
from shared.events import registry as ev

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


async def publish(
    profile: Profile, type_: str, data: BaseModel, customer_id: str, at: datetime
) -> uuid.UUID:
    envelope = event(type_, data, subject=customer_id, time=at, source="/crm/test")
    await produce(profile.bootstrap, ev.topic_for(type_), envelope.to_bytes(), key=customer_id)
    return envelope.id


async def view(profile: Profile, customer_id: str) -> dict[str, Any]:
    response = await profile.client.get(f"/v1/customers/{customer_id}/360", headers=READER)
    assert response.status_code == 200, response.text
    return dict(response.json())


def value_scored(customer_id: str, score: float, tier: p.Tier | None) -> p.ValueScored:
    return p.ValueScored(
        customer_id=uuid.UUID(customer_id),
        score=score,
        dimensions=p.ValueDimensions(current=50, future=50, credit=100, loyalty=40, growth=30),
        tier=tier,
        loyalty=p.LoyaltyScore(
            index=61.5, behavioural=70, attitudinal=50, dick_basu="true", jones_sasser="apostle"
        ),
        p_alive=0.9,
        clv="120.5",  # type: ignore[arg-type]
        currency="USD",
        model_version="m-1",
    )


async def test_new_customer_has_an_empty_360(profile: Profile) -> None:
    customer = await profile.register(consents={"marketing_email": "granted"})
    document = await view(profile, customer["id"])
    assert document["profile"]["id"] == customer["id"] and document["profile"]["masked"]
    assert [c["purpose"] for c in document["consents"]["items"]] == ["marketing_email"]
    assert document["purchases"] == {
        "count": 0,
        "first_at": None,
        "last_at": None,
        "total": "0.00",
        "refunded": "0.00",
        "net": "0.00",
        "currency": "USD",
        "updated_at": None,
    }
    assert document["lifecycle"] is None and document["value"] is None
    assert document["complaints"] == {
        "open": [],
        "open_count": 0,
        "sla_breached": False,
        "updated_at": None,
    }


async def test_purchases_summary_counts_refunds(profile: Profile) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    for day, amount in ((1, "10.00"), (5, "30.50")):
        await profile.client.post(
            base + "/purchases",
            json={
                "order_id": f"V-{uuid.uuid4().hex[:8]}-{day}",
                "amount": amount,
                "currency": "USD",
                "occurred_at": f"2024-02-0{day}T12:00:00Z",
            },
            headers=WRITER,
        )
    listed = (await profile.client.get(base + "/purchases", headers=READER)).json()["items"]
    await profile.client.post(
        base + "/refunds",
        json={"order_id": listed[0]["order_id"], "amount": "0.50", "currency": "USD"},
        headers=WRITER,
    )
    summary = (await view(profile, customer["id"]))["purchases"]
    assert (summary["count"], summary["total"], summary["refunded"], summary["net"]) == (
        2,
        "40.50",
        "0.50",
        "40.00",
    )
    assert summary["first_at"].startswith("2024-02-01T12:00:00")
    assert summary["last_at"].startswith("2024-02-05T12:00:00")


async def test_stage_value_and_complaints_are_projected(profile: Profile) -> None:
    customer = await profile.register()
    cid = customer["id"]
    complaint_id = uuid.uuid4()
    await publish(
        profile,
        ev.STAGE_CHANGED,
        p.StageChanged(
            customer_id=uuid.UUID(cid),
            from_stage=None,
            to_stage=p.Stage.prospect,
            reason="registered",
        ),
        cid,
        T0,
    )
    await publish(
        profile,
        ev.STAGE_CHANGED,
        p.StageChanged(
            customer_id=uuid.UUID(cid),
            from_stage=p.Stage.prospect,
            to_stage=p.Stage.growth,
            reason="first_purchase",
        ),
        cid,
        T0 + timedelta(days=1),
    )
    await publish(profile, ev.VALUE_SCORED, value_scored(cid, 72.5, p.Tier.major), cid, T0)
    await publish(
        profile,
        ev.COMPLAINT_OPENED,
        p.ComplaintOpened(
            complaint_id=complaint_id,
            customer_id=uuid.UUID(cid),
            severity=p.Severity.high,
            channel=p.ComplaintChannel.email,
            category=p.ComplaintCategory.delivery,
            first_response_due=T0 + timedelta(hours=4),
            resolution_due=T0 + timedelta(hours=72),
        ),
        cid,
        T0 + timedelta(days=2),
    )
    await publish(
        profile,
        ev.COMPLAINT_ESCALATED,
        p.ComplaintEscalated(
            complaint_id=complaint_id,
            customer_id=uuid.UUID(cid),
            severity=p.Severity.high,
            level=1,
            reason=p.EscalationReason.first_response_breached,
        ),
        cid,
        T0 + timedelta(days=2, hours=5),
    )

    async def projected() -> dict[str, Any] | None:
        document = await view(profile, cid)
        ready = (
            document["lifecycle"]
            and document["lifecycle"]["stage"] == "growth"
            and document["value"]
            and document["complaints"]["open_count"] == 1
            and document["complaints"]["sla_breached"]
        )
        return document if ready else None

    document = await eventually(projected, timeout=15, what="projections in the 360 view")
    assert document["lifecycle"]["since"].startswith("2024-05-02T10:00:00")
    assert document["lifecycle"]["reason"] == "first_purchase"
    value = document["value"]
    assert (value["score"], value["tier"], value["loyalty_index"]) == (72.5, "major", 61.5)
    assert (value["loyalty_type"], value["loyalty_satisfaction_type"]) == ("true", "apostle")
    assert value["clv"] == "120.50"
    [complaint] = document["complaints"]["open"]
    assert complaint["complaint_id"] == str(complaint_id)
    assert (complaint["severity"], complaint["status"], complaint["escalation_level"]) == (
        "high",
        "received",
        1,
    )
    assert document["complaints"]["updated_at"] is not None

    # a late, older stage event does not move the projection back
    await publish(
        profile,
        ev.STAGE_CHANGED,
        p.StageChanged(
            customer_id=uuid.UUID(cid),
            from_stage=None,
            to_stage=p.Stage.prospect,
            reason="registered",
        ),
        cid,
        T0 - timedelta(days=1),
    )
    # tier moves, then the complaint is closed: it leaves the open list
    await publish(
        profile,
        ev.TIER_CHANGED,
        p.TierChanged(
            customer_id=uuid.UUID(cid), from_tier=p.Tier.major, to_tier=p.Tier.key, score=96
        ),
        cid,
        T0 + timedelta(days=3),
    )
    await publish(
        profile,
        ev.COMPLAINT_CLOSED,
        p.ComplaintClosed(
            complaint_id=complaint_id,
            customer_id=uuid.UUID(cid),
            severity=p.Severity.high,
            satisfaction=5,
        ),
        cid,
        T0 + timedelta(days=4),
    )

    async def settled() -> dict[str, Any] | None:
        document = await view(profile, cid)
        done = document["value"]["tier"] == "key" and document["complaints"]["open_count"] == 0
        return document if done else None

    document = await eventually(settled, timeout=15, what="tier change and closed complaint")
    assert document["lifecycle"]["stage"] == "growth"
    assert document["complaints"]["sla_breached"] is False


async def test_the_360_answers_every_request_as_documented(profile: Profile) -> None:
    customer = await profile.register(
        consents={
            "profiling": "granted",
            "marketing_sms": "withdrawn",
            "marketing_email": "granted",
        }
    )
    cid = customer["id"]
    document = await view(profile, cid)
    purposes = [consent["purpose"] for consent in document["consents"]["items"]]
    assert purposes == ["marketing_email", "marketing_sms", "profiling"]
    # the same document for every spelling of the id that the documented UUID parameter takes
    for spelling in (cid.upper(), uuid.UUID(cid).hex):
        other = await profile.client.get(f"/v1/customers/{spelling}/360", headers=READER)
        assert other.status_code == 200 and other.json() == document
    url = f"/v1/customers/{cid}/360"
    responses = {
        "not a uuid": await profile.client.get("/v1/customers/c-1/360", headers=READER),
        "no token": await profile.client.get(url),
        "no scope": await profile.client.get(url, headers=auth("complaints:read")),
        "unknown": await profile.client.get(f"/v1/customers/{uuid.uuid4()}/360", headers=READER),
        "post": await profile.client.post(url, headers=READER),
    }
    statuses = {what: response.status_code for what, response in responses.items()}
    assert statuses == {
        "not a uuid": 422,
        "no token": 401,
        "no scope": 403,
        "unknown": 404,
        "post": 405,
    }
    for response in responses.values():
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert responses["not a uuid"].json()["errors"][0]["field"] == "path.customer_id"
    assert responses["no token"].headers["www-authenticate"] == "Bearer"
    assert responses["post"].headers["allow"] == "GET"
    # every answer is counted under the route's template
    metrics = (await profile.client.get("/metrics")).text
    for method, status in (("GET", 200), ("GET", 401), ("GET", 403), ("GET", 404), ("POST", 405)):
        series = f'method="{method}",route="/v1/customers/{{customer_id}}/360"'
        assert f'{series},service="profile",status="{status}"' in metrics, (method, status)


async def test_stage_and_tier_filters_use_the_projections(profile: Profile) -> None:
    marker = uuid.uuid4().hex[:8]
    loyal = await profile.register(name=f"Filter {marker} A")
    other = await profile.register(name=f"Filter {marker} B")
    for customer, stage in ((loyal, p.Stage.mature), (other, p.Stage.decline)):
        await publish(
            profile,
            ev.STAGE_CHANGED,
            p.StageChanged(
                customer_id=uuid.UUID(customer["id"]),
                from_stage=p.Stage.prospect,
                to_stage=stage,
                reason="x",
            ),
            customer["id"],
            T0,
        )
    await publish(
        profile, ev.VALUE_SCORED, value_scored(loyal["id"], 90, p.Tier.key), loyal["id"], T0
    )

    async def found(params: dict[str, str]) -> list[str]:
        response = await profile.client.get(
            "/v1/customers", params={"q": f"filter {marker}", **params}, headers=PII_READER
        )
        return [c["id"] for c in response.json()["items"]]

    async def mature_ready() -> list[str] | None:
        return await found({"stage": "mature", "tier": "key"}) or None

    assert await eventually(mature_ready, timeout=15, what="stage+tier filter") == [loyal["id"]]
    assert await found({"stage": "decline"}) == [other["id"]]
    assert await found({"tier": "small"}) == []


async def test_events_of_an_erased_customer_do_not_come_back(profile: Profile) -> None:
    customer = await profile.register()
    cid = customer["id"]
    await profile.client.delete(f"/v1/customers/{cid}", headers=WRITER)
    await publish(profile, ev.VALUE_SCORED, value_scored(cid, 10, p.Tier.small), cid, T0)
    marker = await profile.register()
    await publish(
        profile, ev.VALUE_SCORED, value_scored(marker["id"], 11, p.Tier.small), marker["id"], T0
    )
    await eventually(
        lambda: _value_of(profile, marker["id"]), timeout=15, what="the later event projected"
    )
    assert await _value_of(profile, cid) is None


async def _value_of(profile: Profile, customer_id: str) -> float | None:
    from sqlalchemy import text

    async with profile.engine.connect() as conn:
        score = await conn.scalar(
            text("SELECT score FROM customer_value WHERE customer_id = :id"), {"id": customer_id}
        )
    return None if score is None else float(score)
