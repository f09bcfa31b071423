"""RFM quintile scores and segments (DOMAIN.md section 3).

Batch: each measure is ranked over the customers with a purchase, ties broken by position
(stable ordinal ranks, so callers pass customers in a stable order such as by id), and the
rank r in [0, n) gets score 1 + floor(5 r / n); recency is reversed (recent = 5).
One customer between recomputes: the four quintile boundaries of the last batch place the
value; a value tied across a boundary gets the upper score there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike

from services.scoring.domain._arrays import (
    FloatArray,
    IntArray,
    ObjectArray,
    as_float_array,
    same_length,
)

QUINTILES = 5


class RfmSegment(StrEnum):
    CHAMPIONS = "champions"
    LOYAL = "loyal"
    POTENTIAL_LOYALIST = "potential_loyalist"
    NEW = "new"
    PROMISING = "promising"
    NEED_ATTENTION = "need_attention"
    ABOUT_TO_SLEEP = "about_to_sleep"
    AT_RISK = "at_risk"
    CANT_LOSE = "cant_lose"
    HIBERNATING = "hibernating"


# DOMAIN.md's grid as (R scores, mean-of-F-and-M scores, segment); it covers all 25 cells once.
SEGMENT_RULES: tuple[tuple[tuple[int, ...], tuple[int, ...], RfmSegment], ...] = (
    ((1, 2), (1, 2), RfmSegment.HIBERNATING),
    ((1, 2), (3, 4), RfmSegment.AT_RISK),
    ((1, 2), (5,), RfmSegment.CANT_LOSE),
    ((3,), (1, 2), RfmSegment.ABOUT_TO_SLEEP),
    ((3,), (3,), RfmSegment.NEED_ATTENTION),
    ((3, 4), (4, 5), RfmSegment.LOYAL),
    ((4,), (1,), RfmSegment.PROMISING),
    ((5,), (1,), RfmSegment.NEW),
    ((4, 5), (2, 3), RfmSegment.POTENTIAL_LOYALIST),
    ((5,), (4, 5), RfmSegment.CHAMPIONS),
)


def _segment_grid() -> ObjectArray:
    grid = np.full((QUINTILES + 1, QUINTILES + 1), None, dtype=object)
    for recency_scores, frequency_scores, segment in SEGMENT_RULES:
        for r in recency_scores:
            for fm in frequency_scores:
                grid[r, fm] = segment
    return grid


SEGMENT_GRID = _segment_grid()


@dataclass(frozen=True, slots=True)
class RfmScores:
    recency: IntArray
    frequency: IntArray
    monetary: IntArray
    segment: ObjectArray


@dataclass(frozen=True, slots=True)
class RfmBoundaries:
    """Lowest value reaching scores 2..5 (recency: highest number of days), per measure."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]


def quintile_scores(values: ArrayLike, *, higher_is_better: bool = True) -> IntArray:
    """Scores 1-5 by stable ordinal rank: ties go by position, each quintile holds n/5."""
    measure = as_float_array(values, name="values")
    oriented = measure if higher_is_better else -measure
    order = np.argsort(oriented, kind="stable")
    rank = np.empty(len(measure), dtype=np.int64)
    rank[order] = np.arange(len(measure))
    return 1 + (QUINTILES * rank) // max(len(measure), 1)


def _boundaries(values: FloatArray, *, higher_is_better: bool) -> tuple[float, ...]:
    oriented = np.sort(values if higher_is_better else -values, kind="stable")
    n = len(oriented)
    # Rank r scores >= k + 1 exactly when r >= ceil(k n / 5).
    starts = [-(-k * n // QUINTILES) for k in range(1, QUINTILES)]
    sign = 1.0 if higher_is_better else -1.0
    return tuple(sign * float(oriented[start]) if start < n else sign * np.inf for start in starts)


def segment_of(recency: IntArray, frequency: IntArray, monetary: IntArray) -> ObjectArray:
    """Segment from R and the mean of F and M rounded half up."""
    frequency_monetary = (frequency + monetary + 1) // 2
    return np.asarray(SEGMENT_GRID[recency, frequency_monetary], dtype=object)


def rfm_scores(
    recency_days: ArrayLike, frequency: ArrayLike, monetary: ArrayLike
) -> tuple[RfmScores, RfmBoundaries]:
    """Batch RFM over customers with a purchase, and the boundaries for scoring one later."""
    recency = as_float_array(recency_days, name="recency_days")
    purchases = as_float_array(frequency, name="frequency")
    revenue = as_float_array(monetary, name="monetary")
    same_length(recency=recency, frequency=purchases, monetary=revenue)
    r = quintile_scores(recency, higher_is_better=False)
    f = quintile_scores(purchases)
    m = quintile_scores(revenue)
    scores = RfmScores(recency=r, frequency=f, monetary=m, segment=segment_of(r, f, m))
    if len(recency) == 0:
        empty = (np.inf,) * (QUINTILES - 1)
        return scores, RfmBoundaries(
            recency=tuple(-v for v in empty), frequency=empty, monetary=empty
        )
    boundaries = RfmBoundaries(
        recency=_boundaries(recency, higher_is_better=False),
        frequency=_boundaries(purchases, higher_is_better=True),
        monetary=_boundaries(revenue, higher_is_better=True),
    )
    return scores, boundaries


def rfm_scores_against(
    boundaries: RfmBoundaries, recency_days: ArrayLike, frequency: ArrayLike, monetary: ArrayLike
) -> RfmScores:
    """RFM of customers placed against the boundaries of the last batch."""
    recency = as_float_array(recency_days, name="recency_days")
    purchases = as_float_array(frequency, name="frequency")
    revenue = as_float_array(monetary, name="monetary")
    same_length(recency=recency, frequency=purchases, monetary=revenue)
    r = 1 + (recency[:, None] <= np.asarray(boundaries.recency)[None, :]).sum(axis=1)
    f = 1 + (purchases[:, None] >= np.asarray(boundaries.frequency)[None, :]).sum(axis=1)
    m = 1 + (revenue[:, None] >= np.asarray(boundaries.monetary)[None, :]).sum(axis=1)
    r, f, m = (np.asarray(s, dtype=np.int64) for s in (r, f, m))
    return RfmScores(recency=r, frequency=f, monetary=m, segment=segment_of(r, f, m))
