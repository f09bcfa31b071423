"""Composite value: validated weights and cut-offs, percentiles, the weighted score, tiers."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from services.scoring.domain.composite import (
    Dimension,
    Tier,
    TierThresholds,
    composite_score,
    credit_ratio,
    growth_potential,
    percentile_against,
    quantile_breakpoints,
    spend_trend,
    tier_thresholds,
    tiers_against,
)
from services.scoring.domain.policy import (
    CreditSettings,
    DimensionWeights,
    GrowthSettings,
    TierCutoffs,
    ValueModelPolicy,
)


def test_default_policy_matches_domain_defaults() -> None:
    policy = ValueModelPolicy()
    assert policy.weights.model_dump() == {
        "current_contribution": 0.30,
        "future_contribution": 0.30,
        "credit": 0.10,
        "loyalty": 0.20,
        "growth_potential": 0.10,
    }
    assert policy.tier_cutoffs.model_dump() == {"key": 0.05, "major": 0.20, "ordinary": 0.50}


def test_weights_must_sum_to_one() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        DimensionWeights(current_contribution=0.5)
    with pytest.raises(ValidationError):
        DimensionWeights(current_contribution=-0.1, future_contribution=0.7)
    assert DimensionWeights(current_contribution=0.2, future_contribution=0.4).credit == 0.10


def test_tier_cutoffs_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="ordered"):
        TierCutoffs(key=0.25, major=0.20)
    with pytest.raises(ValidationError, match="ordered"):
        TierCutoffs(major=0.5, ordinary=0.5)
    with pytest.raises(ValidationError):
        TierCutoffs(ordinary=1.0)
    with pytest.raises(ValidationError):
        ValueModelPolicy.model_validate({"weights": {"loyalty": 0.2}, "unknown": 1})


@pytest.mark.parametrize(
    "document",
    [
        {"loyalty": {"tenure_saturation_days": float("inf")}},
        {"loyalty": {"category_saturation": float("inf")}},
        {"loyalty": {"referral_saturation": float("inf")}},
        {"growth": {"category_saturation": float("inf")}},
        {"loyalty": {"referral_saturation": float("nan")}},
    ],
)
def test_a_policy_refuses_values_that_are_not_finite(document: dict[str, object]) -> None:
    # The policy is stored as JSONB, which has no inf or NaN: refused here, a 422 at the edge.
    with pytest.raises(ValidationError, match="finite"):
        ValueModelPolicy.model_validate(document)


def _numbers(model: type[BaseModel], at: tuple[str, ...] = ()) -> dict[tuple[str, ...], type]:
    """Where the policy holds a number, nested settings included, and its type."""
    found: dict[tuple[str, ...], type] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found |= _numbers(kind, (*at, name))
        elif kind in (int, float):
            found[(*at, name)] = kind
    return found


NUMBERS = _numbers(ValueModelPolicy)
NOT_A_NUMBER = {int: "Input should be a valid integer", float: "Input should be a valid number"}


def _document(path: tuple[str, ...], value: object) -> dict[str, object]:
    for name in reversed(path):
        value = {name: value}
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("path", sorted(NUMBERS), ids=".".join)
def test_a_boolean_is_not_a_number(path: tuple[str, ...], flag: bool) -> None:
    # Pydantic's lax mode read JSON `true` as 1 and `false` as 0 (`{"clv": {"margin": true}}`
    # was a margin of 100 %).
    with pytest.raises(ValidationError) as refused:
        ValueModelPolicy.model_validate(_document(path, flag))
    assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [
        (path, NOT_A_NUMBER[NUMBERS[path]])
    ]


def test_a_whole_number_is_still_a_number_where_true_is_not() -> None:
    weights: dict[str, object] = {
        "current_contribution": 1,
        "future_contribution": 0,
        "credit": 0,
        "loyalty": 0,
        "growth_potential": 0,
    }
    policy = ValueModelPolicy.model_validate({"weights": weights, "clv": {"horizon_weeks": 26}})
    assert (policy.weights.current_contribution, policy.clv.horizon_weeks) == (1.0, 26.0)
    with pytest.raises(ValidationError) as refused:
        ValueModelPolicy.model_validate({"weights": {**weights, "current_contribution": True}})
    assert [e["loc"] for e in refused.value.errors()] == [("weights", "current_contribution")]


@pytest.mark.parametrize(
    ("cutoffs", "field"),
    [
        ({"key": 0.3}, "major"),  # the default major (0.20) no longer follows key
        ({"key": 0.3, "major": 0.2, "ordinary": 0.5}, "major"),
        ({"major": 0.5, "ordinary": 0.5}, "ordinary"),
        ({"ordinary": 0.1}, "ordinary"),
    ],
)
def test_unordered_tier_cutoffs_name_the_cutoff_out_of_order(
    cutoffs: dict[str, float], field: str
) -> None:
    # A check of the whole cut-offs had the API's 422 name `body.tier_cutoffs` only.
    with pytest.raises(ValidationError) as refused:
        ValueModelPolicy.model_validate({"tier_cutoffs": cutoffs})
    assert [(e["loc"], e["msg"]) for e in refused.value.errors()] == [
        (
            ("tier_cutoffs", field),
            "Value error, tier cut-offs must be ordered: key < major < ordinary",
        )
    ]


def test_percentile_of_a_small_population_is_its_rank_share() -> None:
    population = [40.0, 10.0, 30.0, 20.0, 50.0]
    points = quantile_breakpoints(population, resolution=200)
    assert percentile_against(points, population).tolist() == pytest.approx([75, 0, 50, 25, 100])
    # Between two customers: linear; outside the population: 0 and 100.
    assert percentile_against(points, [15.0, -5.0, 99.0]).tolist() == pytest.approx([12.5, 0, 100])


def test_tied_values_sit_in_the_middle_of_their_run() -> None:
    points = quantile_breakpoints([1.0] * 90 + [0.5] * 10, resolution=100)
    # 10% below, 90% tied: mid-rank percentile 10 + 90 / 2 = 55.
    assert percentile_against(points, [1.0])[0] == pytest.approx(55.0, abs=0.6)
    assert percentile_against(
        quantile_breakpoints([3.0], resolution=100), [3.0, 2.0, 4.0]
    ).tolist() == [
        50.0,
        0.0,
        100.0,
    ]
    assert percentile_against([], [1.0, 2.0]).tolist() == [50.0, 50.0]


def test_breakpoint_percentiles_approximate_the_mid_rank_percentile() -> None:
    rng = np.random.default_rng(12)
    population = np.round(rng.lognormal(3, 1.2, 20_000), 1)
    resolution = 200
    approximate = percentile_against(
        quantile_breakpoints(population, resolution=resolution), population
    )
    ordered = np.sort(population)
    below = np.searchsorted(ordered, population, side="left")
    tied = np.searchsorted(ordered, population, side="right") - below
    mid_rank = 100 * (below + 0.5 * tied) / len(population)
    assert np.max(np.abs(approximate - mid_rank)) < 100 / resolution + 0.1


def test_credit_is_one_minus_refunded_share_less_chargebacks() -> None:
    credit = credit_ratio(
        gross_revenue=[100.0, 100.0, 100.0, 0.0, 100.0],
        refunded_revenue=[0.0, 25.0, 25.0, 0.0, 150.0],
        chargebacks=[0, 0, 1, 0, 0],
        settings=CreditSettings(),
    )
    assert credit.tolist() == [1.0, 0.75, 0.5, 1.0, 0.0]


def test_growth_potential_combines_trend_and_breadth() -> None:
    trend = spend_trend(
        revenue_last_180d=[300.0, 0.0, 100.0, 0.0], revenue_prior_180d=[100.0, 50.0, 100.0, 0.0]
    )
    assert trend.tolist() == [0.5, -1.0, 0.0, 0.0]
    growth = growth_potential(
        revenue_last_180d=[300.0, 0.0],
        revenue_prior_180d=[100.0, 50.0],
        categories=[10, 1],
        settings=GrowthSettings(),
    )
    assert growth.tolist() == pytest.approx([0.6 * 0.75 + 0.4 * 1.0, 0.6 * 0.0 + 0.4 * 0.2])


def test_score_is_the_weighted_sum_of_dimensions() -> None:
    dimensions = {
        Dimension.CURRENT_CONTRIBUTION: np.array([100.0, 0.0]),
        Dimension.FUTURE_CONTRIBUTION: np.array([50.0, 0.0]),
        Dimension.CREDIT: np.array([100.0, 100.0]),
        Dimension.LOYALTY: np.array([25.0, 0.0]),
        Dimension.GROWTH_POTENTIAL: np.array([0.0, 100.0]),
    }
    score = composite_score(dimensions, DimensionWeights())
    assert score.tolist() == pytest.approx([30 + 15 + 10 + 5 + 0, 10 + 10])
    only_credit = DimensionWeights(
        current_contribution=0, future_contribution=0, credit=1, loyalty=0, growth_potential=0
    )
    assert composite_score(dimensions, only_credit).tolist() == [100.0, 100.0]


def _tier_counts(tiers: np.ndarray) -> dict[Tier, int]:
    return {tier: int(np.sum(tiers == tier)) for tier in Tier}


def test_tiers_at_exact_cutoffs() -> None:
    scores = np.random.default_rng(2).permutation(np.linspace(0, 99, 100))
    tiers = tiers_against(tier_thresholds(scores, TierCutoffs()), scores)
    assert _tier_counts(tiers) == {Tier.KEY: 5, Tier.MAJOR: 15, Tier.ORDINARY: 30, Tier.SMALL: 50}
    # Rank 5 is the last key customer, rank 6 the first major one.
    assert tiers[scores == 95.0][0] is Tier.KEY and tiers[scores == 94.0][0] is Tier.MAJOR
    assert tiers[scores == 80.0][0] is Tier.MAJOR and tiers[scores == 79.0][0] is Tier.ORDINARY
    assert tiers[scores == 50.0][0] is Tier.ORDINARY and tiers[scores == 49.0][0] is Tier.SMALL


def test_tiers_of_a_population_of_forty() -> None:
    scores = np.arange(40.0)
    tiers = tiers_against(tier_thresholds(scores, TierCutoffs()), scores)
    assert _tier_counts(tiers) == {Tier.KEY: 2, Tier.MAJOR: 6, Tier.ORDINARY: 12, Tier.SMALL: 20}


def test_customers_tied_with_the_last_of_a_tier_join_it() -> None:
    scores = np.array([90.0, 80.0, 80.0, 80.0] + [10.0] * 16)  # key is the top 1 of 20
    thresholds = tier_thresholds(scores, TierCutoffs())
    assert thresholds.key == 90.0 and thresholds.major == 80.0
    tiers = tiers_against(thresholds, scores)
    assert tiers[:4].tolist() == [Tier.KEY, Tier.MAJOR, Tier.MAJOR, Tier.MAJOR]
    assert set(tiers[4:].tolist()) == {Tier.ORDINARY}  # ten ties at the ordinary cut join it all


def test_tiny_populations_have_no_key_customers() -> None:
    thresholds = tier_thresholds([70.0, 60.0, 50.0], TierCutoffs())
    assert thresholds == TierThresholds(key=None, major=None, ordinary=70.0)
    assert tiers_against(thresholds, [99.0, 70.0, 60.0]).tolist() == [
        Tier.ORDINARY,
        Tier.ORDINARY,
        Tier.SMALL,
    ]
