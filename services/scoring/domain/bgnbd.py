"""BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

Purchases of an alive customer follow a Poisson process with rate lambda ~ Gamma(r, alpha)
(alpha a rate); after every repeat purchase the customer drops out with probability
p ~ Beta(a, b). Everything is computed in log space and fitted on log-parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

from services.scoring.domain._arrays import FloatArray, as_float_array, same_length, unique_rows
from services.scoring.domain._mle import maximise_likelihood
from services.scoring.domain.errors import ModelFitError

DEFAULT_MIN_REPEAT_CUSTOMERS = 20
_SERIES_MAX_TERMS = 100_000
# Within this distance of a = 1 the expectation's 0/0 form is interpolated from a = 1 +/- it.
_A_NEAR_ONE = 1e-4


@dataclass(frozen=True, slots=True)
class BgNbdParameters:
    """r, alpha: Gamma purchase-rate heterogeneity; a, b: Beta dropout heterogeneity."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class BgNbdFit:
    parameters: BgNbdParameters
    # Asymptotic standard errors (inverse observed information, delta method); None if singular.
    standard_errors: BgNbdParameters | None
    log_covariance: tuple[tuple[float, ...], ...] | None
    log_likelihood: float
    n_customers: int
    n_repeat_customers: int
    n_distinct_rows: int
    iterations: int


def _validated(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    repeats = as_float_array(x, name="x")
    last = as_float_array(t_x, name="t_x")
    age = as_float_array(T, name="T")
    same_length(x=repeats, t_x=last, T=age)
    if np.any(repeats < 0) or np.any(repeats != np.round(repeats)):
        raise ValueError("x must be non-negative whole numbers of repeat purchases")
    if np.any(last < 0) or np.any(last > age):
        raise ValueError("times must satisfy 0 <= t_x <= T")
    if np.any(last[repeats == 0] != 0):
        raise ValueError("t_x must be 0 for customers without repeat purchases")
    return repeats, last, age


def bgnbd_log_likelihood(
    parameters: BgNbdParameters, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Log-likelihood of each customer's (x, t_x, T), as in DOMAIN.md."""
    repeats, last, age = _validated(x, t_x, T)
    r, alpha, a, b = parameters.r, parameters.alpha, parameters.a, parameters.b
    base = (
        gammaln(r + repeats)
        - gammaln(r)
        + r * math.log(alpha)
        + betaln(a, b + repeats)
        - betaln(a, b)
    )
    still_alive = -(r + repeats) * np.log(alpha + age)
    dropped_out = np.full_like(repeats, -np.inf)
    has_repeat = repeats > 0
    dropped_out[has_repeat] = (
        math.log(a)
        - np.log(b + repeats[has_repeat] - 1)
        - (r + repeats[has_repeat]) * np.log(alpha + last[has_repeat])
    )
    return np.asarray(base + np.logaddexp(still_alive, dropped_out), dtype=np.float64)


class _CompressedObjective:
    """Mean negative log-likelihood and gradient over weighted distinct rows.

    Terms that depend on x alone are evaluated once per distinct x; rows with x = 0 skip
    the dropout branch, whose weight there is exactly zero.
    """

    def __init__(self, x: FloatArray, t_x: FloatArray, T: FloatArray, weight: FloatArray) -> None:
        self.total_weight = float(weight.sum())
        self.x_values, x_group = np.unique(x, return_inverse=True)
        self.x_weight = np.bincount(x_group, weights=weight)
        none = x == 0
        self.age_none, self.weight_none = T[none], weight[none]
        self.x_some, self.last_some, self.age_some = x[~none], t_x[~none], T[~none]
        self.weight_some = weight[~none]

    def __call__(self, log_parameters: FloatArray) -> tuple[float, FloatArray]:
        r, alpha, a, b = np.exp(log_parameters)
        n, xv, wx = self.total_weight, self.x_values, self.x_weight
        log_alpha = math.log(alpha)

        total = float(wx @ (gammaln(r + xv) + betaln(a, b + xv)))
        total += n * (r * log_alpha - float(gammaln(r)) - float(betaln(a, b)))
        d_r = float(wx @ digamma(r + xv)) + n * (log_alpha - float(digamma(r)))
        d_alpha = n * r / alpha
        digamma_abx = digamma(a + b + xv)
        d_a = n * float(digamma(a + b)) - float(wx @ digamma_abx)
        d_b = float(wx @ (digamma(b + xv) - digamma_abx)) - n * float(digamma(b) - digamma(a + b))

        log_age_none = np.log(alpha + self.age_none)
        total -= r * float(self.weight_none @ log_age_none)
        d_r -= float(self.weight_none @ log_age_none)
        d_alpha -= r * float(self.weight_none @ (1.0 / (alpha + self.age_none)))

        xs, ws = self.x_some, self.weight_some
        log_age = np.log(alpha + self.age_some)
        log_last = np.log(alpha + self.last_some)
        shape = r + xs
        alive = -shape * log_age
        dropped = math.log(a) - np.log(b + xs - 1) - shape * log_last
        combined = np.logaddexp(alive, dropped)
        total += float(ws @ combined)
        share_alive = np.exp(alive - combined)
        share_dropped = np.exp(dropped - combined)
        d_r -= float(ws @ (share_alive * log_age + share_dropped * log_last))
        d_alpha -= float(
            ws
            @ (
                shape
                * (share_alive / (alpha + self.age_some) + share_dropped / (alpha + self.last_some))
            )
        )
        d_a += float(ws @ share_dropped) / a
        d_b -= float(ws @ (share_dropped / (b + xs - 1)))

        gradient = np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
        return -total / n, -gradient / n


def fit_bgnbd(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    *,
    min_repeat_customers: int = DEFAULT_MIN_REPEAT_CUSTOMERS,
) -> BgNbdFit:
    """Maximum-likelihood BG/NBD fit; identical (x, t_x, T) rows are fitted once, weighted."""
    repeats, last, age = _validated(x, t_x, T)
    n_repeat = int(np.count_nonzero(repeats))
    if n_repeat < min_repeat_customers:
        raise ModelFitError(
            f"BG/NBD needs at least {min_repeat_customers} customers with a repeat purchase, "
            f"found {n_repeat} among {len(repeats)}. Wait for more history, move as_of later, "
            "or lower min_repeat_customers."
        )
    # Times rescaled to unit mean T keep alpha near 1 and the problem well conditioned.
    scale = float(age.mean())
    rows = unique_rows(repeats, last / scale, age / scale)
    scaled_x, scaled_last, scaled_age = rows.columns
    objective = _CompressedObjective(scaled_x, scaled_last, scaled_age, rows.counts)
    purchase_rate = float(repeats.sum() / age.sum() * scale)
    alpha_start = 1.0 / max(purchase_rate, 1e-3)
    starts = [np.log([1.0, alpha_start, 1.0, 1.0]), np.log([0.3, alpha_start / 3, 0.5, 5.0])]
    result = maximise_likelihood(
        objective,
        starts,
        total_weight=objective.total_weight,
        names=("r", "alpha", "a", "b"),
        model="BG/NBD",
    )
    r, alpha_scaled, a, b = np.exp(result.log_parameters)
    parameters = BgNbdParameters(
        r=float(r), alpha=float(alpha_scaled * scale), a=float(a), b=float(b)
    )
    # Rescaling time by s multiplies each customer's density by s^-x.
    log_likelihood = objective.total_weight * result.mean_log_likelihood - math.log(scale) * float(
        repeats.sum()
    )
    standard_errors = None
    covariance = None
    if result.log_covariance is not None:
        spread = np.sqrt(np.diag(result.log_covariance))
        values = np.array([parameters.r, parameters.alpha, parameters.a, parameters.b])
        r_se, alpha_se, a_se, b_se = (values * spread).tolist()
        standard_errors = BgNbdParameters(r=r_se, alpha=alpha_se, a=a_se, b=b_se)
        covariance = tuple(tuple(float(v) for v in row) for row in result.log_covariance)
    return BgNbdFit(
        parameters=parameters,
        standard_errors=standard_errors,
        log_covariance=covariance,
        log_likelihood=float(log_likelihood),
        n_customers=len(repeats),
        n_repeat_customers=n_repeat,
        n_distinct_rows=len(rows.counts),
        iterations=result.iterations,
    )


def probability_alive(
    parameters: BgNbdParameters, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """P(alive at T | x, t_x, T); exactly 1 for customers without a repeat purchase."""
    repeats, last, age = _validated(x, t_x, T)
    return np.asarray(expit(-_log_odds_dead(parameters, repeats, last, age)), dtype=np.float64)


def _log_odds_dead(
    parameters: BgNbdParameters, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    r, alpha, a, b = parameters.r, parameters.alpha, parameters.a, parameters.b
    log_odds = np.full_like(x, -np.inf)
    has_repeat = x > 0
    xs = x[has_repeat]
    log_odds[has_repeat] = (
        math.log(a)
        - np.log(b + xs - 1)
        + (r + xs) * (np.log(alpha + T[has_repeat]) - np.log(alpha + t_x[has_repeat]))
    )
    return log_odds


def expected_purchases(
    parameters: BgNbdParameters,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    t: ArrayLike,
) -> FloatArray:
    """E[purchases in (T, T + t] | x, t_x, T], DOMAIN.md's 2F1 formula (t in the model's unit).

    The hypergeometric term is evaluated after Euler's transformation,
    ((a+T)/(a+T+t))^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z)
    with c = a+b+x-1, which never overflows however large x, T or t are.
    """
    repeats, last, age = _validated(x, t_x, T)
    horizon = np.broadcast_to(np.asarray(t, dtype=np.float64), repeats.shape)
    if np.any(~np.isfinite(horizon)) or np.any(horizon < 0):
        raise ValueError("t must be finite and non-negative")
    alive = expit(-_log_odds_dead(parameters, repeats, last, age))
    if abs(parameters.a - 1.0) >= _A_NEAR_ONE:
        conditional = _purchases_while_alive(parameters, parameters.a, repeats, age, horizon)
    else:
        # a = 1 is a removable singularity: interpolate linearly between a = 1 -/+ the gap.
        below = _purchases_while_alive(parameters, 1.0 - _A_NEAR_ONE, repeats, age, horizon)
        above = _purchases_while_alive(parameters, 1.0 + _A_NEAR_ONE, repeats, age, horizon)
        share = (parameters.a - (1.0 - _A_NEAR_ONE)) / (2 * _A_NEAR_ONE)
        conditional = below + share * (above - below)
    return np.asarray(conditional * alive, dtype=np.float64)


def _purchases_while_alive(
    parameters: BgNbdParameters, a: float, x: FloatArray, T: FloatArray, t: FloatArray
) -> FloatArray:
    r, alpha, b = parameters.r, parameters.alpha, parameters.b
    c = a + b + x - 1
    z = t / (alpha + T + t)
    log_one_minus_z = np.log(alpha + T) - np.log(alpha + T + t)
    hypergeometric = _hypergeometric(a + b - 1 - r, a - 1, c, z)
    with np.errstate(all="ignore"):  # what is not finite is computed again below
        bracket = -np.expm1((a - 1) * log_one_minus_z + np.log(hypergeometric))
        result = np.asarray(c / (a - 1) * bracket, dtype=np.float64)
    failed = np.flatnonzero(~np.isfinite(result))
    if len(failed):
        result[failed] = _purchases_while_alive_by_quadrature(
            parameters, a, x[failed], T[failed], t[failed]
        )
    if not np.all(np.isfinite(result)):
        raise FloatingPointError("BG/NBD expected purchases are not finite for these inputs")
    return result


# Gauss-Legendre nodes on [-1, 1] for the posterior expectation over the dropout probability.
_QUADRATURE_NODES, _QUADRATURE_WEIGHTS = np.polynomial.legendre.leggauss(128)
# The posterior of p is integrated over its mean +/- this many standard deviations (within [0, 1]).
_QUADRATURE_SPREAD = 12.0


def _purchases_while_alive_by_quadrature(
    parameters: BgNbdParameters, a: float, x: FloatArray, T: FloatArray, t: FloatArray
) -> FloatArray:
    """The same expectation as an integral, for where the closed form's 2F1 overflows.

    An alive customer with rate lambda and dropout probability p makes (1 - e^(-lambda p t)) / p
    purchases in t on average; given alive and the history, lambda ~ Gamma(r+x, alpha+T) and
    p ~ Beta(a, b+x), independently. The Gamma integral is closed,
    (1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p, and p's is taken numerically over its posterior.
    The closed form fails when a and b are large (a fit where everyone drops out with nearly the
    same p: both near 10^6 for a base of 40 regular customers), which is where this posterior is
    narrow and the quadrature exact to rounding.
    """
    r, alpha, b = parameters.r, parameters.alpha, parameters.b
    beta = b + x
    mean = a / (a + beta)
    spread = _QUADRATURE_SPREAD * np.sqrt(mean * (1 - mean) / (a + beta + 1))
    low = np.clip(mean - spread, 0.0, 1.0)[:, None]
    high = np.clip(mean + spread, 0.0, 1.0)[:, None]
    p = low + (high - low) * (_QUADRATURE_NODES + 1) / 2
    with np.errstate(divide="ignore"):
        log_density = (a - 1) * np.log(p) + (beta[:, None] - 1) * np.log1p(-p)
    weights = _QUADRATURE_WEIGHTS * np.exp(log_density - log_density.max(axis=1, keepdims=True))
    rate_scale = (alpha + T)[:, None]
    shape = (r + x)[:, None]
    purchases = -np.expm1(shape * (np.log(rate_scale) - np.log(rate_scale + p * t[:, None]))) / p
    # Normalised by the same quadrature: the density's constant, and its error, cancel.
    return np.asarray((weights * purchases).sum(axis=1) / weights.sum(axis=1), dtype=np.float64)


def _hypergeometric(A: float, B: float, C: FloatArray, z: FloatArray) -> FloatArray:
    """scipy's 2F1, with the plain power series where it fails.

    scipy returns inf/nan when C - A - B is an exact integer, C is large and z is near 1;
    there the series converges fast because its terms fall like k^(A+B-C-1).
    """
    values = np.asarray(hyp2f1(A, B, C, z), dtype=np.float64)
    failed = np.flatnonzero(~np.isfinite(values))
    if len(failed) == 0:
        return values
    c, zf = C[failed], z[failed]
    term = np.ones(len(failed))
    total = np.ones(len(failed))
    pending = np.arange(len(failed))
    with np.errstate(over="ignore", invalid="ignore"):  # overflowed rows end up not finite
        for k in range(_SERIES_MAX_TERMS):
            term[pending] *= (A + k) * (B + k) / ((c[pending] + k) * (k + 1)) * zf[pending]
            total[pending] += term[pending]
            pending = pending[np.abs(term[pending]) > 1e-17 * np.abs(total[pending])]
            if len(pending) == 0:
                break
        else:
            total[pending] = np.nan  # not converged: the caller integrates those rows instead
    values[failed] = total
    return values
