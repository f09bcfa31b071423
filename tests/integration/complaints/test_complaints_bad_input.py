"""Input the database cannot store is refused with 422 naming the field, never a 500: text with
U+0000, and RFC 3339 times that have no UTC datetime (or sit at the end of time)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from support import auth

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
WRITER = auth("complaints:read", "complaints:write", "pii:read", subject="agent-7")
# Valid RFC 3339, but one hour before 0001-01-01T00:00Z / after 9999-12-31T23:59Z in UTC.
BEFORE_YEAR_ONE = "0001-01-01T00:00:00+01:00"
AFTER_YEAR_9999 = "9999-12-31T23:00:00-05:00"
# Representable, but SLA arithmetic (a target or a pause added to it) would overflow.
END_OF_TIME = "9999-12-31T23:00:00+00:00"
NUL = "a\x00b"
# JSON may escape half of a surrogate pair (`"\udfff"`); no UTF-8, so no database, can hold it.
LONE_SURROGATE = "a\udfffb"


def _json(body: dict[str, Any]) -> dict[str, Any]:
    """A body as JSON text with `\\u` escapes, which is how a client sends a lone surrogate."""
    return {
        "content": json.dumps(body).encode(),
        "headers": {**WRITER, "content-type": "application/json"},
    }


def _fields(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize("text", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
async def test_text_no_database_can_hold_is_422_naming_the_field(
    complaints: Any, text: str
) -> None:
    complaints.clock.set(datetime(2027, 4, 5, 9, 0, tzinfo=UTC))
    customer = await complaints.customer()
    base = {
        "customer_id": str(customer),
        "channel": "phone",
        "category": "billing",
        "severity": "low",
        "subject": "Charged twice",
        "description": "Two charges on my card",
    }
    for field in ("subject", "description", "order_id"):
        response = await complaints.client.post("/v1/complaints", **_json({**base, field: text}))
        assert _fields(response) == [f"body.{field}"]
    complaint = await complaints.open(customer)
    cid = complaint["id"]
    for body, field in (
        ({"message": text}, "body.message"),
        ({"message": "Sorry", "note": text}, "body.note"),
    ):
        response = await complaints.client.post(f"/v1/complaints/{cid}/acknowledge", **_json(body))
        assert _fields(response) == [field]
    unchanged = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert (unchanged["status"], unchanged["version"]) == ("received", complaint["version"])


async def test_times_without_a_utc_datetime_are_422_naming_the_field(complaints: Any) -> None:
    now = datetime(2027, 4, 6, 9, 0, tzinfo=UTC)
    complaints.clock.set(now)
    customer = await complaints.customer()
    intake = await complaints.client.post(
        "/v1/complaints",
        json={
            "customer_id": str(customer),
            "channel": "phone",
            "category": "billing",
            "severity": "low",
            "subject": "Charged twice",
            "description": "Two charges on my card",
            "received_at": BEFORE_YEAR_ONE,
        },
        headers=WRITER,
    )
    assert _fields(intake) == ["body.received_at"]

    for as_of in (BEFORE_YEAR_ONE, AFTER_YEAR_9999):
        evaluated = await complaints.client.post(
            "/v1/complaints/sla/evaluate", json={"as_of": as_of}, headers=WRITER
        )
        assert _fields(evaluated) == ["body.as_of"]
    analytics_from = await complaints.client.get(
        "/v1/complaints/analytics", params={"from": BEFORE_YEAR_ONE}, headers=WRITER
    )
    assert _fields(analytics_from) == ["query.from"]
    analytics_to = await complaints.client.get(
        "/v1/complaints/analytics",
        params={"from": "2020-01-01T00:00:00Z", "to": AFTER_YEAR_9999},
        headers=WRITER,
    )
    assert _fields(analytics_to) == ["query.to"]
    for instant in (BEFORE_YEAR_ONE, AFTER_YEAR_9999):
        key = {"r": instant, "i": "00000000-0000-0000-0000-000000000001"}
        cursor = base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")
        listed = await complaints.client.get(
            "/v1/complaints", params={"cursor": cursor}, headers=WRITER
        )
        assert _fields(listed) == ["query.cursor"]


async def test_an_as_of_at_the_end_of_time_is_422_not_an_overflow(complaints: Any) -> None:
    received = datetime(2027, 4, 7, 9, 0, tzinfo=UTC)
    complaints.clock.set(received)
    customer = await complaints.customer()
    complaint = await complaints.open(customer, severity="medium")
    cid = complaint["id"]
    # answered late (a candidate for level 1), then waiting for the customer: the resolution
    # clock's ongoing pause counts up to `as_of`, past the last datetime
    complaints.clock.set(received + 25 * H)
    await complaints.step(cid, "acknowledge", {"message": "Sorry for the wait"})
    await complaints.step(cid, "investigate")
    await complaints.step(cid, "await-customer")
    evaluated = await complaints.client.post(
        "/v1/complaints/sla/evaluate", json={"as_of": END_OF_TIME}, headers=WRITER
    )
    assert _fields(evaluated) == ["body.as_of"]
    detail = (await complaints.client.get(f"/v1/complaints/{cid}", headers=WRITER)).json()
    assert detail["escalation_level"] == 0
