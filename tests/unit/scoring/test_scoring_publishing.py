"""Publishing rule: a move of at least one point, or a new tier or loyalty type."""

from __future__ import annotations

import numpy as np
import pytest

from services.scoring.domain.composite import Tier
from services.scoring.domain.loyalty import DickBasuType, JonesSasserType
from services.scoring.domain.publishing import (
    PublishedValue,
    publish_mask,
    should_publish,
    tier_changed,
    tier_changed_mask,
)

BASE = PublishedValue(
    score=63.1,
    tier=Tier.ORDINARY,
    dick_basu=DickBasuType.TRUE,
    jones_sasser=JonesSasserType.APOSTLE,
)


def _with(**changes: object) -> PublishedValue:
    values = {
        "score": BASE.score,
        "tier": BASE.tier,
        "dick_basu": BASE.dick_basu,
        "jones_sasser": BASE.jones_sasser,
    }
    return PublishedValue(**(values | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "publish"),
    [
        (_with(score=64.1), True),  # one point up, though 64.1 - 63.1 < 1 in floats
        (_with(score=62.1), True),
        (_with(score=64.0), False),
        (_with(score=63.1), False),
        (_with(tier=Tier.MAJOR), True),
        (_with(dick_basu=DickBasuType.SPURIOUS), True),
        (_with(jones_sasser=JonesSasserType.HOSTAGE), True),
        (_with(score=None, tier=None), True),
    ],
)
def test_should_publish(current: PublishedValue, publish: bool) -> None:
    assert should_publish(BASE, current) is publish


def test_the_first_score_is_always_published_and_the_threshold_is_configurable() -> None:
    assert should_publish(None, BASE)
    assert not should_publish(BASE, _with(score=65.0), min_score_change=2.0)
    assert should_publish(BASE, _with(score=65.1), min_score_change=2.0)


def test_tier_changed() -> None:
    assert tier_changed(BASE, _with(tier=Tier.KEY))
    assert not tier_changed(BASE, _with(score=80.0))
    assert tier_changed(None, BASE)
    assert not tier_changed(None, _with(score=None, tier=None))


def test_the_vectorised_rule_agrees_with_the_single_one() -> None:
    rng = np.random.default_rng(9)
    tiers = [None, *Tier]
    types_db, types_js = list(DickBasuType), list(JonesSasserType)
    previous, current = [], []
    for _ in range(2000):
        has_previous = rng.random() < 0.8
        base_score = float(rng.uniform(0, 100))
        prior = PublishedValue(
            score=base_score if rng.random() < 0.9 else None,
            tier=tiers[rng.integers(len(tiers))],
            dick_basu=types_db[rng.integers(4)],
            jones_sasser=types_js[rng.integers(4)],
        )
        moved = base_score + float(rng.choice([0.0, 0.5, 0.99, 1.0, 1.5, -1.0, -0.3]))
        now = PublishedValue(
            score=moved if rng.random() < 0.95 else None,
            tier=prior.tier if rng.random() < 0.8 else tiers[rng.integers(len(tiers))],
            dick_basu=prior.dick_basu if rng.random() < 0.9 else types_db[rng.integers(4)],
            jones_sasser=prior.jones_sasser if rng.random() < 0.9 else types_js[rng.integers(4)],
        )
        previous.append(prior if has_previous else None)
        current.append(now)

    def column(values: list[PublishedValue | None], name: str, missing: object) -> list[object]:
        return [missing if v is None else getattr(v, name) for v in values]

    def scores(values: list[PublishedValue | None]) -> np.ndarray:
        return np.array([np.nan if s is None else s for s in column(values, "score", None)])

    mask = publish_mask(
        previously_published=[p is not None for p in previous],
        previous_score=scores(previous),
        previous_tier=column(previous, "tier", None),
        previous_dick_basu=column(previous, "dick_basu", None),
        previous_jones_sasser=column(previous, "jones_sasser", None),
        score=scores(current),
        tier=column(current, "tier", None),
        dick_basu=column(current, "dick_basu", None),
        jones_sasser=column(current, "jones_sasser", None),
    )
    expected = [should_publish(p, c) for p, c in zip(previous, current, strict=True)]
    assert mask.tolist() == expected
    assert 0 < sum(expected) < len(expected)
    tiers_moved = tier_changed_mask(
        previously_published=[p is not None for p in previous],
        previous_tier=column(previous, "tier", None),
        tier=column(current, "tier", None),
    )
    assert tiers_moved.tolist() == [
        tier_changed(p, c) for p, c in zip(previous, current, strict=True)
    ]
