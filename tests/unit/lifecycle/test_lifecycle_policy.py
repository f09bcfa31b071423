"""LifecyclePolicy: DOMAIN.md defaults, validation with clear messages, immutability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.lifecycle.domain import LifecyclePolicy, Severity, Stage, due_times_for


def test_defaults_are_domain_md() -> None:
    policy = LifecyclePolicy()
    assert policy.model_dump() == {
        "default_gap_days": 60,
        "lapse_min_days": 60,
        "lapse_gap_multiplier": 2,
        "churn_min_days": 180,
        "churn_gap_multiplier": 4,
        "mature_min_purchase_days": 3,
        "mature_min_tenure_days": 90,
        "complaint_severities": {Severity.HIGH, Severity.CRITICAL},
        "recovery_min_satisfaction": 4,
        "model_churn_p_alive": 0.1,
    }


@pytest.mark.parametrize(
    ("gap", "lapse", "churn"),
    [(10, 60, 180), (30, 60, 180), (45, 90, 180), (60, 120, 240), (12.5, 60, 180)],
)
def test_thresholds_are_max_of_minimum_and_multiple_of_g(gap, lapse, churn) -> None:
    policy = LifecyclePolicy()
    assert policy.lapse_after(gap) == timedelta(days=lapse)
    assert policy.churn_after(gap) == timedelta(days=churn)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"churn_min_days": 60}, "churn_min_days (60.0) must exceed lapse_min_days (60.0)"),
        ({"lapse_min_days": 200}, "must exceed lapse_min_days (200.0)"),
        ({"churn_gap_multiplier": 2}, "churn_gap_multiplier (2.0) must exceed"),
        ({"lapse_gap_multiplier": 5}, "must exceed lapse_gap_multiplier (5.0)"),
        ({"lapse_gap_multiplier": 0}, "greater than 0"),
        ({"churn_gap_multiplier": -1}, "greater than 0"),
        ({"default_gap_days": 0}, "greater than 0"),
        ({"lapse_min_days": -5}, "greater than 0"),
        ({"model_churn_p_alive": 0}, "greater than 0"),
        ({"model_churn_p_alive": 1}, "less than 1"),
        ({"recovery_min_satisfaction": 6}, "less than or equal to 5"),
        ({"recovery_min_satisfaction": 0}, "greater than or equal to 1"),
        ({"mature_min_purchase_days": 0}, "greater than or equal to 1"),
        ({"mature_min_tenure_days": -1}, "greater than or equal to 0"),
        ({"complaint_severities": ["urgent"]}, "'low', 'medium', 'high' or 'critical'"),
        ({"lapse_days": 30}, "Extra inputs are not permitted"),
        # found by the API fuzzer: a 500 from a timedelta overflow before these bounds
        ({"churn_min_days": 9.2e307}, "less than or equal to 36500"),
        ({"lapse_min_days": 1.6e240, "churn_min_days": 2e240}, "less than or equal to 36500"),
        ({"churn_gap_multiplier": 7e16}, "less than or equal to 1000"),
        ({"mature_min_tenure_days": 10**9}, "less than or equal to 36500"),
    ],
)
def test_invalid_policies_are_rejected_with_a_clear_message(changes, message) -> None:
    with pytest.raises(ValidationError) as error:
        LifecyclePolicy(**changes)
    assert message in str(error.value)


def test_a_policy_is_immutable() -> None:
    policy = LifecyclePolicy()
    with pytest.raises(ValidationError):
        policy.lapse_min_days = 10  # type: ignore[misc]


def test_a_policy_round_trips_through_json() -> None:
    policy = LifecyclePolicy(lapse_min_days=30, complaint_severities={"critical"})
    assert LifecyclePolicy.model_validate_json(policy.model_dump_json()) == policy


def test_severities_may_be_empty_so_complaints_never_decline() -> None:
    assert LifecyclePolicy(complaint_severities=[]).complaint_severities == frozenset()


def test_rules_as_far_out_as_the_policy_allows_are_never_due_within_the_calendar() -> None:
    """The widest policy over the widest gap: idle times are capped and a due time past the
    calendar's end is its end (a rule never fires), not an overflow."""
    policy = LifecyclePolicy(
        default_gap_days=36_500,
        lapse_min_days=36_499,
        churn_min_days=36_500,
        lapse_gap_multiplier=999,
        churn_gap_multiplier=1_000,
    )
    at = datetime(9000, 1, 1, tzinfo=UTC)
    decline_due, churn_due = due_times_for(
        stage=Stage.GROWTH, since=at, idle_from=at, gap_days=36_500, policy=policy
    )
    end = datetime.max.replace(tzinfo=UTC)
    assert decline_due == churn_due == end
    assert due_times_for(
        stage=Stage.DECLINE, since=at, idle_from=at, gap_days=36_500, policy=policy
    ) == (None, end)
    # an ordinary customer's rules still fall due when they should
    assert due_times_for(
        stage=Stage.GROWTH, since=at, idle_from=at, gap_days=10, policy=LifecyclePolicy()
    ) == (at + timedelta(days=60), at + timedelta(days=180))


#: The policy's numbers (thresholds in days, multipliers, counts, a probability).
NUMBERS = {
    name: field
    for name, field in LifecyclePolicy.model_fields.items()
    if field.annotation in (int, float)
}
NOT_A_NUMBER = {int: "Input should be a valid integer", float: "Input should be a valid number"}


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_a_boolean_is_not_a_number(name: str, flag: bool) -> None:
    # Pydantic's lax mode read JSON `true` as 1 and `false` as 0: `{"default_gap_days": true}`
    # was a policy of one-day gaps.
    field = NUMBERS[name]
    with pytest.raises(ValidationError) as refused:
        LifecyclePolicy.model_validate({name: flag})
    assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [
        ((name,), NOT_A_NUMBER[field.annotation])
    ]
    # A whole number is still a number for a float (the defaults are written `60`, `2`, ...).
    assert getattr(LifecyclePolicy.model_validate({name: field.default}), name) == field.default


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        (
            {"churn_min_days": 60},
            "churn_min_days",
            "Value error, churn_min_days (60.0) must exceed lapse_min_days (60.0)",
        ),
        # the churn threshold is named though the lapse one was sent: it is the one that must
        # exceed the other
        (
            {"lapse_min_days": 200},
            "churn_min_days",
            "Value error, churn_min_days (180.0) must exceed lapse_min_days (200.0)",
        ),
        (
            {"churn_gap_multiplier": 2},
            "churn_gap_multiplier",
            "Value error, churn_gap_multiplier (2.0) must exceed lapse_gap_multiplier (2.0)",
        ),
    ],
)
def test_a_churn_threshold_not_after_its_lapse_threshold_names_the_churn_field(
    changes: dict[str, float], field: str, reason: str
) -> None:
    # A model-wide check had no location: the API's 422 named only `body`.
    with pytest.raises(ValidationError) as refused:
        LifecyclePolicy.model_validate(changes)
    assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [((field,), reason)]


def test_both_churn_thresholds_before_their_lapse_twins_are_both_named() -> None:
    with pytest.raises(ValidationError) as refused:
        LifecyclePolicy(lapse_min_days=200, lapse_gap_multiplier=5)
    assert [e["loc"] for e in refused.value.errors()] == [
        ("churn_min_days",),
        ("churn_gap_multiplier",),
    ]
