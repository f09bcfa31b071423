"""RFM: quintile scores by ordinal rank, recency reversed, ties by position, the segment grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.scoring.domain.rfm import (
    SEGMENT_RULES,
    RfmSegment,
    quintile_scores,
    rfm_scores,
    rfm_scores_against,
    segment_of,
)


def test_ten_distinct_values_fill_each_quintile_with_two() -> None:
    values = [50, 10, 90, 30, 70, 20, 100, 40, 80, 60]
    assert quintile_scores(values).tolist() == [3, 1, 5, 2, 4, 1, 5, 2, 4, 3]


def test_recency_is_reversed_most_recent_scores_five() -> None:
    days_since_last_purchase = [1, 400, 30, 200, 90]
    assert quintile_scores(days_since_last_purchase, higher_is_better=False).tolist() == [
        5,
        1,
        4,
        2,
        3,
    ]


def test_ties_are_broken_by_position() -> None:
    assert quintile_scores([7, 7, 7, 7, 7]).tolist() == [1, 2, 3, 4, 5]
    # Three tied at the top of six: the earlier ones rank lower.
    assert quintile_scores([1, 9, 2, 9, 9, 3]).tolist() == [1, 3, 1, 4, 5, 2]
    # Reversed measure, ties still in input order: the first of the tied gets the lower score.
    assert quintile_scores([5, 5, 1, 1, 1], higher_is_better=False).tolist() == [1, 2, 3, 4, 5]


def test_uneven_population_sizes() -> None:
    # 7 customers: ranks 0..6 -> 1 + floor(5 r / 7).
    assert quintile_scores(range(7)).tolist() == [1, 1, 2, 3, 3, 4, 5]
    assert quintile_scores([3.0]).tolist() == [1]
    assert quintile_scores([]).tolist() == []


def test_the_segment_grid_covers_all_25_cells_exactly_once() -> None:
    cells = [
        (r, fm) for recency, frequency, _ in SEGMENT_RULES for r in recency for fm in frequency
    ]
    assert sorted(cells) == list(itertools.product(range(1, 6), range(1, 6)))
    assert {segment for _, _, segment in SEGMENT_RULES} == set(RfmSegment)


@pytest.mark.parametrize(
    ("r", "f", "m", "segment"),
    [
        (5, 5, 5, RfmSegment.CHAMPIONS),
        (5, 1, 1, RfmSegment.NEW),
        (4, 1, 1, RfmSegment.PROMISING),
        (4, 2, 3, RfmSegment.POTENTIAL_LOYALIST),  # mean 2.5 rounds half up to 3
        (3, 3, 4, RfmSegment.LOYAL),  # mean 3.5 -> 4
        (3, 3, 3, RfmSegment.NEED_ATTENTION),
        (3, 1, 2, RfmSegment.ABOUT_TO_SLEEP),  # mean 1.5 -> 2
        (2, 5, 5, RfmSegment.CANT_LOSE),
        (1, 4, 3, RfmSegment.AT_RISK),
        (1, 1, 2, RfmSegment.HIBERNATING),
        (2, 2, 3, RfmSegment.AT_RISK),  # mean 2.5 -> 3
    ],
)
def test_segment_from_recency_and_rounded_mean_of_frequency_and_monetary(
    r: int, f: int, m: int, segment: RfmSegment
) -> None:
    assert segment_of(np.array([r]), np.array([f]), np.array([m]))[0] is segment


def test_hand_made_population() -> None:
    recency = [2, 300, 40, 10, 150]
    frequency = [12, 1, 3, 8, 2]
    monetary = [900.0, 20.0, 150.0, 400.0, 60.0]
    scores, _ = rfm_scores(recency, frequency, monetary)
    assert scores.recency.tolist() == [5, 1, 3, 4, 2]
    assert scores.frequency.tolist() == [5, 1, 3, 4, 2]
    assert scores.monetary.tolist() == [5, 1, 3, 4, 2]
    assert scores.segment.tolist() == [
        RfmSegment.CHAMPIONS,
        RfmSegment.HIBERNATING,
        RfmSegment.NEED_ATTENTION,
        RfmSegment.LOYAL,
        RfmSegment.HIBERNATING,
    ]


def test_scoring_against_boundaries_agrees_with_the_batch_for_distinct_values() -> None:
    rng = np.random.default_rng(4)
    recency = rng.permutation(1000).astype(float)
    frequency = rng.permutation(1000).astype(float) + 1
    monetary = rng.uniform(0, 1000, 1000)
    batch, boundaries = rfm_scores(recency, frequency, monetary)
    alone = rfm_scores_against(boundaries, recency, frequency, monetary)
    assert np.array_equal(alone.recency, batch.recency)
    assert np.array_equal(alone.frequency, batch.frequency)
    assert np.array_equal(alone.monetary, batch.monetary)
    assert alone.segment.tolist() == batch.segment.tolist()


def test_a_value_tied_across_a_boundary_gets_the_upper_score_alone() -> None:
    frequency = [1, 1, 1, 1, 1, 1, 2, 3, 4, 5]  # ranks 0-5 hold 1: scores 1, 1, 2, 2, 3, 3
    batch, boundaries = rfm_scores([0] * 10, frequency, [0.0] * 10)
    assert batch.frequency.tolist()[:6] == [1, 1, 2, 2, 3, 3]
    alone = rfm_scores_against(boundaries, [0], [1], [0.0])
    assert alone.frequency.tolist() == [3]
