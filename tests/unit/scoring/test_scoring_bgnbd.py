"""BG/NBD: parameter recovery from simulated purchase processes, independent checks of the
closed forms by numerical integration, invariants, gradient and failure modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special
from unit.scoring.scoring_simulation import simulate_bgnbd

from services.scoring.domain.bgnbd import (
    BgNbdParameters,
    _CompressedObjective,
    _purchases_while_alive,
    _purchases_while_alive_by_quadrature,
    bgnbd_log_likelihood,
    expected_purchases,
    fit_bgnbd,
    probability_alive,
)
from services.scoring.domain.calibration import TimeUnit
from services.scoring.domain.clv import discounted_purchases
from services.scoring.domain.errors import ModelFitError

# (r, alpha, a, b, T from, T to): CDNOW's published estimates in weeks, a daily-scale set,
# and a set with strong dropout heterogeneity (a < 1).
PARAMETER_SETS = [
    pytest.param((0.243, 4.414, 0.793, 2.426, 27.0, 39.0), id="cdnow-weeks"),
    pytest.param((1.2, 30.0, 1.6, 4.5, 60.0, 400.0), id="days"),
    pytest.param((2.0, 5.0, 0.5, 6.0, 10.0, 50.0), id="heavy-dropout"),
]
CDNOW = BgNbdParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)
# Wald statistic bound: chi-square with 4 degrees of freedom at 0.999.
CHI2_4_999 = 18.467


@pytest.mark.parametrize("truth", PARAMETER_SETS)
def test_fit_recovers_simulated_parameters_within_sampling_error(truth: tuple[float, ...]) -> None:
    r, alpha, a, b, observed_from, observed_to = truth
    rng = np.random.default_rng(20240601)
    histories = simulate_bgnbd(
        rng, 8000, r=r, alpha=alpha, a=a, b=b, observed_from=observed_from, observed_to=observed_to
    )

    fit = fit_bgnbd(histories.x, histories.t_x, histories.T)

    # Tolerance from the estimator's own sampling error: the inverse observed information on
    # log-parameters. Each estimate within 4 standard errors, jointly below the 0.999
    # chi-square quantile; a wrong likelihood biases estimates by many standard errors at n = 8000.
    assert fit.log_covariance is not None
    covariance = np.array(fit.log_covariance)
    estimate = np.log([fit.parameters.r, fit.parameters.alpha, fit.parameters.a, fit.parameters.b])
    error = estimate - np.log([r, alpha, a, b])
    standard_errors = np.sqrt(np.diag(covariance))
    assert np.all(standard_errors < 0.5), "test would be vacuous with such wide errors"
    assert np.all(np.abs(error) < 4 * standard_errors), (error, standard_errors)
    assert float(error @ np.linalg.solve(covariance, error)) < CHI2_4_999


def test_reported_log_likelihood_is_the_sum_over_customers() -> None:
    rng = np.random.default_rng(7)
    histories = simulate_bgnbd(
        rng, 3000, r=0.5, alpha=8.0, a=0.9, b=3.0, observed_from=20.0, observed_to=60.0
    )
    # Whole days expressed in weeks, as the calibration produces: many rows repeat.
    x, t_x, T = histories.x, np.floor(histories.t_x * 7) / 7, np.ceil(histories.T * 7) / 7

    fit = fit_bgnbd(x, t_x, T)

    assert fit.n_distinct_rows < len(x)
    total = float(bgnbd_log_likelihood(fit.parameters, x, t_x, T).sum())
    assert fit.log_likelihood == pytest.approx(total, rel=1e-10)
    # It is the maximum: nudging any parameter lowers it.
    for field in ("r", "alpha", "a", "b"):
        values = {name: getattr(fit.parameters, name) for name in ("r", "alpha", "a", "b")}
        values[field] *= 1.02
        nudged = float(bgnbd_log_likelihood(BgNbdParameters(**values), x, t_x, T).sum())
        assert nudged < fit.log_likelihood


def test_fit_does_not_depend_on_the_time_unit() -> None:
    rng = np.random.default_rng(11)
    histories = simulate_bgnbd(
        rng, 3000, r=0.8, alpha=20.0, a=1.2, b=3.0, observed_from=50.0, observed_to=300.0
    )
    in_days = fit_bgnbd(histories.x, histories.t_x, histories.T)
    in_weeks = fit_bgnbd(histories.x, histories.t_x / 7, histories.T / 7)

    assert in_weeks.parameters.r == pytest.approx(in_days.parameters.r, rel=1e-5)
    assert in_weeks.parameters.alpha == pytest.approx(in_days.parameters.alpha / 7, rel=1e-5)
    assert in_weeks.parameters.a == pytest.approx(in_days.parameters.a, rel=1e-5)
    assert in_weeks.parameters.b == pytest.approx(in_days.parameters.b, rel=1e-5)


# --- Independent computations from the model's definition --------------------------------


def _gamma_integral(power: float, rate: float) -> float:
    """Integral of lambda^power e^(-rate lambda) over (0, inf), by adaptive quadrature."""
    near, _ = integrate.quad(lambda u: math.exp(-u), 0, 1, weight="alg", wvar=(power, 0.0))
    far, _ = integrate.quad(lambda u: u**power * math.exp(-u), 1, np.inf)
    return (near + far) / rate ** (power + 1)


def _beta_integral(p_power: float, one_minus_p_power: float) -> float:
    value, _ = integrate.quad(lambda p: 1.0, 0, 1, weight="alg", wvar=(p_power, one_minus_p_power))
    return float(value)


def _posterior_terms(
    parameters: BgNbdParameters, x: int, t_x: float, T: float
) -> tuple[float, float, float]:
    """(still alive, dropped out, normalising constant) integrals of the individual likelihood
    (1-p)^x lambda^x e^(-lambda T) + [x>0] p (1-p)^(x-1) lambda^x e^(-lambda t_x) against the
    Gamma(r, alpha) x Beta(a, b) prior."""
    r, alpha, a, b = parameters.r, parameters.alpha, parameters.a, parameters.b
    constant = alpha**r / math.gamma(r) / special.beta(a, b)
    alive = _gamma_integral(r + x - 1, alpha + T) * _beta_integral(a - 1, b + x - 1)
    dropped = (
        _gamma_integral(r + x - 1, alpha + t_x) * _beta_integral(a, b + x - 2) if x > 0 else 0.0
    )
    return alive, dropped, constant


def _purchases_if_alive(parameters: BgNbdParameters, x: int, T: float, t: float) -> float:
    """E[purchases in (T, T+t] | alive at T, history]: the posterior of (lambda, p) given alive is
    Gamma(r+x, alpha+T) x Beta(a, b+x); given (lambda, p) the expectation is (1 - e^(-lambda p t)) / p.
    Integrated by a Gauss-Laguerre x Gauss-Jacobi product rule."""
    r, alpha, a, b = parameters.r, parameters.alpha, parameters.a, parameters.b
    u, u_weight = special.roots_genlaguerre(150, r + x - 1)
    v, v_weight = special.roots_jacobi(150, b + x - 1, a - 1)
    rate = u[:, None] / (alpha + T)
    dropout = (1 + v[None, :]) / 2
    expectation = -np.expm1(-rate * dropout * t) / dropout
    weights = u_weight[:, None] * v_weight[None, :]
    return float((weights * expectation).sum() / weights.sum())


CUSTOMERS = [(0, 0.0, 30.0), (1, 2.0, 38.0), (2, 20.0, 38.0), (5, 30.0, 35.0), (12, 36.0, 37.0)]


@pytest.mark.parametrize(("x", "t_x", "T"), CUSTOMERS)
def test_closed_forms_match_numerical_integration(x: int, t_x: float, T: float) -> None:
    alive, dropped, constant = _posterior_terms(CDNOW, x, t_x, T)

    log_likelihood = bgnbd_log_likelihood(CDNOW, [x], [t_x], [T])[0]
    p_alive = probability_alive(CDNOW, [x], [t_x], [T])[0]

    assert log_likelihood == pytest.approx(math.log(constant * (alive + dropped)), rel=1e-8)
    assert p_alive == pytest.approx(alive / (alive + dropped), rel=1e-8)
    for horizon in (1.0, 13.0, 52.0, 260.0):
        expected = expected_purchases(CDNOW, [x], [t_x], [T], horizon)[0]
        independent = p_alive * _purchases_if_alive(CDNOW, x, T, horizon)
        assert expected == pytest.approx(independent, rel=1e-7)


def test_expected_purchases_equal_domain_formula_without_euler_transformation() -> None:
    r, alpha, a, b = CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b
    for x, t_x, T in CUSTOMERS:
        for t in (4.0, 39.0, 104.0):
            z = t / (alpha + T + t)
            numerator = (a + b + x - 1) / (a - 1)
            numerator *= 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * special.hyp2f1(
                r + x, b + x, a + b + x - 1, z
            )
            odds = a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x) if x > 0 else 0.0
            direct = numerator / (1 + odds)
            assert expected_purchases(CDNOW, [x], [t_x], [T], t)[0] == pytest.approx(
                direct, rel=1e-9
            )


# --- Invariants and numerical guards ------------------------------------------------------


def test_probability_alive_is_one_without_repeat_purchases() -> None:
    T = np.array([0.0, 1.0, 52.0, 1000.0])
    p_alive = probability_alive(CDNOW, np.zeros(4), np.zeros(4), T)
    assert np.all(p_alive == 1.0)


def test_probability_alive_falls_with_time_since_last_purchase() -> None:
    t_x = np.array([39.0, 30.0, 20.0, 10.0, 1.0])
    p_alive = probability_alive(CDNOW, np.full(5, 3.0), t_x, np.full(5, 39.0))
    assert np.all(np.diff(p_alive) < 0)
    assert np.all((p_alive > 0) & (p_alive <= 1))


@pytest.mark.parametrize("a", [0.4, 0.9999, 1.0, 1.00003, 2.5])
def test_expected_purchases_grow_with_the_horizon(a: float) -> None:
    parameters = BgNbdParameters(r=0.7, alpha=12.0, a=a, b=3.0)
    x = np.array([0.0, 1.0, 4.0, 30.0])
    t_x = np.array([0.0, 3.0, 50.0, 90.0])
    T = np.array([5.0, 60.0, 100.0, 100.0])
    horizons = np.linspace(0.0, 500.0, 60)
    curves = np.array([expected_purchases(parameters, x, t_x, T, t) for t in horizons])
    assert np.all(curves[0] == 0)
    assert np.all(np.diff(curves, axis=0) > 0)


def test_expected_purchases_are_continuous_through_a_equal_one() -> None:
    def at(a: float) -> np.ndarray:
        parameters = BgNbdParameters(r=0.5, alpha=10.0, a=a, b=3.0)
        return expected_purchases(parameters, [0.0, 3.0], [0.0, 40.0], [10.0, 50.0], 52.0)

    below, exact, above = at(1 - 1e-3), at(1.0), at(1 + 1e-3)
    # The function is smooth in a: the value at 1 lies halfway up to O(h^2).
    assert exact == pytest.approx((below + above) / 2, rel=1e-6)
    assert np.all(np.abs(below - above) / exact < 1e-2)


def test_extreme_inputs_stay_finite_and_ordered() -> None:
    parameters = BgNbdParameters(r=0.5, alpha=10.0, a=0.5, b=3.0)
    x = np.array([0.0, 1.0, 10.0, 100.0, 1000.0, 5000.0])
    T = np.array([0.0, 50.0, 500.0, 5000.0, 1e5, 1e6])
    t_x = np.where(x > 0, 0.9 * T, 0.0)
    previous = np.zeros(len(x))
    for t in (1.0, 52.0, 1e4, 1e7):
        expected = expected_purchases(parameters, x, t_x, T, t)
        assert np.all(np.isfinite(expected))
        assert np.all(expected >= previous)
        previous = expected
    p_alive = probability_alive(parameters, x, t_x, T)
    assert np.all(np.isfinite(p_alive)) and p_alive[-1] < 1e-100


def test_expected_purchases_where_scipy_hyp2f1_overflows() -> None:
    # The transformed 2F1 has arguments (a+b-1-r, a-1; a+b+x-1; z) = (3, -0.5; 102.5; z):
    # c - a - b is the integer 101 and z is near 1, where scipy returns inf.
    parameters = BgNbdParameters(r=1.5, alpha=1.0, a=0.5, b=4.0)
    x, t_x, T, t = np.array([99.0]), np.array([0.4]), np.array([0.5]), 3000.0
    assert not np.isfinite(special.hyp2f1(3.0, -0.5, 102.5, t / (1.5 + t)))

    value = expected_purchases(parameters, x, t_x, T, t)[0]

    shifted = BgNbdParameters(r=1.5, alpha=1.0, a=0.5, b=4.0 + 1e-9)
    assert np.isfinite(value)
    assert value == pytest.approx(expected_purchases(shifted, x, t_x, T, t)[0], rel=1e-6)


# --- Gradient, compression, failures ------------------------------------------------------


def regular_base() -> tuple[list[float], list[float], list[float]]:
    """40 customers buying every 30 days, 1 to 4 times, first purchases a few days apart, in
    weeks: the fit puts a and b near 10^6 (everyone drops out with nearly the same p)."""
    x, t_x, T = [], [], []
    for n in range(40):
        purchases = 1 + n % 4
        x.append(float(purchases - 1))
        t_x.append(30 * (purchases - 1) / 7)
        T.append((30 * (purchases - 1) + 5 * n) / 7)
    return x, t_x, T


def test_expected_purchases_where_a_and_b_are_huge() -> None:
    """Found by the event fuzzer: such a fit made the 2F1 overflow, and every recompute of this
    base failed ("BG/NBD expected purchases are not finite for these inputs")."""
    x, t_x, T = regular_base()
    fit = fit_bgnbd(x, t_x, T, min_repeat_customers=1)
    assert min(fit.parameters.a, fit.parameters.b) > 1e5
    undiscounted, discounted = discounted_purchases(fit.parameters, x, t_x, T, unit=TimeUnit.WEEK)
    assert np.all(np.isfinite(undiscounted)) and np.all(discounted <= undiscounted)
    assert np.all(undiscounted >= 0)


def test_the_integral_fallback_equals_the_closed_form_and_a_monte_carlo() -> None:
    """Where the closed form works, the quadrature over p's posterior gives the same; where it
    overflows, a Monte Carlo of the model's own definition agrees within its error."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 30, 300).astype(float)
    T = rng.uniform(1, 80, 300)
    t = np.full(300, 52.0)
    for parameters in (BgNbdParameters(2.0, 10.0, 3.0, 8.0), BgNbdParameters(5, 30, 2000, 3000)):
        closed = _purchases_while_alive(parameters, parameters.a, x, T, t)
        integral = _purchases_while_alive_by_quadrature(parameters, parameters.a, x, T, t)
        np.testing.assert_allclose(integral, closed, rtol=1e-9)
    huge = BgNbdParameters(r=10.78, alpha=77.85, a=530_064.3, b=864_095.2)
    x, T, t = np.array([0.0, 1, 2, 3]), np.array([5.0, 10, 15, 20]), np.full(4, 52.0)
    draws = 400_000
    rate = rng.gamma(huge.r + x[:, None], 1 / (huge.alpha + T[:, None]), size=(4, draws))
    dropout = rng.beta(huge.a, huge.b + x[:, None], size=(4, draws))
    samples = -np.expm1(-rate * dropout * t[:, None]) / dropout
    error = samples.std(axis=1) / math.sqrt(draws)
    integral = _purchases_while_alive_by_quadrature(huge, huge.a, x, T, t)
    assert np.all(np.abs(integral - samples.mean(axis=1)) < 4 * error)
    assert np.all(np.isfinite(expected_purchases(huge, x, x * 4, T, t)))


def test_analytic_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    histories = simulate_bgnbd(
        rng, 2000, r=0.6, alpha=1.5, a=0.8, b=2.5, observed_from=0.5, observed_to=1.5
    )
    objective = _CompressedObjective(histories.x, histories.t_x, histories.T, np.ones(2000))
    for point in ([0.0, 0.0, 0.0, 0.0], [-0.5, 0.4, -0.2, 1.0], [1.0, -1.0, 0.7, -0.3]):
        theta = np.array(point)
        analytic = objective(theta)[1]
        numeric = optimize.approx_fprime(theta, lambda z: objective(z)[0], 1e-7)
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_weighted_distinct_rows_equal_the_full_likelihood() -> None:
    x = np.array([0.0, 0.0, 2.0, 2.0, 2.0, 5.0])
    t_x = np.array([0.0, 0.0, 3.0, 3.0, 3.0, 9.0])
    T = np.array([4.0, 4.0, 10.0, 10.0, 10.0, 12.0])
    compressed = _CompressedObjective(
        np.array([0.0, 2.0, 5.0]),
        np.array([0.0, 3.0, 9.0]),
        np.array([4.0, 10.0, 12.0]),
        np.array([2.0, 3.0, 1.0]),
    )
    theta = np.log([0.4, 3.0, 0.8, 2.0])
    full = bgnbd_log_likelihood(BgNbdParameters(*np.exp(theta)), x, t_x, T).sum()
    assert -compressed(theta)[0] * len(x) == pytest.approx(full, rel=1e-12)


def test_too_few_repeat_customers_is_a_model_fit_error() -> None:
    x = np.array([0.0] * 50 + [1.0] * 19)
    t_x = np.where(x > 0, 2.0, 0.0)
    T = np.full(len(x), 10.0)
    with pytest.raises(ModelFitError, match="at least 20 customers with a repeat purchase"):
        fit_bgnbd(x, t_x, T)
    with pytest.raises(ModelFitError, match="at least 30"):
        fit_bgnbd(x, t_x, T, min_repeat_customers=30)


def test_data_without_dropout_evidence_runs_to_the_bounds() -> None:
    # Everyone buys at a steady rate right up to T: nothing suggests anyone ever drops out.
    x = np.tile([3.0, 4.0, 5.0, 6.0], 50)
    T = np.full(len(x), 40.0)
    t_x = np.full(len(x), 40.0)
    with pytest.raises(ModelFitError, match="bounds"):
        fit_bgnbd(x, t_x, T)


def test_inconsistent_histories_are_rejected() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        bgnbd_log_likelihood(CDNOW, [1], [5.0], [4.0])
    with pytest.raises(ValueError, match="whole numbers"):
        fit_bgnbd([1.5], [1.0], [2.0])
    with pytest.raises(ValueError, match="t_x must be 0"):
        probability_alive(CDNOW, [0], [1.0], [2.0])
