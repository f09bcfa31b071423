"""Analytics computed in SQL against figures worked out by hand, the policy endpoint, and the
migration matching the ORM models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from support import auth

from services.complaints.models import Base

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
WRITER = auth("complaints:read", "complaints:write", "pii:read", subject="agent-7")
READER = auth("complaints:read", subject="viewer")
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


async def test_analytics_of_a_period(complaints: Any) -> None:
    complaints.clock.set(T0)
    customer = await complaints.customer()
    c1 = (
        await complaints.open(customer, severity="critical", channel="phone", category="product")
    )["id"]
    c2 = (await complaints.open(customer, severity="high", channel="email", category="delivery"))[
        "id"
    ]
    c3 = (await complaints.open(customer, severity="medium", channel="web", category="delivery"))[
        "id"
    ]
    await complaints.open(customer, severity="low", channel="store", category="billing")  # c4
    c5 = (await complaints.open(customer, severity="medium", channel="social", category="billing"))[
        "id"
    ]
    # received before the period: must not count
    await complaints.open(customer, severity="low", received_at=(T0 - 48 * H).isoformat())

    def resolve(root_cause: str) -> dict[str, str]:
        return {"root_cause": root_cause, "root_cause_detail": "d", "resolution": "r"}

    schedule: list[tuple[float, str, str, dict[str, Any]]] = [
        (0.5, c1, "acknowledge", {"message": "m"}),
        (1, c3, "acknowledge", {"message": "m"}),
        (2, c5, "acknowledge", {"message": "m"}),
        (2.5, c5, "investigate", {}),
        (3, c5, "resolve", resolve("billing_error")),
        (5, c2, "acknowledge", {"message": "m"}),  # first response 1 h late
        (6, c1, "investigate", {}),
        (6, c2, "investigate", {}),
        (6, c3, "investigate", {}),
        (7, c1, "await-customer", {}),  # the resolution clock stops for an hour
        (8, c1, "investigate", {}),
        (10, c1, "resolve", resolve("product_defect")),
        (11, c1, "close", {"satisfaction": 5, "feedback": "f"}),
        (20, c3, "resolve", resolve("policy")),
        (30, c3, "reopen", {}),
        (31, c3, "investigate", {}),
        (40, c3, "resolve", resolve("delivery_delay")),
        (80, c2, "resolve", resolve("delivery_delay")),  # resolution 8 h late
        (81, c2, "close", {"satisfaction": 2, "feedback": "f"}),
    ]
    for hours, complaint_id, action, body in schedule:
        complaints.clock.set(T0 + hours * H)
        await complaints.step(complaint_id, action, body)
    complaints.clock.set(T0 + 100 * H)

    response = await complaints.client.get(
        "/v1/complaints/analytics",
        params={"from": T0.isoformat(), "to": (T0 + 24 * H).isoformat()},
        headers=READER,
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["complaints"] == 5
    assert report["sla_compliance"] == {
        # met: c1 c3 c5; breached: c2 (late), c4 (never answered, due at 24 h)
        "first_response": {"met": 3, "breached": 2, "compliance_pct": 60.0},
        # met: c1 c3 (due pushed back by its 10 h resolved) c5; breached: c2; c4 still running
        "resolution": {"met": 3, "breached": 1, "compliance_pct": 75.0},
        "overall": {"met": 3, "breached": 2, "compliance_pct": 60.0},
    }
    # first responses 0.5, 1, 2, 5 h; resolutions 3, 10, 40, 80 h (linear interpolation)
    assert report["time_to_first_response"] == {"count": 4, "median_hours": 1.5, "p90_hours": 4.1}
    assert report["time_to_resolution"] == {"count": 4, "median_hours": 25.0, "p90_hours": 68.0}
    # less the pauses: c1's hour awaiting the customer, c3's 10 h resolved before its reopening
    assert report["time_to_resolution_net"] == {
        "count": 4,
        "median_hours": 19.5,  # of 3, 9, 30, 80
        "p90_hours": 65.0,
    }
    assert report["reopen_rate_pct"] == 25.0
    assert (report["csat_mean"], report["csat_responses"]) == (3.5, 2)
    assert report["csat_distribution"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}
    assert report["by_category"] == {
        "product": 1,
        "service": 0,
        "delivery": 2,
        "billing": 2,
        "other": 0,
    }
    assert report["by_channel"] == {
        "phone": 1,
        "email": 1,
        "web": 1,
        "store": 1,
        "social": 1,
        "other": 0,
    }
    assert report["by_severity"] == {"low": 1, "medium": 2, "high": 1, "critical": 1}
    assert report["root_cause_pareto"] == [
        {"root_cause": "delivery_delay", "count": 2, "share_pct": 50.0, "cumulative_pct": 50.0},
        {"root_cause": "billing_error", "count": 1, "share_pct": 25.0, "cumulative_pct": 75.0},
        {"root_cause": "product_defect", "count": 1, "share_pct": 25.0, "cumulative_pct": 100.0},
    ]


async def test_analytics_period_must_be_ordered(complaints: Any) -> None:
    response = await complaints.client.get(
        "/v1/complaints/analytics",
        params={"from": T0.isoformat(), "to": (T0 - H).isoformat()},
        headers=READER,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "query.from"


async def test_policy_is_validated_versioned_and_applied_to_new_complaints(complaints: Any) -> None:
    start = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    complaints.clock.set(start)
    default = (await complaints.client.get("/v1/complaints/policy", headers=READER)).json()
    version = default.pop("version")
    assert default["root_causes"][0] == "product_defect"
    assert default["sla"]["first_response"]["critical"] == "PT1H"
    try:
        bad = {**default, "sla": {**default["sla"], "tier_factors": {"key": 2}}}
        refused = await complaints.client.put("/v1/complaints/policy", json=bad, headers=WRITER)
        assert refused.status_code == 422
        assert (await complaints.client.get("/v1/complaints/policy", headers=READER)).json()[
            "version"
        ] == version

        changed = {
            "sla": {
                **default["sla"],
                "first_response": {**default["sla"]["first_response"], "critical": "PT2H"},
            },
            "root_causes": ["courier_lost_parcel", "other"],
        }
        stored = await complaints.client.put(
            "/v1/complaints/policy", json=changed, headers={**WRITER, "If-Match": f'"{version}"'}
        )
        assert stored.status_code == 200, stored.text
        assert stored.headers["ETag"] == f'"{version + 1}"'
        stale = await complaints.client.put(
            "/v1/complaints/policy", json=changed, headers={**WRITER, "If-Match": f'"{version}"'}
        )
        assert stale.status_code == 412

        complaint = await complaints.open(await complaints.customer(), severity="critical")
        assert datetime.fromisoformat(complaint["sla"]["first_response"]["due"]) == start + 2 * H
        await complaints.step(complaint["id"], "acknowledge", {"message": "m"})
        await complaints.step(complaint["id"], "investigate")
        resolved = await complaints.step(
            complaint["id"],
            "resolve",
            {"root_cause": "courier_lost_parcel", "root_cause_detail": "d", "resolution": "r"},
        )
        assert resolved["root_cause"] == "courier_lost_parcel"
    finally:
        restore = await complaints.client.put("/v1/complaints/policy", json=default, headers=WRITER)
        assert restore.status_code == 200


async def test_a_boolean_in_the_policy_is_a_422_naming_it_and_changes_nothing(
    complaints: Any,
) -> None:
    """JSON `true` was read as 1: a tier factor of 1, a duration of one second."""
    policy = (await complaints.client.get("/v1/complaints/policy", headers=READER)).json()
    version = policy.pop("version")
    for change, field, reason in (
        ({"tier_factors": {"key": True}}, "body.sla.tier_factors.key", "valid number"),
        ({"level_3_after": True}, "body.sla.level_3_after", "valid timedelta"),
        ({"first_response_cap": False}, "body.sla.first_response_cap", "valid timedelta"),
    ):
        bad = {**policy, "sla": {**policy["sla"], **change}}
        refused = await complaints.client.put("/v1/complaints/policy", json=bad, headers=WRITER)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"] == [
            {"field": field, "reason": f"Input should be a {reason}"}
        ]
    after = (await complaints.client.get("/v1/complaints/policy", headers=READER)).json()
    assert after == {**policy, "version": version}


async def test_a_shorter_level_three_delay_applies_to_complaints_at_level_two(
    complaints: Any,
) -> None:
    received = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    complaints.clock.set(received)
    complaint = await complaints.open(await complaints.customer(), severity="critical")
    await complaints.evaluate(received + 25 * H)  # levels 1 and 2 (level 2 at 24 h)
    policy = (await complaints.client.get("/v1/complaints/policy", headers=READER)).json()
    policy.pop("version")
    try:
        shorter = {**policy, "sla": {**policy["sla"], "level_3_after": "PT2H"}}
        assert (
            await complaints.client.put("/v1/complaints/policy", json=shorter, headers=WRITER)
        ).status_code == 200
        await complaints.evaluate(received + 26 * H + timedelta(microseconds=1))
        detail = (
            await complaints.client.get(f"/v1/complaints/{complaint['id']}", headers=READER)
        ).json()
        assert [(e["level"], datetime.fromisoformat(e["at"])) for e in detail["escalations"]] == [
            (1, received + H),
            (2, received + 24 * H),
            (3, received + 26 * H),
        ]
    finally:
        assert (
            await complaints.client.put("/v1/complaints/policy", json=policy, headers=WRITER)
        ).status_code == 200


async def test_migrations_match_the_models(complaints: Any) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with complaints.engine.connect() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []
