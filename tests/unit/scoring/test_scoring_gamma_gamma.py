"""Gamma-Gamma: parameter recovery from simulated transaction values, independent checks by
numerical integration over the customer's spend rate, gradient and failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from unit.scoring.scoring_simulation import simulate_gamma_gamma

from services.scoring.domain.errors import ModelFitError
from services.scoring.domain.gamma_gamma import (
    GammaGammaParameters,
    _Objective,
    expected_spend,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)

# CDNOW's published estimates, a low-variance-per-transaction set, a heavy-heterogeneity set.
PARAMETER_SETS = [
    pytest.param((6.25, 3.74, 15.44), id="cdnow"),
    pytest.param((2.0, 5.0, 50.0), id="spread-transactions"),
    pytest.param((10.0, 2.5, 5.0), id="heterogeneous-customers"),
]
CDNOW = GammaGammaParameters(p=6.25, q=3.74, gamma=15.44)
# Wald statistic bound: chi-square with 3 degrees of freedom at 0.999.
CHI2_3_999 = 16.266


@pytest.mark.parametrize("truth", PARAMETER_SETS)
def test_fit_recovers_simulated_parameters_within_sampling_error(truth: tuple[float, ...]) -> None:
    p, q, gamma = truth
    rng = np.random.default_rng(99)
    x = 1.0 + rng.poisson(3.0, size=6000)
    m_x = simulate_gamma_gamma(rng, x, p=p, q=q, gamma=gamma)

    fit = fit_gamma_gamma(x, m_x)

    # Same tolerance rule as BG/NBD: 4 standard errors each, joint Wald test at 0.999.
    assert fit.log_covariance is not None
    covariance = np.array(fit.log_covariance)
    error = np.log([fit.parameters.p, fit.parameters.q, fit.parameters.gamma]) - np.log(truth)
    standard_errors = np.sqrt(np.diag(covariance))
    assert np.all(standard_errors < 0.5), "test would be vacuous with such wide errors"
    assert np.all(np.abs(error) < 4 * standard_errors), (error, standard_errors)
    assert float(error @ np.linalg.solve(covariance, error)) < CHI2_3_999
    # Spend is simulated independently of frequency, and the diagnostic sees that.
    assert abs(fit.frequency_spend_correlation) < 0.1


def test_reported_log_likelihood_is_in_the_original_currency_units() -> None:
    rng = np.random.default_rng(5)
    x = 1.0 + rng.poisson(2.0, size=2000)
    m_x = simulate_gamma_gamma(rng, x, p=4.0, q=3.0, gamma=30.0)

    fit = fit_gamma_gamma(x, m_x)

    total = float(gamma_gamma_log_likelihood(fit.parameters, x, m_x).sum())
    assert fit.log_likelihood == pytest.approx(total, rel=1e-10)
    in_cents = fit_gamma_gamma(x, m_x * 100)
    assert in_cents.parameters.gamma == pytest.approx(fit.parameters.gamma * 100, rel=1e-5)
    assert in_cents.parameters.p == pytest.approx(fit.parameters.p, rel=1e-5)


def _spend_rate_integral(
    parameters: GammaGammaParameters, x: int, m_x: float, weight: float
) -> float:
    """Integral over the spend rate nu of nu^weight * f(m_x | x, nu) * g(nu), with x m_x ~
    Gamma(p x, rate nu) and nu ~ Gamma(q, rate gamma), using scipy.stats densities."""

    def integrand(nu: float) -> float:
        density_of_mean = x * stats.gamma.pdf(x * m_x, a=parameters.p * x, scale=1 / nu)
        prior = stats.gamma.pdf(nu, a=parameters.q, scale=1 / parameters.gamma)
        return float(nu**weight * density_of_mean * prior)

    value, _ = integrate.quad(integrand, 0, np.inf, epsabs=0, epsrel=1e-11, limit=200)
    return float(value)


@pytest.mark.parametrize(("x", "m_x"), [(1, 3.0), (2, 35.0), (6, 12.5), (20, 80.0)])
def test_closed_forms_match_numerical_integration(x: int, m_x: float) -> None:
    marginal = _spend_rate_integral(CDNOW, x, m_x, 0.0)
    # E[transaction value | history] = E[p / nu | history].
    posterior_mean = CDNOW.p * _spend_rate_integral(CDNOW, x, m_x, -1.0) / marginal

    assert gamma_gamma_log_likelihood(CDNOW, [x], [m_x])[0] == pytest.approx(
        math.log(marginal), rel=1e-8
    )
    assert expected_spend(CDNOW, [x], [m_x])[0] == pytest.approx(posterior_mean, rel=1e-7)


def test_expected_spend_without_repeat_purchases_is_the_population_mean() -> None:
    population_mean = CDNOW.p * CDNOW.gamma / (CDNOW.q - 1)
    assert expected_spend(CDNOW, [0, 0], [0.0, 123.0]) == pytest.approx([population_mean] * 2)


def test_expected_spend_moves_from_the_population_mean_towards_the_observed_mean() -> None:
    spends = expected_spend(CDNOW, [1, 5, 50, 5000], [100.0] * 4)
    assert np.all(np.diff(spends) > 0)
    assert spends[-1] == pytest.approx(100.0, rel=1e-2)


def test_analytic_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(8)
    x = 1.0 + rng.poisson(2.0, size=1500)
    m_x = simulate_gamma_gamma(rng, x, p=3.0, q=4.0, gamma=3.0)
    objective = _Objective(x, m_x)
    for point in ([0.0, 0.0, 0.0], [1.2, 0.8, -0.4], [-0.5, 2.0, 1.5]):
        theta = np.array(point)
        numeric = optimize.approx_fprime(theta, lambda z: objective(z)[0], 1e-7)
        assert objective(theta)[1] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_too_few_repeat_customers_is_a_model_fit_error() -> None:
    x = np.array([0.0] * 100 + [2.0] * 10)
    m_x = np.where(x > 0, 20.0, 0.0)
    with pytest.raises(ModelFitError, match="at least 20 customers"):
        fit_gamma_gamma(x, m_x)


def test_infinite_mean_spend_is_a_model_fit_error() -> None:
    rng = np.random.default_rng(21)
    x = 1.0 + rng.poisson(2.0, size=4000)
    # q < 1: spend rates near zero give arbitrarily large transactions.
    m_x = simulate_gamma_gamma(rng, x, p=2.0, q=0.6, gamma=5.0)
    with pytest.raises(ModelFitError, match=r"q = .* <= 1"):
        fit_gamma_gamma(x, m_x)
    with pytest.raises(ModelFitError, match="q > 1"):
        expected_spend(GammaGammaParameters(p=2.0, q=1.0, gamma=5.0), [1], [10.0])
