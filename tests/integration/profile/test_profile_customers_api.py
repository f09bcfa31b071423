"""Customers over HTTP: registration, uniqueness, masking and audit, ETag updates, search, erasure."""

from __future__ import annotations

import base64
import uuid
from decimal import Decimal

import orjson
import pytest
from integration.profile.profile_helpers import PII_READER, READER, WRITER, Profile, read_events
from sqlalchemy import text
from support import auth

from shared.events import registry as ev
from shared.events import topics

pytestmark = pytest.mark.integration


async def test_register_normalises_and_publishes_without_personal_data(profile: Profile) -> None:
    referrer = await profile.register(name="Ref Errer")
    ref = f"crm-{uuid.uuid4().hex[:8]}"
    response = await profile.client.post(
        "/v1/customers",
        json={
            "kind": "person",
            "name": "  Jane   Doe ",
            "email": f" Jane.{ref}@Example.COM ",
            "phone": "+44 20 7946 0958",
            "addresses": [{"line1": "1 High St", "city": "London", "country": "gb"}],
            "external_ref": ref,
            "tags": ["VIP", "vip"],
            "referred_by": referrer["id"],
            "source_channel": "Web",
            "consents": {"marketing_email": "granted", "profiling": "withdrawn"},
        },
        headers=auth("customers:write", "pii:read"),
    )
    assert response.status_code == 201, response.text
    customer = response.json()
    assert response.headers["location"] == f"/v1/customers/{customer['id']}"
    assert response.headers["etag"] == '"1"'
    assert customer["name"] == "Jane Doe"
    assert customer["email"] == f"jane.{ref}@example.com"
    assert customer["phone"] == "+442079460958"
    assert customer["addresses"][0]["country"] == "GB"
    assert customer["tags"] == ["vip"]
    assert customer["source_channel"] == "web"
    assert customer["masked"] is False

    events = await read_events(profile.bootstrap, topics.CUSTOMERS, subject=customer["id"], want=3)
    assert [e["type"] for e in events] == [
        ev.CUSTOMER_REGISTERED,
        ev.CUSTOMER_CONSENT_CHANGED,
        ev.CUSTOMER_CONSENT_CHANGED,
    ]
    assert events[0]["data"]["referred_by"] == referrer["id"]
    raw = str(events)
    for personal in ("Jane", "example.com", "7946", "High St"):
        assert personal not in raw


async def test_duplicate_email_or_external_ref_is_409_naming_the_existing_customer(
    profile: Profile,
) -> None:
    first = await profile.register(external_ref=f"dup-{uuid.uuid4().hex[:6]}")
    again = await profile.client.post(
        "/v1/customers",
        json={"name": "Other", "email": first["sent"]["email"].upper()},
        headers=WRITER,
    )
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["existing_id"] == first["id"]
    by_ref = await profile.client.post(
        "/v1/customers",
        json={"name": "Other", "external_ref": first["external_ref"]},
        headers=WRITER,
    )
    assert by_ref.status_code == 409 and by_ref.json()["existing_id"] == first["id"]


async def test_invalid_contact_data_is_422_with_every_field(profile: Profile) -> None:
    response = await profile.client.post(
        "/v1/customers",
        json={"name": " ", "email": "nope", "phone": "12", "tags": [""]},
        headers=WRITER,
    )
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"body.name", "body.email", "body.phone", "body.tags.0"}


async def test_idempotency_key_replays_the_registration(profile: Profile) -> None:
    body = {"name": "Retry Me", "email": f"{uuid.uuid4().hex[:10]}@example.com"}
    headers = {**WRITER, "Idempotency-Key": uuid.uuid4().hex}
    first = await profile.client.post("/v1/customers", json=body, headers=headers)
    second = await profile.client.post("/v1/customers", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"


async def test_personal_fields_are_masked_without_pii_read_and_audited_with_it(
    profile: Profile,
) -> None:
    customer = await profile.register(
        name="Jane Doe",
        phone="+1 202 555 0173",
        addresses=[{"line1": "1 Main St", "city": "Springfield", "country": "US"}],
    )
    url = f"/v1/customers/{customer['id']}"
    masked = (await profile.client.get(url, headers=READER)).json()
    assert masked["masked"] is True
    assert masked["name"] == "J***"
    assert masked["email"].endswith("***@example.com") and len(masked["email"]) == 16
    assert masked["phone"] == "+1 *******173"
    assert masked["addresses"][0] == {
        "line1": "***",
        "line2": None,
        "city": "S***",
        "postal_code": None,
        "region": None,
        "country": "US",
        "kind": None,
    }
    view = (await profile.client.get(url + "/360", headers=READER)).json()
    assert view["profile"]["name"] == "J***"

    async def audit_rows() -> list[tuple[str, str]]:
        async with profile.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT actor, action FROM pii_access_log WHERE customer_id = :id ORDER BY id"
                ),
                {"id": customer["id"]},
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]

    assert await audit_rows() == []
    clear = (await profile.client.get(url, headers=PII_READER)).json()
    assert clear["name"] == "Jane Doe" and clear["masked"] is False
    await profile.client.get(url + "/360", headers=PII_READER)
    assert await audit_rows() == [("auditor-1", "read"), ("auditor-1", "360")]


async def test_scopes_are_enforced(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}"
    assert (await profile.client.get(url)).status_code == 401
    assert (await profile.client.get(url, headers=auth("complaints:read"))).status_code == 403
    assert (
        await profile.client.post("/v1/customers", json={"name": "X"}, headers=READER)
    ).status_code == 403


async def test_patch_needs_the_current_etag(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}"
    missing = await profile.client.patch(url, json={"name": "New"}, headers=WRITER)
    assert missing.status_code == 428
    updated = await profile.client.patch(
        url, json={"name": "Jane Smith", "tags": ["gold"]}, headers={**WRITER, "If-Match": '"1"'}
    )
    assert updated.status_code == 200, updated.text
    assert updated.headers["etag"] == '"2"'
    assert updated.json()["version"] == 2
    stale = await profile.client.patch(
        url, json={"name": "Lost Update"}, headers={**WRITER, "If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.json()["current_version"] == 2
    read = await profile.client.get(url, headers=PII_READER)
    assert read.json()["name"] == "Jane Smith" and read.headers["etag"] == '"2"'
    # RFC 9110: a list matches when one of its tags does; `*` overwrites whatever is current.
    listed = await profile.client.patch(
        url, json={"tags": ["gold", "vip"]}, headers={**WRITER, "If-Match": '"1", W/"2"'}
    )
    assert listed.status_code == 200, listed.text
    assert listed.headers["etag"] == '"3"'
    forced = await profile.client.patch(url, json={"tags": []}, headers={**WRITER, "If-Match": "*"})
    assert forced.status_code == 200 and forced.headers["etag"] == '"4"'
    events = await read_events(
        profile.bootstrap,
        topics.CUSTOMERS,
        subject=customer["id"],
        want=1,
        types={ev.CUSTOMER_UPDATED},
    )
    assert events[0]["data"]["changed_fields"] == ["name", "tags"]


async def test_patch_that_changes_nothing_keeps_the_version(profile: Profile) -> None:
    customer = await profile.register(name="Same Name")
    url = f"/v1/customers/{customer['id']}"
    response = await profile.client.patch(
        url, json={"name": " Same  Name "}, headers={**WRITER, "If-Match": '"1"'}
    )
    assert response.status_code == 200 and response.json()["version"] == 1


async def test_consents_keep_history_and_emit_only_changes(profile: Profile) -> None:
    customer = await profile.register()
    url = f"/v1/customers/{customer['id']}/consents"
    grant = {"consents": {"marketing_sms": "granted"}, "source": "web_form"}
    assert (await profile.client.put(url, json=grant, headers=WRITER)).status_code == 200
    assert (await profile.client.put(url, json=grant, headers=WRITER)).status_code == 200
    withdraw = {"consents": {"marketing_sms": "withdrawn"}, "source": "unsubscribe_link"}
    body = (await profile.client.put(url, json=withdraw, headers=WRITER)).json()
    assert [c["status"] for c in body["current"]] == ["withdrawn"]
    assert [(h["previous"], h["status"]) for h in body["history"]] == [
        (None, "granted"),
        ("granted", "withdrawn"),
    ]
    events = await read_events(
        profile.bootstrap,
        topics.CUSTOMERS,
        subject=customer["id"],
        want=2,
        types={ev.CUSTOMER_CONSENT_CHANGED},
    )
    assert [e["data"]["status"] for e in events] == ["granted", "withdrawn"]


async def test_search_by_name_email_phone_and_ref_with_cursor(profile: Profile) -> None:
    marker = uuid.uuid4().hex[:8]
    created = [
        await profile.register(name=f"Searchable {marker} {n}", external_ref=f"s-{marker}-{n}")
        for n in range(3)
    ]
    page1 = await profile.client.get(
        "/v1/customers", params={"q": f"searchable {marker}", "limit": 2}, headers=PII_READER
    )
    body1 = page1.json()
    assert [c["id"] for c in body1["items"]] == [created[0]["id"], created[1]["id"]]
    assert not any(c["masked"] for c in body1["items"])
    page2 = await profile.client.get(
        "/v1/customers",
        params={"q": f"searchable {marker}", "limit": 2, "cursor": body1["next_cursor"]},
        headers=PII_READER,
    )
    assert [c["id"] for c in page2.json()["items"]] == [created[2]["id"]]
    assert page2.json()["next_cursor"] is None
    by_ref = await profile.client.get(
        "/v1/customers", params={"q": f"s-{marker}-1"}, headers=READER
    )
    assert [c["id"] for c in by_ref.json()["items"]] == [created[1]["id"]]
    by_email = await profile.client.get(
        "/v1/customers", params={"q": created[2]["sent"]["email"].upper()}, headers=READER
    )
    assert [c["id"] for c in by_email.json()["items"]] == [created[2]["id"]]
    phone_owner = await profile.register(phone="+1 202 555 0199")
    by_phone = await profile.client.get(
        "/v1/customers", params={"q": "555-0199"}, headers=PII_READER
    )
    assert phone_owner["id"] in [c["id"] for c in by_phone.json()["items"]]


async def test_without_pii_read_search_matches_whole_values_only(profile: Profile) -> None:
    """Results are masked without `pii:read`; partial matches would let the masked e-mail or
    phone be read back one character at a time, by which searches still find the customer."""
    marker = uuid.uuid4().hex[:8]
    customer = await profile.register(
        name=f"Whole  Value {marker}", email=f"whole.{marker}@example.org", phone="+1 202 555 0142"
    )
    stored = (
        await profile.client.get(f"/v1/customers/{customer['id']}", headers=PII_READER)
    ).json()

    async def found(q: str, headers: dict[str, str]) -> bool:
        response = await profile.client.get("/v1/customers", params={"q": q}, headers=headers)
        assert response.status_code == 200, response.text
        return customer["id"] in [c["id"] for c in response.json()["items"]]

    for partial in (f"whole.{marker}@", f"value {marker}", "555 0142", "2025550142"):
        assert await found(partial, PII_READER), partial
        assert not await found(partial, READER), partial
    for whole in (
        f"whole value {marker}".upper(),
        f"WHOLE.{marker}@example.org",
        "+1 (202) 555-0142",
        stored["phone"],
    ):
        assert await found(whole, READER), whole


async def test_a_name_typed_with_extra_spaces_is_found_with_pii_read_as_without(
    profile: Profile,
) -> None:
    """Names are stored with inner whitespace collapsed; a term pasted with a double space must
    find them with `pii:read` (part of a name) as it does without (the whole name)."""
    marker = uuid.uuid4().hex[:8]
    customer = await profile.register(name=f"Spaced Out {marker}")
    for headers in (READER, PII_READER):
        response = await profile.client.get(
            "/v1/customers", params={"q": f"spaced   out  {marker}"}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert [c["id"] for c in response.json()["items"]] == [customer["id"]], headers


async def _found(profile: Profile, q: str, headers: dict[str, str]) -> set[str]:
    """Ids of the customers a search finds (one page is enough: names carry a marker)."""
    response = await profile.client.get(
        "/v1/customers", params={"q": q, "limit": 100}, headers=headers
    )
    assert response.status_code == 200, response.text
    return {c["id"] for c in response.json()["items"]}


async def test_names_are_found_regardless_of_accents_and_letter_case(profile: Profile) -> None:
    """Users of a European CRM type "muller" for "Müller": accents and case are ignored both
    ways (the term's and the stored name's), with `pii:read` as without."""
    marker = uuid.uuid4().hex[:8]
    muller = await profile.register(name=f"Jürgen Müller {marker}")
    jose_accented = await profile.register(name=f"José Núñez {marker}")
    jose_plain = await profile.register(name=f"Jose Nunez {marker}")
    francois = await profile.register(name=f"FRANÇOIS Lefèvre {marker}")
    jose = {jose_accented["id"], jose_plain["id"]}
    cases = {
        f"jurgen muller {marker}": {muller["id"]},
        f"Jurgen Muller {marker}": {muller["id"]},
        f"JÜRGEN MÜLLER {marker}": {muller["id"]},
        f"jose nunez {marker}": jose,
        f"José Núñez {marker}": jose,
        f"JOSE NUNEZ {marker}": jose,
        f"Francois Lefevre {marker}": {francois["id"]},
        f"françois lefèvre {marker}": {francois["id"]},
    }
    for headers in (READER, PII_READER):
        for q, expected in cases.items():
            assert await _found(profile, q, headers) == expected, (q, headers)


async def test_without_pii_read_an_accented_name_still_matches_whole_only(
    profile: Profile,
) -> None:
    """Ignoring accents widens what a whole name matches, not the rule: without `pii:read` a
    part of a name finds nothing, however it is spelled; with it, the part finds the customer."""
    marker = uuid.uuid4().hex[:8]
    customer = await profile.register(name=f"Søren Ødegård {marker}")
    assert await _found(profile, f"soren odegard {marker}", READER) == {customer["id"]}
    for partial in (f"odegard {marker}", f"Ødegård {marker}", "SOREN ODEGAR", "ødegård"):
        assert customer["id"] not in await _found(profile, partial, READER), partial
        assert customer["id"] in await _found(profile, partial, PII_READER), partial


async def test_with_pii_read_part_of_a_name_matches_regardless_of_accents(
    profile: Profile,
) -> None:
    """The substring match folds both sides as the whole-name match does (ß -> ss included);
    the term's LIKE wildcards stay literal characters."""
    marker = uuid.uuid4().hex[:8]
    strauss = await profile.register(name=f"Annaëlle Strauß-{marker}")
    for partial in (f"strauss-{marker}", f"STRAUSS-{marker}", f"naelle strauß-{marker}"):
        assert await _found(profile, partial, PII_READER) == {strauss["id"]}, partial
    for wildcard in (f"anna%{marker}", f"strau__-{marker}"):
        assert await _found(profile, wildcard, PII_READER) == set(), wildcard


def _cursor(key: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


@pytest.mark.parametrize(
    "key",
    [
        {"id": 5},
        {"id": ["not", "an", "id"]},
        {"at": "0001-01-01T00:00:00+05:00"},
        {"at": "9999-12-31T23:59:59-05:00"},
        {"at": 20240101},
        {"at": "2024-01-01T00:00:00"},
    ],
    ids=["int-id", "list-id", "before-year-1-in-utc", "after-9999-in-utc", "int-time", "naive"],
)
async def test_a_tampered_cursor_is_a_422_on_every_list(
    profile: Profile, key: dict[str, object]
) -> None:
    customer = await profile.register()
    base = f"/v1/customers/{customer['id']}"
    for url, time_field in (
        ("/v1/customers", "created_at"),
        (base + "/purchases", "occurred_at"),
        (base + "/interactions", "occurred_at"),
    ):
        cursor = {time_field: key.get("at", "2024-01-01T00:00:00+00:00"), "id": key.get("id")}
        cursor["id"] = cursor["id"] if "id" in key else str(uuid.uuid4())
        response = await profile.client.get(url, params={"cursor": _cursor(cursor)}, headers=READER)
        assert response.status_code == 422, (url, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "query.cursor"


async def test_erasure_forgets_personal_data_and_tells_the_others(profile: Profile) -> None:
    customer = await profile.register(
        name="Forget Me", phone="+1 202 555 0111", external_ref=f"gdpr-{uuid.uuid4().hex[:6]}"
    )
    url = f"/v1/customers/{customer['id']}"
    purchase = {"order_id": f"E-{uuid.uuid4().hex[:8]}", "amount": "10.00", "currency": "USD"}
    assert (
        await profile.client.post(url + "/purchases", json=purchase, headers=WRITER)
    ).status_code == 201
    assert (await profile.client.delete(url, headers=WRITER)).status_code == 204
    assert (await profile.client.get(url, headers=PII_READER)).status_code == 404
    assert (await profile.client.get(url + "/360", headers=PII_READER)).status_code == 404
    assert (await profile.client.delete(url, headers=WRITER)).status_code == 404
    async with profile.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT name, email, phone, external_ref, addresses, erased_at IS NOT NULL, "
                    "(SELECT count(*) FROM purchases WHERE customer_id = c.id) "
                    "FROM customers c WHERE id = :id"
                ),
                {"id": customer["id"]},
            )
        ).one()
    assert tuple(row) == (None, None, None, None, [], True, 1)
    # the e-mail is free again: a new registration is a new customer
    again = await profile.register(email=customer["sent"]["email"])
    assert again["id"] != customer["id"]
    events = await read_events(
        profile.bootstrap,
        topics.CUSTOMERS,
        subject=customer["id"],
        want=1,
        types={ev.CUSTOMER_ERASED},
    )
    assert events[0]["data"] == {"customer_id": customer["id"]}


async def test_erasure_leaves_no_free_text_in_refunds_or_replayable_answers(
    profile: Profile,
) -> None:
    """Refunds stay with their amounts only; an Idempotency-Key replay after the erasure does
    not hand back the personal data the first answer carried."""
    writer_with_pii = auth("customers:read", "customers:write", "pii:read", subject="desk")
    registration = {"name": "Forget Me Too", "email": f"{uuid.uuid4().hex[:10]}@example.com"}
    registered = await profile.client.post(
        "/v1/customers",
        json=registration,
        headers={**writer_with_pii, "Idempotency-Key": (register_key := uuid.uuid4().hex)},
    )
    assert registered.status_code == 201 and registered.json()["name"] == "Forget Me Too"
    url = f"/v1/customers/{registered.json()['id']}"
    order = {"order_id": f"E-{uuid.uuid4().hex[:8]}", "amount": "10.00", "currency": "USD"}
    assert (await profile.client.post(url + "/purchases", json=order, headers=WRITER)).is_success
    refund = {**order, "amount": "4.00", "reason": "Forget Me Too of 1 High St: mug broke"}
    refund_headers = {**WRITER, "Idempotency-Key": uuid.uuid4().hex}
    assert (
        await profile.client.post(url + "/refunds", json=refund, headers=refund_headers)
    ).status_code == 201
    call = {"channel": "phone", "direction": "inbound", "summary": "Forget Me Too rang"}
    call_headers = {**WRITER, "Idempotency-Key": uuid.uuid4().hex}
    assert (
        await profile.client.post(url + "/interactions", json=call, headers=call_headers)
    ).status_code == 201

    assert (await profile.client.delete(url, headers=WRITER)).status_code == 204

    async with profile.engine.connect() as conn:
        kept = (
            await conn.execute(
                text("SELECT amount, reason FROM refunds WHERE customer_id = :id"),
                {"id": registered.json()["id"]},
            )
        ).all()
    assert [tuple(row) for row in kept] == [(Decimal("4.00"), None)]
    replays = [
        await profile.client.post(
            "/v1/customers",
            json=registration,
            headers={**writer_with_pii, "Idempotency-Key": register_key},
        ),
        await profile.client.post(url + "/refunds", json=refund, headers=refund_headers),
        await profile.client.post(url + "/interactions", json=call, headers=call_headers),
    ]
    for replay in replays:
        assert "Forget Me Too" not in replay.text, replay.text
