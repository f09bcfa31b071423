"""Maximum likelihood on log-parameters with L-BFGS-B, shared by BG/NBD and Gamma-Gamma."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from services.scoring.domain._arrays import FloatArray
from services.scoring.domain.errors import ModelFitError

# Parameters live in [1e-6, 1e6] (on data rescaled to unit mean); beyond that they are not identified.
LOG_BOUND = math.log(1e6)
_BOUND_MARGIN = 0.05
_GRADIENT_TOLERANCE = 1e-4
_HESSIAN_STEP = 1e-4

# Objective: mean negative log-likelihood and its gradient with respect to the log-parameters.
Objective = Callable[[FloatArray], tuple[float, FloatArray]]


@dataclass(frozen=True, slots=True)
class MleResult:
    log_parameters: FloatArray
    mean_log_likelihood: float
    iterations: int
    # Covariance of the log-parameters (inverse observed information); None if not positive definite.
    log_covariance: FloatArray | None


def maximise_likelihood(
    objective: Objective,
    starts: Sequence[FloatArray],
    *,
    total_weight: float,
    names: Sequence[str],
    model: str,
) -> MleResult:
    """Fit from the first start that converges (later starts are fallbacks), or a ModelFitError."""
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(names)
    best = None
    failures: list[str] = []
    for start in starts:
        result = minimize(
            objective,
            np.asarray(start, dtype=np.float64),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-8, "maxcor": 20},
        )
        if not np.isfinite(result.fun):
            failures.append("the log-likelihood was not finite")
            continue
        gradient_norm = float(np.max(np.abs(result.jac)))
        interior = np.all(np.abs(result.x) < LOG_BOUND - _BOUND_MARGIN)
        if not result.success and not (interior and gradient_norm < _GRADIENT_TOLERANCE):
            failures.append(f"the optimiser stopped without converging ({result.message})")
            continue
        best = result
        break
    if best is None:
        raise ModelFitError(
            f"{model} fit did not converge: {'; '.join(failures)}. "
            "Check the inputs (times in the stated unit, values positive) or collect more history."
        )
    at_bound = [
        f"{name}={math.exp(value):.3g}"
        for name, value in zip(names, best.x, strict=True)
        if abs(value) >= LOG_BOUND - _BOUND_MARGIN
    ]
    if at_bound:
        raise ModelFitError(
            f"{model} fit ran to the parameter bounds ({', '.join(at_bound)}): these data do not "
            "identify the model. Use a longer calibration period, more customers with repeat "
            "purchases, or the other time unit."
        )
    gradient_norm = float(np.max(np.abs(best.jac)))
    if gradient_norm > _GRADIENT_TOLERANCE:
        raise ModelFitError(
            f"{model} fit did not reach a maximum (gradient {gradient_norm:.2e}); "
            "the likelihood is too flat for these data. Collect more history."
        )
    return MleResult(
        log_parameters=np.asarray(best.x, dtype=np.float64),
        mean_log_likelihood=-float(best.fun),
        iterations=int(best.nit),
        log_covariance=_log_covariance(objective, best.x, total_weight),
    )


def _log_covariance(
    objective: Objective, optimum: FloatArray, total_weight: float
) -> FloatArray | None:
    """Inverse observed information by central differences of the analytic gradient."""
    size = len(optimum)
    hessian = np.empty((size, size), dtype=np.float64)
    for column in range(size):
        step = np.zeros(size)
        step[column] = _HESSIAN_STEP
        hessian[:, column] = (objective(optimum + step)[1] - objective(optimum - step)[1]) / (
            2 * _HESSIAN_STEP
        )
    information = 0.5 * (hessian + hessian.T) * total_weight
    try:
        np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        return None
    return np.asarray(np.linalg.inv(information), dtype=np.float64)
