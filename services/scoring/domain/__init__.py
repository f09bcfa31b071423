"""Pure scoring maths: no I/O, no wall clock, vectorised over arrays of customers.

- `calibration`: (x, t_x, T, m_x) from purchases, in days or weeks.
- `bgnbd`, `gamma_gamma`: the probabilistic models, fitted by maximum likelihood.
- `clv`: discounted customer lifetime value from both models.
- `rfm`, `loyalty`, `composite`: RFM segments, loyalty axes and types, the weighted value model.
- `valuation`: all of it for a population, or for one customer against the last population.
- `publishing`: when a new score is worth an event.
- `policy`: the configuration (Pydantic, validated).
"""

from services.scoring.domain.bgnbd import (
    BgNbdFit,
    BgNbdParameters,
    bgnbd_log_likelihood,
    expected_purchases,
    fit_bgnbd,
    probability_alive,
)
from services.scoring.domain.calibration import (
    CalibrationData,
    TimeUnit,
    calibration_from_aggregates,
    day_number,
    summarise_purchases,
)
from services.scoring.domain.clv import CustomerLifetimeValue, customer_lifetime_value
from services.scoring.domain.composite import Dimension, Tier, TierThresholds
from services.scoring.domain.errors import ModelFitError
from services.scoring.domain.gamma_gamma import (
    GammaGammaFit,
    GammaGammaParameters,
    expected_spend,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)
from services.scoring.domain.loyalty import DickBasuType, JonesSasserType
from services.scoring.domain.policy import ValueModelPolicy
from services.scoring.domain.publishing import PublishedValue, should_publish, tier_changed
from services.scoring.domain.rfm import RfmSegment
from services.scoring.domain.valuation import (
    CustomerFacts,
    CustomerValue,
    PopulationReference,
    Valuation,
    value_customers,
    value_population,
)

__all__ = [
    "BgNbdFit",
    "BgNbdParameters",
    "CalibrationData",
    "CustomerFacts",
    "CustomerLifetimeValue",
    "CustomerValue",
    "DickBasuType",
    "Dimension",
    "GammaGammaFit",
    "GammaGammaParameters",
    "JonesSasserType",
    "ModelFitError",
    "PopulationReference",
    "PublishedValue",
    "RfmSegment",
    "Tier",
    "TierThresholds",
    "TimeUnit",
    "Valuation",
    "ValueModelPolicy",
    "bgnbd_log_likelihood",
    "calibration_from_aggregates",
    "customer_lifetime_value",
    "day_number",
    "expected_purchases",
    "expected_spend",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "probability_alive",
    "should_publish",
    "summarise_purchases",
    "tier_changed",
    "value_customers",
    "value_population",
]
