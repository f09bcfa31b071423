"""Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves").

A transaction's value is Gamma(p, nu) with nu ~ Gamma(q, gamma) across customers (rates), so
the mean m_x of x transactions satisfies x * m_x ~ Gamma(p * x, nu). Fitted on customers with
repeat purchases, on the mean of their repeat transactions (the first one excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import digamma, gammaln

from services.scoring.domain._arrays import FloatArray, as_float_array, same_length
from services.scoring.domain._mle import maximise_likelihood
from services.scoring.domain.bgnbd import DEFAULT_MIN_REPEAT_CUSTOMERS
from services.scoring.domain.errors import ModelFitError


@dataclass(frozen=True, slots=True)
class GammaGammaParameters:
    """p: shape of a transaction's value; q, gamma: Gamma heterogeneity of its rate."""

    p: float
    q: float
    gamma: float


@dataclass(frozen=True, slots=True)
class GammaGammaFit:
    parameters: GammaGammaParameters
    standard_errors: GammaGammaParameters | None
    log_covariance: tuple[tuple[float, ...], ...] | None
    log_likelihood: float
    n_customers: int
    iterations: int
    # The model assumes spend independent of frequency; a strong correlation says it does not fit.
    frequency_spend_correlation: float


def _validated(x: ArrayLike, m_x: ArrayLike) -> tuple[FloatArray, FloatArray]:
    repeats = as_float_array(x, name="x")
    spend = as_float_array(m_x, name="m_x")
    same_length(x=repeats, m_x=spend)
    if np.any(repeats < 0) or np.any(repeats != np.round(repeats)):
        raise ValueError("x must be non-negative whole numbers of repeat purchases")
    return repeats, spend


def gamma_gamma_log_likelihood(
    parameters: GammaGammaParameters, x: ArrayLike, m_x: ArrayLike
) -> FloatArray:
    """Log-density of each customer's mean repeat spend m_x given x (> 0, m_x > 0)."""
    repeats, spend = _validated(x, m_x)
    if np.any(repeats <= 0) or np.any(spend <= 0):
        raise ValueError("the Gamma-Gamma likelihood needs x > 0 and m_x > 0")
    p, q, gamma = parameters.p, parameters.q, parameters.gamma
    shape = p * repeats
    return np.asarray(
        gammaln(shape + q)
        - gammaln(shape)
        - gammaln(q)
        + q * math.log(gamma)
        + (shape - 1) * np.log(spend)
        + shape * np.log(repeats)
        - (shape + q) * np.log(gamma + spend * repeats),
        dtype=np.float64,
    )


class _Objective:
    """Mean negative log-likelihood and gradient; Gamma functions once per distinct x."""

    def __init__(self, x: FloatArray, m_x: FloatArray) -> None:
        self.total_weight = float(len(x))
        self.x_values, x_group = np.unique(x, return_inverse=True)
        self.x_count = np.bincount(x_group).astype(np.float64)
        self.x = x
        self.total = x * m_x
        self.sum_x_log_total = float(x @ np.log(self.total))
        self.sum_log_spend = float(np.log(m_x).sum())

    def __call__(self, log_parameters: FloatArray) -> tuple[float, FloatArray]:
        p, q, gamma = np.exp(log_parameters)
        n, xv, count = self.total_weight, self.x_values, self.x_count
        log_gamma = math.log(gamma)
        log_rate = np.log(gamma + self.total)
        shape_v = p * xv
        # (p x - 1) ln m + p x ln x = p x ln(x m) - ln m, summed over customers.
        total = float(count @ (gammaln(shape_v + q) - gammaln(shape_v)))
        total += n * (q * log_gamma - float(gammaln(q)))
        total += p * self.sum_x_log_total - self.sum_log_spend
        total -= float((p * self.x + q) @ log_rate)

        digamma_sum = digamma(shape_v + q)
        d_p = float((count * xv) @ (digamma_sum - digamma(shape_v)))
        d_p += self.sum_x_log_total - float(self.x @ log_rate)
        d_q = (
            float(count @ digamma_sum) + n * (log_gamma - float(digamma(q))) - float(log_rate.sum())
        )
        d_gamma = n * q / gamma - float((p * self.x + q) @ (1.0 / (gamma + self.total)))

        gradient = np.array([d_p * p, d_q * q, d_gamma * gamma])
        return -total / n, -gradient / n


def fit_gamma_gamma(
    x: ArrayLike,
    m_x: ArrayLike,
    *,
    min_repeat_customers: int = DEFAULT_MIN_REPEAT_CUSTOMERS,
) -> GammaGammaFit:
    """Maximum-likelihood fit on the customers with x > 0 and a positive mean repeat spend."""
    repeats, spend = _validated(x, m_x)
    used = (repeats > 0) & (spend > 0)
    repeats, spend = repeats[used], spend[used]
    if len(repeats) < min_repeat_customers:
        raise ModelFitError(
            f"Gamma-Gamma needs at least {min_repeat_customers} customers with a repeat purchase "
            f"of positive value, found {len(repeats)}. Wait for more history, move as_of later, "
            "or lower min_repeat_customers."
        )
    # Money rescaled to unit mean keeps gamma near 1 whatever the currency.
    scale = float(spend.mean())
    objective = _Objective(repeats, spend / scale)
    starts = [np.log([1.0, 2.0, 1.0]), np.log([5.0, 5.0, 4.0])]
    result = maximise_likelihood(
        objective,
        starts,
        total_weight=objective.total_weight,
        names=("p", "q", "gamma"),
        model="Gamma-Gamma",
    )
    p, q, gamma_scaled = np.exp(result.log_parameters)
    parameters = GammaGammaParameters(p=float(p), q=float(q), gamma=float(gamma_scaled * scale))
    if parameters.q <= 1:
        raise ModelFitError(
            f"Gamma-Gamma fit gave q = {parameters.q:.3g} <= 1: the mean spend per transaction is "
            "infinite under these estimates. Check the values for outliers (e.g. wholesale "
            "orders) and refit."
        )
    standard_errors = None
    covariance = None
    if result.log_covariance is not None:
        spread = np.sqrt(np.diag(result.log_covariance))
        values = np.array([parameters.p, parameters.q, parameters.gamma]) * spread
        standard_errors = GammaGammaParameters(
            p=float(values[0]), q=float(values[1]), gamma=float(values[2])
        )
        covariance = tuple(tuple(float(v) for v in row) for row in result.log_covariance)
    correlation = (
        float(np.corrcoef(repeats, spend)[0, 1])
        if np.ptp(repeats) > 0 and np.ptp(spend) > 0
        else 0.0
    )
    return GammaGammaFit(
        parameters=parameters,
        standard_errors=standard_errors,
        log_covariance=covariance,
        # Rescaling money by s multiplies each customer's density by 1/s.
        log_likelihood=objective.total_weight * (result.mean_log_likelihood - math.log(scale)),
        n_customers=len(repeats),
        iterations=result.iterations,
        frequency_spend_correlation=correlation,
    )


def expected_spend(parameters: GammaGammaParameters, x: ArrayLike, m_x: ArrayLike) -> FloatArray:
    """E[value of a transaction | x, m_x] = p (gamma + m_x x) / (p x + q - 1).

    For x = 0 this is the population mean p gamma / (q - 1).
    """
    repeats, spend = _validated(x, m_x)
    p, q, gamma = parameters.p, parameters.q, parameters.gamma
    if q <= 1:
        raise ModelFitError(f"expected spend needs q > 1, the fitted q is {q:.3g}")
    observed = np.where(repeats > 0, spend * repeats, 0.0)
    return np.asarray(p * (gamma + observed) / (p * repeats + q - 1), dtype=np.float64)
