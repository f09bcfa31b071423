"""When a new score is published (DOMAIN.md section 3, "When scores move")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from services.scoring.domain._arrays import BoolArray
from services.scoring.domain.composite import Tier
from services.scoring.domain.loyalty import DickBasuType, JonesSasserType

DEFAULT_MIN_SCORE_CHANGE = 1.0
# Scores are floats: 50.3 -> 51.3 must count as one point.
_SCORE_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class PublishedValue:
    """What consumers of `crm.value.scored.v1` last saw; score and tier None before a purchase."""

    score: float | None
    tier: Tier | None
    dick_basu: DickBasuType
    jones_sasser: JonesSasserType


def tier_changed(previous: PublishedValue | None, current: PublishedValue) -> bool:
    previous_tier = previous.tier if previous is not None else None
    return previous_tier != current.tier


def should_publish(
    previous: PublishedValue | None,
    current: PublishedValue,
    *,
    min_score_change: float = DEFAULT_MIN_SCORE_CHANGE,
) -> bool:
    """Publish the first score, a move of at least `min_score_change` points, or a new tier or type."""
    if previous is None:
        return True
    if (previous.score is None) != (current.score is None):
        return True
    if (
        previous.score is not None
        and current.score is not None
        and abs(current.score - previous.score) >= min_score_change - _SCORE_EPSILON
    ):
        return True
    return (
        previous.tier != current.tier
        or previous.dick_basu != current.dick_basu
        or previous.jones_sasser != current.jones_sasser
    )


def publish_mask(
    *,
    previously_published: ArrayLike,
    previous_score: ArrayLike,
    previous_tier: ArrayLike,
    previous_dick_basu: ArrayLike,
    previous_jones_sasser: ArrayLike,
    score: ArrayLike,
    tier: ArrayLike,
    dick_basu: ArrayLike,
    jones_sasser: ArrayLike,
    min_score_change: float = DEFAULT_MIN_SCORE_CHANGE,
) -> BoolArray:
    """`should_publish` for many customers at once; NaN scores and None tiers mean "none"."""
    published = np.asarray(previously_published, dtype=np.bool_)
    before = np.asarray(previous_score, dtype=np.float64)
    after = np.asarray(score, dtype=np.float64)
    scored_before, scored_after = ~np.isnan(before), ~np.isnan(after)
    with np.errstate(invalid="ignore"):
        moved = (
            scored_before
            & scored_after
            & (np.abs(after - before) >= min_score_change - _SCORE_EPSILON)
        )
    changed = (
        _differs(previous_tier, tier)
        | _differs(previous_dick_basu, dick_basu)
        | _differs(previous_jones_sasser, jones_sasser)
    )
    return np.asarray(~published | (scored_before != scored_after) | moved | changed)


def tier_changed_mask(
    *, previously_published: ArrayLike, previous_tier: ArrayLike, tier: ArrayLike
) -> BoolArray:
    """`tier_changed` for many customers: a first published tier counts as a change."""
    published = np.asarray(previously_published, dtype=np.bool_)
    before = np.asarray(previous_tier, dtype=object).copy()
    before[~published] = None
    return _differs(before, tier)


def _differs(before: ArrayLike, after: ArrayLike) -> BoolArray:
    # Object arrays compare element by element with ==, so str and StrEnum values match.
    left = np.asarray(before, dtype=object)
    right = np.asarray(after, dtype=object)
    return np.array(
        [a != b for a, b in zip(left.tolist(), right.tolist(), strict=True)], dtype=np.bool_
    )
