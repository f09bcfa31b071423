"""Loyalty: behavioural and attitudinal scores, the index, and the two typologies.

Behavioural (0-100) is a weighted sum of five components scaled to [0, 1]:
- repeat rate: the share of the customer's purchase days that were repeat purchases,
  (days - 1) / days, i.e. 0 for a one-time buyer and 0.9 at ten purchase days;
- frequency: the customer's percentile of distinct purchase days among purchasers;
- tenure: days since the first purchase over `tenure_saturation_days` (two years), capped;
- category breadth: distinct categories bought over `category_saturation` (5), capped;
- referrals: customers referred over `referral_saturation` (3), capped.
Default sub-weights 0.30, 0.30, 0.20, 0.10, 0.10: repeat behaviour dominates, as in the
definition of behavioural loyalty as repeat patronage (Dick & Basu 1994).

Attitudinal (0-100): the mean CSAT of closed complaints mapped 1 -> 0, 5 -> 100 (50 when
unknown), less `open_complaint_penalty` (10) per open complaint, clamped to [0, 100].
Satisfaction, the Jones & Sasser axis, is the same CSAT mapping without the penalty.
Types cut each axis at `type_cut` (50); a score exactly at the cut counts as high.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike

from services.scoring.domain._arrays import (
    FloatArray,
    ObjectArray,
    as_float_array,
    clip,
    same_length,
)
from services.scoring.domain.policy import LoyaltySettings

UNKNOWN_SATISFACTION = 50.0
# The axes are float sums: a score at the cut by its definition (e.g. 0.30 * 1/2 + 0.30 * 0.5 +
# 0.20 * 511/730 + 0.10 * 3/5 = 0.5) may come out a hair below it, and must still count as high.
_CUT_EPSILON = 1e-9


class DickBasuType(StrEnum):
    """Relative attitude x repeat patronage (Dick & Basu 1994)."""

    TRUE = "true"
    LATENT = "latent"
    SPURIOUS = "spurious"
    NONE = "none"


class JonesSasserType(StrEnum):
    """Satisfaction x loyalty (Jones & Sasser 1995)."""

    APOSTLE = "apostle"
    MERCENARY = "mercenary"
    HOSTAGE = "hostage"
    DEFECTOR = "defector"


@dataclass(frozen=True, slots=True)
class Loyalty:
    behavioural: FloatArray
    satisfaction: FloatArray
    attitudinal: FloatArray
    index: FloatArray
    dick_basu: ObjectArray
    jones_sasser: ObjectArray


def behavioural_loyalty(
    *,
    purchase_days: ArrayLike,
    frequency_percentile: ArrayLike,
    tenure_days: ArrayLike,
    categories: ArrayLike,
    referrals: ArrayLike,
    settings: LoyaltySettings,
) -> FloatArray:
    """Behavioural loyalty 0-100; `frequency_percentile` is 0-100 among purchasers."""
    days = as_float_array(purchase_days, name="purchase_days")
    percentile = as_float_array(frequency_percentile, name="frequency_percentile")
    tenure = as_float_array(tenure_days, name="tenure_days")
    breadth = as_float_array(categories, name="categories")
    referred = as_float_array(referrals, name="referrals")
    same_length(days=days, percentile=percentile, tenure=tenure, breadth=breadth, referred=referred)
    weights = settings.behavioural_weights
    repeat_rate = np.where(days > 0, (days - 1) / np.maximum(days, 1), 0.0)
    bought = days > 0
    score = (
        weights.repeat_rate * repeat_rate
        + weights.frequency * np.where(bought, clip(percentile / 100, 0, 1), 0.0)
        + weights.tenure
        * np.where(bought, clip(tenure / settings.tenure_saturation_days, 0, 1), 0.0)
        + weights.category_breadth * clip(breadth / settings.category_saturation, 0, 1)
        + weights.referrals * clip(referred / settings.referral_saturation, 0, 1)
    )
    return np.asarray(100 * score, dtype=np.float64)


def satisfaction_score(*, csat_sum: ArrayLike, csat_count: ArrayLike) -> FloatArray:
    """Mean CSAT (1-5) of closed complaints mapped to 0-100; 50 when there is none."""
    total = as_float_array(csat_sum, name="csat_sum")
    count = as_float_array(csat_count, name="csat_count")
    same_length(total=total, count=count)
    mean = total / np.maximum(count, 1)
    return np.where(count > 0, clip((mean - 1) * 25, 0, 100), UNKNOWN_SATISFACTION)


def attitudinal_loyalty(
    *, satisfaction: ArrayLike, open_complaints: ArrayLike, settings: LoyaltySettings
) -> FloatArray:
    satisfied = as_float_array(satisfaction, name="satisfaction")
    open_count = as_float_array(open_complaints, name="open_complaints")
    same_length(satisfied=satisfied, open_count=open_count)
    return clip(satisfied - settings.open_complaint_penalty * open_count, 0, 100)


def dick_basu_type(*, attitudinal: ArrayLike, behavioural: ArrayLike, cut: float) -> ObjectArray:
    attitude_high = as_float_array(attitudinal, name="attitudinal") >= cut - _CUT_EPSILON
    behaviour_high = as_float_array(behavioural, name="behavioural") >= cut - _CUT_EPSILON
    table = np.array(
        [[DickBasuType.NONE, DickBasuType.SPURIOUS], [DickBasuType.LATENT, DickBasuType.TRUE]],
        dtype=object,
    )
    return np.asarray(table[attitude_high.astype(int), behaviour_high.astype(int)], dtype=object)


def jones_sasser_type(
    *, satisfaction: ArrayLike, behavioural: ArrayLike, cut: float
) -> ObjectArray:
    satisfied = as_float_array(satisfaction, name="satisfaction") >= cut - _CUT_EPSILON
    loyal = as_float_array(behavioural, name="behavioural") >= cut - _CUT_EPSILON
    table = np.array(
        [
            [JonesSasserType.DEFECTOR, JonesSasserType.HOSTAGE],
            [JonesSasserType.MERCENARY, JonesSasserType.APOSTLE],
        ],
        dtype=object,
    )
    return np.asarray(table[satisfied.astype(int), loyal.astype(int)], dtype=object)


def loyalty(
    *,
    purchase_days: ArrayLike,
    frequency_percentile: ArrayLike,
    tenure_days: ArrayLike,
    categories: ArrayLike,
    referrals: ArrayLike,
    csat_sum: ArrayLike,
    csat_count: ArrayLike,
    open_complaints: ArrayLike,
    settings: LoyaltySettings,
) -> Loyalty:
    """Both loyalty axes, the index = share * behavioural + (1 - share) * attitudinal, types."""
    behavioural = behavioural_loyalty(
        purchase_days=purchase_days,
        frequency_percentile=frequency_percentile,
        tenure_days=tenure_days,
        categories=categories,
        referrals=referrals,
        settings=settings,
    )
    satisfaction = satisfaction_score(csat_sum=csat_sum, csat_count=csat_count)
    attitudinal = attitudinal_loyalty(
        satisfaction=satisfaction, open_complaints=open_complaints, settings=settings
    )
    share = settings.behavioural_share
    return Loyalty(
        behavioural=behavioural,
        satisfaction=satisfaction,
        attitudinal=attitudinal,
        index=share * behavioural + (1 - share) * attitudinal,
        dick_basu=dick_basu_type(
            attitudinal=attitudinal, behavioural=behavioural, cut=settings.type_cut
        ),
        jones_sasser=jones_sasser_type(
            satisfaction=satisfaction, behavioural=behavioural, cut=settings.type_cut
        ),
    )
