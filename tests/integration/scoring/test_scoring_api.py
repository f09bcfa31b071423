"""The scoring API: pyramid, Pareto, the model policy (validated, ETag), recompute requests, auth."""

from __future__ import annotations

import re
import uuid

import pytest
from integration.scoring.conftest import ADMIN, READER, Scoring
from support import auth

pytestmark = pytest.mark.integration


async def test_pyramid_adds_up_and_follows_the_cutoffs(scoring: Scoring) -> None:
    response = await scoring.client.get("/v1/value/pyramid", headers=READER)
    assert response.status_code == 200, response.text
    pyramid = response.json()
    tiers = {t["tier"]: t for t in pyramid["tiers"]}
    assert list(tiers) == ["key", "major", "ordinary", "small"]
    purchasers = pyramid["customers_with_purchase"]
    assert sum(t["customers"] for t in tiers.values()) == purchasers >= 250
    assert sum(float(t["revenue"]) for t in tiers.values()) == pytest.approx(
        float(pyramid["revenue"])
    )
    # Scored at the last recompute by rank; later events may move a few customers.
    assert tiers["key"]["share_of_customers"] == pytest.approx(0.05, abs=0.03)
    assert tiers["key"]["share_of_customers"] + tiers["major"][
        "share_of_customers"
    ] == pytest.approx(0.20, abs=0.04)
    scores = [tiers[t]["average_score"] for t in ("key", "major", "ordinary", "small")]
    assert scores == sorted(scores, reverse=True)
    # Money as every service writes it: USD's two places, not the columns' four.
    amounts = [pyramid["revenue"], *(t["revenue"] for t in tiers.values())]
    amounts += [t["average_clv"] for t in tiers.values() if t["average_clv"] is not None]
    assert all(re.fullmatch(r"[0-9]+\.[0-9]{2}", amount) for amount in amounts), amounts


async def test_pareto_curve_and_top_fifth_share(scoring: Scoring) -> None:
    pareto = (await scoring.client.get("/v1/value/pareto?points=100", headers=READER)).json()
    shares = [point["revenue_share"] for point in pareto["points"]]
    assert len(shares) == 100 and shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    # Revenue is concentrated: the top fifth holds more than a fifth.
    assert 0.2 < pareto["top_20_percent_revenue_share"] <= 1.0
    # One curve: the headline is its point at 20% (they differed by a rounded customer).
    assert pareto["top_20_percent_revenue_share"] == pytest.approx(shares[19], rel=1e-12)
    rows = await scoring.sql(
        "SELECT sum(net_revenue), count(*) FROM customer_values WHERE purchase_days > 0"
    )
    assert float(pareto["revenue"]) == pytest.approx(float(rows[0][0]))
    assert re.fullmatch(r"[0-9]+\.[0-9]{2}", pareto["revenue"])
    assert pareto["customers"] == rows[0][1]
    # Every point against the Lorenz curve computed here over every customer, best first.
    revenues = [
        max(float(r[0]), 0.0)
        for r in await scoring.sql(
            "SELECT net_revenue FROM customer_values WHERE purchase_days > 0 "
            "ORDER BY net_revenue DESC, customer_id"
        )
    ]
    total, n = sum(revenues), len(revenues)
    for k, share in enumerate(shares, start=1):
        position = k * n / 100
        whole = int(position)
        held = sum(revenues[:whole]) + (position - whole) * (revenues[whole] if whole < n else 0)
        assert share == pytest.approx(held / total, rel=1e-9), k


async def test_value_of_an_unknown_customer_is_a_404_problem(scoring: Scoring) -> None:
    response = await scoring.client.get(f"/v1/customers/{uuid.uuid4()}/value", headers=READER)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_scopes_are_enforced(scoring: Scoring) -> None:
    assert (await scoring.client.get("/v1/value/model")).status_code == 401
    assert (
        await scoring.client.get("/v1/value/model", headers=auth("customers:read"))
    ).status_code == 403
    assert (
        await scoring.client.post("/v1/value/recompute", json={}, headers=READER)
    ).status_code == 403
    put = await scoring.client.put("/v1/value/model", json={}, headers=READER)
    assert put.status_code == 403


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_recompute_as_of_no_utc_datetime_is_a_422_and_queues_nothing(
    scoring: Scoring, as_of: str
) -> None:
    # Valid RFC 3339, but outside the calendar in UTC: the driver overflowed (a 500).
    before = await scoring.sql("SELECT count(*) FROM recompute_runs")
    response = await scoring.client.post(
        "/v1/value/recompute", json={"as_of": as_of}, headers=ADMIN
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["body.as_of"]
    assert await scoring.sql("SELECT count(*) FROM recompute_runs") == before


async def test_invalid_policy_is_refused_and_nothing_changes(scoring: Scoring) -> None:
    before = await scoring.client.get("/v1/value/model", headers=READER)
    bad_weights = {
        "weights": {
            "current_contribution": 0.5,
            "future_contribution": 0.5,
            "credit": 0.1,
            "loyalty": 0.2,
            "growth_potential": 0.1,
        }
    }
    response = await scoring.client.put("/v1/value/model", json=bad_weights, headers=ADMIN)
    assert response.status_code == 422
    problem = response.json()
    assert any("sum to 1" in error["reason"] for error in problem["errors"])
    unordered = {"tier_cutoffs": {"key": 0.3, "major": 0.2, "ordinary": 0.5}}
    response = await scoring.client.put("/v1/value/model", json=unordered, headers=ADMIN)
    assert response.status_code == 422 and "ordered" in response.text
    after = await scoring.client.get("/v1/value/model", headers=READER)
    assert after.json()["policy"] == before.json()["policy"]
    assert after.headers["ETag"] == before.headers["ETag"]


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        # JSON true and false were read as 1 and 0
        ({"clv": {"margin": True}}, "body.clv.margin", "Input should be a valid number"),
        (
            {"percentile_resolution": True},
            "body.percentile_resolution",
            "Input should be a valid integer",
        ),
        (
            {"loyalty": {"behavioural_weights": {"referrals": False}}},
            "body.loyalty.behavioural_weights.referrals",
            "Input should be a valid number",
        ),
        # the whole cut-offs were named, not the one out of order
        (
            {"tier_cutoffs": {"key": 0.3, "major": 0.2, "ordinary": 0.5}},
            "body.tier_cutoffs.major",
            "Value error, tier cut-offs must be ordered: key < major < ordinary",
        ),
        (
            {"tier_cutoffs": {"ordinary": 0.15}},
            "body.tier_cutoffs.ordinary",
            "Value error, tier cut-offs must be ordered: key < major < ordinary",
        ),
    ],
)
async def test_a_refused_policy_names_the_field_and_changes_nothing(
    scoring: Scoring, body: dict[str, object], field: str, reason: str
) -> None:
    before = await scoring.client.get("/v1/value/model", headers=READER)
    response = await scoring.client.put("/v1/value/model", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"] == [{"field": field, "reason": reason}]
    after = await scoring.client.get("/v1/value/model", headers=READER)
    assert after.json()["policy"] == before.json()["policy"]
    assert after.headers["ETag"] == before.headers["ETag"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"loyalty": {"tenure_saturation_days": Infinity}}',
        b'{"growth": {"category_saturation": 1e999}}',
        b'{"loyalty": {"referral_saturation": NaN}}',
    ],
)
async def test_a_non_finite_policy_value_is_a_422_and_nothing_changes(
    scoring: Scoring, body: bytes
) -> None:
    # JSON parsers in front of FastAPI accept Infinity, NaN and overflowing numbers: a bound
    # without an upper limit let inf through to the JSONB column (a 500).
    before = await scoring.client.get("/v1/value/model", headers=READER)
    response = await scoring.client.put(
        "/v1/value/model",
        content=body,
        headers=ADMIN | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"].startswith("body.")
    after = await scoring.client.get("/v1/value/model", headers=READER)
    assert after.status_code == 200
    assert after.json()["policy"] == before.json()["policy"]
    assert after.headers["ETag"] == before.headers["ETag"]


async def test_a_new_policy_needs_the_current_etag_and_rescores_everyone(scoring: Scoring) -> None:
    read = await scoring.client.get("/v1/value/model", headers=READER)
    policy = read.json()["policy"]
    policy["weights"] = {
        "current_contribution": 0.4,
        "future_contribution": 0.2,
        "credit": 0.1,
        "loyalty": 0.2,
        "growth_potential": 0.1,
    }
    stale = await scoring.client.put(
        "/v1/value/model", json=policy, headers=ADMIN | {"If-Match": '"policy-999"'}
    )
    assert stale.status_code == 412

    response = await scoring.client.put(
        "/v1/value/model", json=policy, headers=ADMIN | {"If-Match": read.headers["ETag"]}
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["policy"]["weights"]["current_contribution"] == 0.4
    assert response.headers["ETag"] != read.headers["ETag"]
    assert updated["recompute"]["trigger"] == "policy"
    run = await scoring.run_finished(f"/v1/value/recompute/{updated['recompute']['id']}")
    rows = await scoring.sql(
        "SELECT policy -> 'weights' ->> 'current_contribution' FROM model_versions WHERE version = :v",
        v=run["model_version"],
    )
    assert rows[0][0] == "0.4"
    value = await scoring.value(scoring.population[0])
    assert value is not None and value["model_version"] == run["model_version"]
    dims = value["dimensions"]
    expected = (
        0.4 * dims["current_contribution"]
        + 0.2 * dims["future_contribution"]
        + 0.1 * dims["credit"]
        + 0.2 * dims["loyalty"]
        + 0.1 * dims["growth_potential"]
    )
    assert value["score"] == pytest.approx(expected)

    # A tag this API never issued matches nothing (RFC 9110): 412 with what to send.
    for never_issued in ('"7"', '"policy-\u00b2"'.encode("latin-1")):
        refused = await scoring.client.put(
            "/v1/value/model", json={}, headers=ADMIN | {"If-Match": never_issued}
        )
        assert refused.status_code == 412, refused.text
        assert '"policy-1"' in refused.json()["detail"]
    # Back to the defaults for the other tests, whatever the version is now (`*`).
    restore = await scoring.client.put(
        "/v1/value/model", json={}, headers=ADMIN | {"If-Match": "*"}
    )
    assert restore.status_code == 200, restore.text
    await scoring.run_finished(f"/v1/value/recompute/{restore.json()['recompute']['id']}")


async def test_recompute_requests_are_idempotent_with_a_key(scoring: Scoring) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"as_of": "2025-06-30T12:00:00Z"}
    first = await scoring.client.post("/v1/value/recompute", json=body, headers=ADMIN | key)
    again = await scoring.client.post("/v1/value/recompute", json=body, headers=ADMIN | key)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert first.headers["Location"] == f"/v1/value/recompute/{first.json()['id']}"
    await scoring.run_finished(first.headers["Location"])
    missing = await scoring.client.get(f"/v1/value/recompute/{uuid.uuid4()}", headers=READER)
    assert missing.status_code == 404
