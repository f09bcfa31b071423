"""Input PostgreSQL or Python cannot hold is a 422 naming the field, never a 500 (or a crash of
an import): text with a NUL character, times whose UTC form leaves the calendar, odd ETags."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from integration.profile.profile_helpers import READER, WRITER, Profile

pytestmark = pytest.mark.integration

#: 00:00 on 1 January of year 1 at +14:00 is in year 0 in UTC, which no datetime can hold.
BEFORE_YEAR_ONE = "0001-01-01T00:00:00+14:00"


def field_errors(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return {error["field"] for error in response.json()["errors"]}


async def test_text_with_a_nul_character_is_a_422_naming_the_field(profile: Profile) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    order_id = f"N-{uuid.uuid4().hex[:8]}"
    paid = {"order_id": order_id, "amount": "10.00", "currency": "USD"}
    assert (await profile.client.post(base + "/purchases", json=paid, headers=WRITER)).is_success
    etag = {**WRITER, "If-Match": '"1"'}
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", "/v1/customers", {"params": {"q": "jane\x00"}, "headers": READER}, "query.q"),
        (
            "POST",
            base + "/refunds",
            {"json": {"order_id": "A\x00", "amount": "1.00", "currency": "USD"}},
            "body.order_id",
        ),
        (
            "POST",
            base + "/refunds",
            {"json": {"order_id": order_id, "amount": "1.00", "currency": "USD", "reason": "\x00"}},
            "body.reason",
        ),
        (
            "POST",
            base + "/interactions",
            {"json": {"channel": "phone", "direction": "inbound", "summary": "call\x00"}},
            "body.summary",
        ),
        (
            "PUT",
            base + "/consents",
            {"json": {"consents": {"profiling": "granted"}, "source": "web\x00"}},
            "body.source",
        ),
        (
            "PATCH",
            base,
            {"json": {"custom_attributes": {"note": "a\x00b"}}, "headers": etag},
            "body.custom_attributes",
        ),
        (
            "PATCH",
            base,
            {
                "json": {"addresses": [{"line1": "1\x00", "city": "Leeds", "country": "GB"}]},
                "headers": etag,
            },
            "body.addresses.0.line1",
        ),
        (
            "POST",
            "/v1/customers",
            {"json": {"name": "Nul Key", "custom_attributes": {"k\x00": 1}}},
            "body.custom_attributes",
        ),
    ]
    for method, url, request, field in cases:
        response = await profile.client.request(method, url, **{"headers": WRITER, **request})
        assert field in field_errors(response), (method, url, response.text)
    # nothing changed
    after = await profile.client.get(base, headers=READER)
    assert after.json()["version"] == 1


@pytest.mark.parametrize(
    "moment",
    [
        BEFORE_YEAR_ONE,
        # asyncpg's -infinity: stored as such, it read back without an offset
        "0001-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
    ],
)
async def test_a_time_before_year_one_in_utc_is_a_422(profile: Profile, moment: str) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    order_id = f"T-{uuid.uuid4().hex[:8]}"
    paid = {"order_id": order_id, "amount": "10.00", "currency": "USD"}
    assert (await profile.client.post(base + "/purchases", json=paid, headers=WRITER)).is_success
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        (
            "POST",
            base + "/purchases",
            {**paid, "order_id": f"{order_id}-2", "occurred_at": moment},
            "body.occurred_at",
        ),
        (
            "POST",
            base + "/interactions",
            {
                "channel": "phone",
                "direction": "inbound",
                "summary": "x",
                "occurred_at": moment,
            },
            "body.occurred_at",
        ),
        (
            "PUT",
            base + "/consents",
            {"consents": {"profiling": "granted"}, "source": "web", "changed_at": moment},
            "body.changed_at",
        ),
        (
            "POST",
            "/v1/customers",
            {"name": "Old", "registered_at": moment},
            "body.registered_at",
        ),
    ]
    for method, url, body, field in cases:
        response = await profile.client.request(method, url, json=body, headers=WRITER)
        assert field in field_errors(response), (method, url, response.text)


async def test_an_import_reports_such_rows_instead_of_failing(profile: Profile) -> None:
    marker = uuid.uuid4().hex[:8]
    csv_text = (
        "external_ref,order_id,occurred_at,amount,currency\n"
        f"r-{marker},{marker}-ok,2024-01-01,1.00,USD\n"
        f"r-{marker},{marker}-nul\x00,2024-01-02,1.00,USD\n"
        f"r-{marker},{marker}-old,{BEFORE_YEAR_ONE},1.00,USD\n"
    )
    response = await profile.client.post(
        "/v1/imports/purchases",
        content=csv_text.encode(),
        headers={**WRITER, "content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert (summary["status"], summary["purchases_created"], summary["rejected"]) == ("done", 1, 2)
    assert [r["line"] for r in summary["rejections"]] == [3, 4]
    assert "occurred_at" in summary["rejections"][1]["reason"]


async def test_an_if_match_of_other_digits_is_a_412_not_a_500(profile: Profile) -> None:
    customer = await profile.register()
    response = await profile.client.patch(
        f"/v1/customers/{customer['id']}",
        json={"name": "Renamed"},
        headers={**WRITER, "If-Match": '"\u00b2"'.encode("latin-1")},  # superscript two
    )
    assert response.status_code == 412, response.text


async def test_a_blank_consent_source_at_registration_names_that_field(profile: Profile) -> None:
    response = await profile.client.post(
        "/v1/customers",
        json={"name": "Blank Source", "consents": {"profiling": "granted"}, "consent_source": " "},
        headers=WRITER,
    )
    assert field_errors(response) == {"body.consent_source"}
