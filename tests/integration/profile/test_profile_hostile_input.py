"""Input PostgreSQL or Python cannot hold is a 422 naming the field, never a 500 (or a crash of
an import): text with a NUL character, times whose UTC form leaves the calendar, odd ETags."""

from __future__ import annotations

import json
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
    "attributes",
    [
        {"note": "a\udfffb"},
        {"k\udc00": 1},
        {"nested": [{"deep": "\ud800"}]},
        {"nested": {"k\ud800": 1}},
    ],
    ids=["value", "key", "nested-value", "nested-key"],
)
async def test_custom_attributes_with_a_lone_surrogate_are_a_422(
    profile: Profile, attributes: dict[str, Any]
) -> None:
    """JSON may escape half of a surrogate pair; it has no UTF-8, so jsonb cannot hold it."""
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    as_json = {**WRITER, "content-type": "application/json"}  # `\\u` escapes, as a client sends
    cases: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        (
            "POST",
            "/v1/customers",
            {"name": "Lone Half", "custom_attributes": attributes},
            # a retry-safe registration dumps the request for its fingerprint first
            {**as_json, "Idempotency-Key": uuid.uuid4().hex},
        ),
        ("PATCH", base, {"custom_attributes": attributes}, {**as_json, "If-Match": '"1"'}),
    ]
    for method, url, body, headers in cases:
        response = await profile.client.request(
            method, url, content=json.dumps(body).encode(), headers=headers
        )
        # pydantic refuses a surrogate in a key itself (`body.custom_attributes.k\ufffd.[key]`)
        fields = field_errors(response)
        assert fields and all(f.startswith("body.custom_attributes") for f in fields), fields
    after = await profile.client.get(base, headers=READER)
    assert (after.json()["version"], after.json()["custom_attributes"]) == (1, {})


async def test_an_idempotent_registration_takes_any_json_its_fingerprint_cannot_break(
    profile: Profile,
) -> None:
    """The Idempotency-Key fingerprint of the request used orjson, which refuses integers past
    64 bits and lone surrogates: both were a 500 before the registration's own rules ran."""
    big = {"name": "Big Number", "custom_attributes": {"points": 2**70}}
    key = {**WRITER, "Idempotency-Key": uuid.uuid4().hex}
    first = await profile.client.post("/v1/customers", json=big, headers=key)
    assert first.status_code == 201, first.text
    assert first.json()["custom_attributes"] == {"points": 2**70}
    again = await profile.client.post("/v1/customers", json=big, headers=key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.json()["id"] == first.json()["id"]
    # stored as sent, the hand-serialised 360 view shows it too
    view = await profile.client.get(f"/v1/customers/{first.json()['id']}/360", headers=READER)
    assert view.status_code == 200, view.text
    assert view.json()["profile"]["custom_attributes"] == {"points": 2**70}

    lone = {"name": "Lone Half", "custom_attributes": {"note": "a\udfffb"}}
    refused = await profile.client.post(
        "/v1/customers",
        content=json.dumps(lone).encode(),
        headers={**WRITER, "Idempotency-Key": uuid.uuid4().hex, "content-type": "application/json"},
    )
    assert field_errors(refused) == {"body.custom_attributes"}


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
