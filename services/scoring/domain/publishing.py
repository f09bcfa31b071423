"""When a new score is published (DOMAIN.md section 3, "When scores move")."""

from __future__ import annotations

from dataclasses import dataclass

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
