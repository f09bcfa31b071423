"""Input Python or PostgreSQL cannot hold is a 422 naming the field (or, for an ETag, a 412),
never a 500: times whose UTC form leaves the calendar, cursors of other types, odd ETags."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from integration.lifecycle.lifecycle_helpers import ADMIN, READER, Lifecycle

pytestmark = pytest.mark.integration

#: 00:00 on 1 January of year 1 at +14:00 is in year 0 in UTC, which no datetime can hold.
BEFORE_YEAR_ONE = "0001-01-01T00:00:00+14:00"
AFTER_YEAR_9999 = "9999-12-31T23:59:59-14:00"


def field_errors(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return {error["field"] for error in response.json()["errors"]}


def cursor(key: Any) -> str:
    """A cursor as this API encodes one, around any JSON (a client may send anything)."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


@pytest.mark.parametrize("as_of", [BEFORE_YEAR_ONE, AFTER_YEAR_9999])
async def test_an_as_of_without_a_utc_datetime_is_a_422(lifecycle: Lifecycle, as_of: str) -> None:
    client = lifecycle.client
    distribution = await client.get(
        "/v1/lifecycle/distribution", params={"as_of": as_of}, headers=READER
    )
    assert field_errors(distribution) == {"query.as_of"}
    waited = await client.post("/v1/lifecycle/evaluate", json={"as_of": as_of}, headers=ADMIN)
    assert field_errors(waited) == {"body.as_of"}
    queued = await client.post(
        "/v1/lifecycle/evaluate",
        json={"as_of": as_of},
        headers={**ADMIN, "Prefer": "respond-async"},
    )
    assert field_errors(queued) == {"body.as_of"}


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/lifecycle/evaluations", {"requested_at": "2026-01-01T00:00:00+00:00", "run_id": 5}),
        ("/v1/lifecycle/evaluations", {"requested_at": "2026-01-01T00:00:00Z", "run_id": ["x"]}),
        (
            "/v1/lifecycle/evaluations",
            {"requested_at": BEFORE_YEAR_ONE, "run_id": "00000000-0000-0000-0000-000000000000"},
        ),
        ("/v1/lifecycle/policy/versions", {"version": True}),
        ("/v1/lifecycle/policy/versions", {"version": 2**40}),
    ],
)
async def test_a_cursor_this_api_did_not_give_is_a_422(
    lifecycle: Lifecycle, path: str, key: dict[str, Any]
) -> None:
    response = await lifecycle.client.get(path, params={"cursor": cursor(key)}, headers=READER)
    assert field_errors(response) == {"query.cursor"}


async def test_if_match_reads_as_rfc_9110(lifecycle: Lifecycle) -> None:
    client = lifecycle.client
    read = await client.get("/v1/lifecycle/policy", headers=READER)
    policy, current = read.json()["policy"], read.headers["ETag"]

    async def put(if_match: str | bytes) -> Any:
        return await client.put(
            "/v1/lifecycle/policy", json=policy, headers={**ADMIN, "If-Match": if_match}
        )

    # Other digits than ASCII ones, or more than int() reads: no ETag of this API, so no match.
    assert (await put('"\u00b2"'.encode("latin-1"))).status_code == 412  # superscript two
    assert (await put('"' + "1" * 5000 + '"')).status_code == 412
    unchanged = await client.get("/v1/lifecycle/policy", headers=READER)
    assert unchanged.headers["ETag"] == current
    # `*`: whatever is current; a list: any of them.
    anything = await put("*")
    assert anything.status_code == 200, anything.text
    listed = await put(f'"999999", {anything.headers["ETag"]}')
    assert listed.status_code == 200, listed.text
    assert (await put(current)).status_code == 412  # stale now


async def test_an_evaluation_with_an_unknown_field_is_a_422_and_runs_nothing(
    lifecycle: Lifecycle,
) -> None:
    """A misspelt `as_of` is not silently dropped (the run would be as of now, not then)."""
    client = lifecycle.client

    async def requested_runs() -> list[Any]:
        listed = await client.get("/v1/lifecycle/evaluations", headers=READER)
        assert listed.status_code == 200, listed.text
        return [run for run in listed.json()["items"] if run["trigger"] != "schedule"]

    before = await requested_runs()
    for headers in (ADMIN, {**ADMIN, "Prefer": "respond-async"}):
        response = await client.post(
            "/v1/lifecycle/evaluate", json={"asOf": "2026-01-01T00:00:00Z"}, headers=headers
        )
        assert field_errors(response) == {"body.asOf"}
    assert await requested_runs() == before


async def test_a_refused_policy_names_the_field_and_changes_nothing(lifecycle: Lifecycle) -> None:
    """JSON `true` was read as the number 1 (a policy of one-day gaps), and a churn threshold
    not after its lapse threshold was a 422 naming only `body`."""
    client = lifecycle.client
    read = await client.get("/v1/lifecycle/policy", headers=READER)
    policy, current = read.json()["policy"], read.headers["ETag"]
    lapse_days, lapse_gaps = policy["lapse_min_days"], policy["lapse_gap_multiplier"]
    refused: list[tuple[dict[str, Any], str, str]] = [
        ({**policy, "default_gap_days": True}, "body.default_gap_days", "valid number"),
        ({**policy, "lapse_gap_multiplier": False}, "body.lapse_gap_multiplier", "valid number"),
        ({**policy, "mature_min_tenure_days": False}, "body.mature_min_tenure_days", "integer"),
        (
            {**policy, "recovery_min_satisfaction": True},
            "body.recovery_min_satisfaction",
            "integer",
        ),
        (
            {**policy, "churn_min_days": lapse_days},
            "body.churn_min_days",
            f"churn_min_days ({float(lapse_days)}) must exceed lapse_min_days ({float(lapse_days)})",
        ),
        (
            {**policy, "churn_gap_multiplier": lapse_gaps},
            "body.churn_gap_multiplier",
            f"churn_gap_multiplier ({float(lapse_gaps)}) must exceed "
            f"lapse_gap_multiplier ({float(lapse_gaps)})",
        ),
    ]
    for body, field, reason in refused:
        response = await client.put("/v1/lifecycle/policy", json=body, headers=ADMIN)
        assert field_errors(response) == {field}, body
        assert reason in response.json()["errors"][0]["reason"]
    unchanged = await client.get("/v1/lifecycle/policy", headers=READER)
    assert (unchanged.headers["ETag"], unchanged.json()["policy"]) == (current, policy)
