"""Loyalty: the behavioural and attitudinal axes, the index and both typologies at the cut."""

from __future__ import annotations

import numpy as np
import pytest

from services.scoring.domain.loyalty import (
    DickBasuType,
    JonesSasserType,
    attitudinal_loyalty,
    behavioural_loyalty,
    dick_basu_type,
    jones_sasser_type,
    loyalty,
    satisfaction_score,
)
from services.scoring.domain.policy import LoyaltySettings

SETTINGS = LoyaltySettings()


def test_satisfaction_maps_csat_one_to_zero_and_five_to_hundred_unknown_fifty() -> None:
    satisfaction = satisfaction_score(csat_sum=[1, 5, 3, 9, 0], csat_count=[1, 1, 1, 2, 0])
    assert satisfaction.tolist() == [0.0, 100.0, 50.0, 87.5, 50.0]


def test_open_complaints_lower_attitude_and_it_stays_within_bounds() -> None:
    attitude = attitudinal_loyalty(
        satisfaction=[100.0, 100.0, 50.0, 5.0], open_complaints=[0, 2, 1, 1], settings=SETTINGS
    )
    assert attitude.tolist() == [100.0, 80.0, 40.0, 0.0]


def test_behavioural_loyalty_components_and_their_weights() -> None:
    behaviour = behavioural_loyalty(
        purchase_days=[1, 11, 0, 5],
        frequency_percentile=[0.0, 100.0, 0.0, 50.0],
        tenure_days=[0, 2000, 0, 365],
        categories=[1, 9, 0, 2],
        referrals=[0, 4, 3, 0],
        settings=SETTINGS,
    )
    assert behaviour[0] == pytest.approx(100 * 0.10 * 1 / 5)  # one-time buyer: breadth only
    assert behaviour[1] == pytest.approx(100 * (0.30 * 10 / 11 + 0.30 + 0.20 + 0.10 + 0.10))
    assert behaviour[2] == pytest.approx(100 * 0.10)  # never bought, referred three people
    expected = 0.30 * 4 / 5 + 0.30 * 0.5 + 0.20 * 365 / 730 + 0.10 * 2 / 5
    assert behaviour[3] == pytest.approx(100 * expected)


def test_index_weighs_behaviour_six_tenths() -> None:
    result = loyalty(
        purchase_days=[6],
        frequency_percentile=[80.0],
        tenure_days=[400],
        categories=[3],
        referrals=[1],
        csat_sum=[4],
        csat_count=[1],
        open_complaints=[1],
        settings=SETTINGS,
    )
    assert result.satisfaction[0] == 75.0
    assert result.attitudinal[0] == 65.0
    assert result.index[0] == pytest.approx(0.6 * result.behavioural[0] + 0.4 * 65.0)


@pytest.mark.parametrize(
    ("attitude", "behaviour", "expected"),
    [
        (50.0, 50.0, DickBasuType.TRUE),
        (50.0, 49.999, DickBasuType.LATENT),
        (49.999, 50.0, DickBasuType.SPURIOUS),
        (49.999, 49.999, DickBasuType.NONE),
        (100.0, 0.0, DickBasuType.LATENT),
        (0.0, 100.0, DickBasuType.SPURIOUS),
    ],
)
def test_dick_basu_types_on_the_axes(
    attitude: float, behaviour: float, expected: DickBasuType
) -> None:
    assert dick_basu_type(attitudinal=[attitude], behavioural=[behaviour], cut=50.0)[0] is expected


@pytest.mark.parametrize(
    ("satisfaction", "behaviour", "expected"),
    [
        (50.0, 50.0, JonesSasserType.APOSTLE),
        (50.0, 49.999, JonesSasserType.MERCENARY),
        (49.999, 50.0, JonesSasserType.HOSTAGE),
        (49.999, 49.999, JonesSasserType.DEFECTOR),
    ],
)
def test_jones_sasser_types_on_the_axes(
    satisfaction: float, behaviour: float, expected: JonesSasserType
) -> None:
    assert (
        jones_sasser_type(satisfaction=[satisfaction], behavioural=[behaviour], cut=50.0)[0]
        is expected
    )


def test_an_open_complaint_can_turn_a_true_loyal_customer_spurious_but_not_an_apostle_into_a_hostage() -> (
    None
):
    common = {
        "purchase_days": [20],
        "frequency_percentile": [95.0],
        "tenure_days": [900],
        "categories": [5],
        "referrals": [2],
        "csat_sum": [3],
        "csat_count": [1],
        "settings": SETTINGS,
    }
    calm = loyalty(**common, open_complaints=[0])  # type: ignore[arg-type]
    upset = loyalty(**common, open_complaints=[1])  # type: ignore[arg-type]
    assert (calm.dick_basu[0], upset.dick_basu[0]) == (DickBasuType.TRUE, DickBasuType.SPURIOUS)
    # Satisfaction is the CSAT itself: an open complaint does not change it.
    assert calm.jones_sasser[0] is upset.jones_sasser[0] is JonesSasserType.APOSTLE
    assert np.all(upset.index < calm.index)


def test_a_score_at_the_cut_by_its_definition_is_high_despite_float_rounding() -> None:
    # Behaviour 100 * (0.30 * 1/2 + 0.30 * 0.5 + 0.20 * 511/730 + 0.10 * 3/5) = 50 exactly, which
    # floats make 49.99999999999999; attitude (CSAT 23/5 -> 90) - 4 open * 10 = 50 likewise.
    result = loyalty(
        purchase_days=[2, 2],
        frequency_percentile=[50.0, 50.0],
        tenure_days=[511, 511],
        categories=[3, 3],
        referrals=[0, 0],
        csat_sum=[0, 23],
        csat_count=[0, 5],
        open_complaints=[0, 4],
        settings=SETTINGS,
    )
    assert result.behavioural == pytest.approx([50.0, 50.0], abs=1e-9)
    assert result.attitudinal == pytest.approx([50.0, 50.0], abs=1e-9)
    assert result.dick_basu.tolist() == [DickBasuType.TRUE, DickBasuType.TRUE]
    assert result.jones_sasser.tolist() == [JonesSasserType.APOSTLE, JonesSasserType.APOSTLE]
