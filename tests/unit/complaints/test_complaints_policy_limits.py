"""SLA durations in a complaints policy are bounded and ordered: positive, under a year, shorter
for more severe complaints, and a first response no later than the resolution. A policy that
breaks a bound is a 422 problem+json naming the field (found by the chaos/fuzz runs: a
`level_3_after` of years was accepted). JSON `true` is neither a duration nor a tier factor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from support import auth

from services.complaints.config import ComplaintsSettings
from services.complaints.domain import MAX_SLA_DURATION, ComplaintPolicy, Severity, SlaPolicy, Tier
from services.complaints.main import create_app

DEFAULT_SLA: dict[str, Any] = SlaPolicy().model_dump(mode="json")


def with_sla(**changes: Any) -> dict[str, Any]:
    return {"sla": {**DEFAULT_SLA, **changes}}


def targets(**changes: str) -> dict[str, str]:
    return {**DEFAULT_SLA["resolution"], **changes}


def responses(**changes: str) -> dict[str, str]:
    return {**DEFAULT_SLA["first_response"], **changes}


BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (policy, field, words of the reason)
    "level 3 after a year and more": (with_sla(level_3_after="P400D"), "sla.level_3_after", "365"),
    "level 3 after exactly a year": (with_sla(level_3_after="P365D"), "sla.level_3_after", "365"),
    "level 3 after centuries": (
        with_sla(level_3_after="P999999D"),
        "sla.level_3_after",
        "365",
    ),
    "level 3 at once": (with_sla(level_3_after="PT0S"), "sla.level_3_after", "greater than 0"),
    "response cap of years": (
        with_sla(first_response_cap="P800D"),
        "sla.first_response_cap",
        "365",
    ),
    "resolution of years": (
        with_sla(resolution=targets(low="P3650D")),
        "sla.resolution.low",
        "365",
    ),
    "first response of years": (
        with_sla(first_response=responses(low="P366D"), resolution=targets(low="P366D")),
        "sla.first_response.low",
        "365",
    ),
    "negative resolution": (
        with_sla(resolution=targets(critical="-PT1H")),
        "sla.resolution.critical",
        "greater than 0",
    ),
    "critical slower than high": (
        with_sla(resolution=targets(critical="P4D")),
        "sla.resolution",
        "critical (P4D) must not be longer than high (P3D)",
    ),
    "medium answered after low": (
        with_sla(first_response=responses(medium="PT30H")),
        "sla.first_response",
        "medium (P1DT6H) must not be longer than low (P1D)",
    ),
    "resolved before the first response is due": (
        with_sla(
            first_response=responses(critical="PT30H", high="PT30H", medium="PT30H", low="PT30H")
        ),
        "sla.resolution",
        "critical (P1D) must not be shorter than its first-response target (P1DT6H)",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_absurd_or_unordered_durations_are_refused_naming_the_field(name: str) -> None:
    policy, field, reason = BAD[name]
    with pytest.raises(ValidationError) as refused:
        ComplaintPolicy.model_validate(policy)
    errors = {".".join(map(str, e["loc"])): e["msg"] for e in refused.value.errors()}
    assert field in errors, errors
    assert reason in errors[field]


def test_the_largest_sensible_policy_is_accepted() -> None:
    just_under = MAX_SLA_DURATION - timedelta(seconds=1)
    longest = {s: just_under for s in Severity}
    policy = SlaPolicy(
        first_response=longest,
        resolution=longest,
        first_response_cap=just_under,
        level_3_after=just_under,
    )
    assert policy.level_3_after == just_under
    assert SlaPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_equal_targets_across_severities_are_allowed() -> None:
    flat = SlaPolicy(
        first_response={s: timedelta(hours=8) for s in Severity},
        resolution={s: timedelta(hours=8) for s in Severity},
    )
    assert set(flat.resolution.values()) == {timedelta(hours=8)}


async def test_the_api_answers_422_naming_the_field() -> None:
    app = create_app(settings=ComplaintsSettings(crm_env="test"), configure_logs=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.put(
            "/v1/complaints/policy",
            json=with_sla(level_3_after="P400D"),
            headers=auth("complaints:write", "complaints:read"),
        )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["errors"] == [
        {"field": "body.sla.level_3_after", "reason": "Input should be less than 365 days"}
    ]


BOOLEANS: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (policy, field, reason); lax mode read JSON true as 1 (a second, a factor of 1) and
    # false as 0
    "level 3 after true": (
        with_sla(level_3_after=True),
        "sla.level_3_after",
        "Input should be a valid timedelta",
    ),
    "a response cap of true": (
        with_sla(first_response_cap=True),
        "sla.first_response_cap",
        "Input should be a valid timedelta",
    ),
    "a first response of false": (
        with_sla(first_response={**DEFAULT_SLA["first_response"], "critical": False}),
        "sla.first_response.critical",
        "Input should be a valid timedelta",
    ),
    "a tier factor of true": (
        with_sla(tier_factors={"key": True}),
        "sla.tier_factors.key",
        "Input should be a valid number",
    ),
}


@pytest.mark.parametrize("name", sorted(BOOLEANS))
async def test_a_boolean_is_neither_a_duration_nor_a_factor(name: str) -> None:
    policy, field, reason = BOOLEANS[name]
    with pytest.raises(ValidationError) as refused:
        ComplaintPolicy.model_validate(policy)
    assert [(".".join(map(str, e["loc"])), e["msg"]) for e in refused.value.errors()] == [
        (field, reason)
    ]
    app = create_app(settings=ComplaintsSettings(crm_env="test"), configure_logs=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.put(
            "/v1/complaints/policy",
            json=policy,
            headers=auth("complaints:write", "complaints:read"),
        )
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": f"body.{field}", "reason": reason}]
    # A number is still a duration in seconds, and a whole number a factor.
    numbers = ComplaintPolicy.model_validate(with_sla(level_3_after=7200, tier_factors={"key": 1}))
    assert (numbers.sla.level_3_after, numbers.sla.tier_factors) == (
        timedelta(hours=2),
        {Tier.key: 1.0},
    )
