"""Scoring maths at scale: fit time of BG/NBD + Gamma-Gamma and the vectorised re-score of a
whole population, side by side with the `lifetimes` package fitting the same simulated data.

Agreement is judged on the parameters (relative difference) and on the log-likelihood of the
same data under each fit, both computed with our DOMAIN.md formula (lifetimes reports its
likelihood on rescaled time, not comparable as printed).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, run_json
from bench.population import BgNbdTruth, GammaGammaTruth, Summary, simulate_summary

# CDNOW-like truth in weeks (Fader, Hardie & Lee 2005 report r=0.24, alpha=4.41, a=0.79, b=2.43).
TRUTH = BgNbdTruth(r=0.25, alpha=4.0, a=0.8, b=2.5)
SPEND = GammaGammaTruth(p=6.0, q=4.0, gamma=15.0)
MAX_T_WEEKS = 78.0
HELPER_VENV = REPO / ".cache" / "bench-venv"


def lifetimes_python() -> str | None:
    """A Python that can import lifetimes: ours if installed, else the helper venv's."""
    if importlib.util.find_spec("lifetimes") is not None:
        return sys.executable
    candidate = HELPER_VENV / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def _facts(summary: Summary, clv: np.ndarray[Any, Any], seed: int) -> Any:
    """Plausible per-customer aggregates consistent with the simulated (x, t_x, T, m_x)."""
    from services.scoring.domain import CustomerFacts

    rng = np.random.default_rng(seed)
    n = len(summary.x)
    days = summary.x + 1
    tenure = summary.T * 7
    recency = (summary.T - summary.t_x) * 7
    first_value = rng.gamma(
        SPEND.p, SPEND.gamma / (SPEND.q - 1), n
    )  # mean p·gamma/(q-1), as the repeats
    revenue = first_value + summary.m_x * summary.x
    refunded = np.where(rng.random(n) < 0.05, revenue * rng.random(n) * 0.5, 0.0)
    recent_share = np.clip(1 - recency / 365, 0, 1)
    return CustomerFacts.of(
        purchase_days=days,
        recency_days=np.floor(recency),
        tenure_days=np.floor(tenure),
        net_revenue=revenue - refunded,
        net_revenue_365d=(revenue - refunded) * recent_share,
        revenue_last_180d=revenue * np.clip(1 - recency / 180, 0, 1) * 0.5,
        revenue_prior_180d=revenue * np.clip(1 - recency / 360, 0, 1) * 0.4,
        gross_revenue=revenue,
        refunded_revenue=refunded,
        chargebacks=(rng.random(n) < 0.005).astype(float),
        categories=rng.integers(1, 6, n).astype(float),
        referrals=rng.poisson(0.1, n).astype(float),
        clv=clv,
        csat_sum=np.zeros(n),
        csat_count=np.zeros(n),
        open_complaints=(rng.random(n) < 0.01).astype(float),
    )


def _relative(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in ours}


async def measure(
    sizes: list[int], *, seed: int, echo: Any, lifetimes_timeout: float
) -> dict[str, Any]:
    from services.scoring.domain import (
        BgNbdParameters,
        GammaGammaParameters,
        TimeUnit,
        ValueModelPolicy,
        bgnbd_log_likelihood,
        customer_lifetime_value,
        fit_bgnbd,
        fit_gamma_gamma,
        gamma_gamma_log_likelihood,
        value_population,
    )

    results: dict[str, Any] = {
        "truth": {"bgnbd": TRUTH.__dict__, "gamma_gamma": SPEND.__dict__},
        "sizes": {},
    }
    python = lifetimes_python()
    results["lifetimes_python"] = python
    for size in sizes:
        summary = simulate_summary(
            size, seed=seed + size, bgnbd=TRUTH, spend=SPEND, max_T=MAX_T_WEEKS
        )
        row: dict[str, Any] = {"customers": size, "repeat_customers": int((summary.x > 0).sum())}
        started = time.perf_counter()
        bg = fit_bgnbd(summary.x, summary.t_x, summary.T)
        row["bgnbd_fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        gg = fit_gamma_gamma(summary.x, summary.m_x)
        row["gamma_gamma_fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        lifetime = customer_lifetime_value(
            bg.parameters,
            gg.parameters,
            summary.x,
            summary.t_x,
            summary.T,
            summary.m_x,
            unit=TimeUnit("week"),
        )
        row["clv_s"] = time.perf_counter() - started
        facts = _facts(summary, np.asarray(lifetime.clv), seed)
        started = time.perf_counter()
        value_population(facts, policy=ValueModelPolicy(), as_of=datetime(2026, 1, 1, tzinfo=UTC))
        row["value_population_s"] = time.perf_counter() - started
        row["refit_and_rescore_s"] = (
            row["bgnbd_fit_s"] + row["gamma_gamma_fit_s"] + row["clv_s"] + row["value_population_s"]
        )
        ours_bg = {
            "r": bg.parameters.r,
            "alpha": bg.parameters.alpha,
            "a": bg.parameters.a,
            "b": bg.parameters.b,
        }
        ours_gg = {"p": gg.parameters.p, "q": gg.parameters.q, "gamma": gg.parameters.gamma}
        row["ours"] = {
            "bgnbd": ours_bg,
            "gamma_gamma": ours_gg,
            "bgnbd_ll": bg.log_likelihood,
            "gamma_gamma_ll": gg.log_likelihood,
        }
        echo(
            f"    {size:>9,} customers: ours BG/NBD {row['bgnbd_fit_s']:.2f}s + GG {row['gamma_gamma_fit_s']:.2f}s "
            f"+ CLV {row['clv_s']:.2f}s + value {row['value_population_s']:.2f}s "
            f"(r={ours_bg['r']:.3f} alpha={ours_bg['alpha']:.3f} a={ours_bg['a']:.3f} b={ours_bg['b']:.3f})"
        )
        if python is not None:
            with tempfile.TemporaryDirectory(prefix="crm-bench-fit-") as folder:
                data = Path(folder) / "summary.npz"
                np.savez(data, x=summary.x, t_x=summary.t_x, T=summary.T, m_x=summary.m_x)
                try:
                    theirs = await run_json(
                        [python, str(Path(__file__).with_name("lifetimes_fit.py")), str(data)],
                        timeout=lifetimes_timeout,
                    )
                except (TimeoutError, RuntimeError) as error:
                    row["lifetimes"] = {"error": f"{type(error).__name__}: {error}"[:500]}
                    echo(f"    lifetimes failed: {row['lifetimes']['error']}")
                    theirs = None
            if theirs is not None:
                their_bg = BgNbdParameters(**theirs["bgnbd"])
                their_gg = GammaGammaParameters(
                    p=theirs["gamma_gamma"]["p"],
                    q=theirs["gamma_gamma"]["q"],
                    gamma=theirs["gamma_gamma"]["v"],
                )
                repeat = (summary.x > 0) & (summary.m_x > 0)
                theirs["bgnbd_ll"] = float(
                    bgnbd_log_likelihood(their_bg, summary.x, summary.t_x, summary.T).sum()
                )
                theirs["gamma_gamma_ll"] = float(
                    gamma_gamma_log_likelihood(
                        their_gg, summary.x[repeat], summary.m_x[repeat]
                    ).sum()
                )
                row["ours"]["bgnbd_ll_recomputed"] = float(
                    bgnbd_log_likelihood(bg.parameters, summary.x, summary.t_x, summary.T).sum()
                )
                row["lifetimes"] = theirs
                row["agreement"] = {
                    "bgnbd_relative_difference": _relative(ours_bg, theirs["bgnbd"]),
                    "gamma_gamma_relative_difference": _relative(
                        ours_gg, {"p": their_gg.p, "q": their_gg.q, "gamma": their_gg.gamma}
                    ),
                    "bgnbd_ll_ours_minus_lifetimes": row["ours"]["bgnbd_ll_recomputed"]
                    - theirs["bgnbd_ll"],
                    "gamma_gamma_ll_ours_minus_lifetimes": gg.log_likelihood
                    - theirs["gamma_gamma_ll"],
                }
                worst = max(row["agreement"]["bgnbd_relative_difference"].values())
                echo(
                    f"    {size:>9,} customers: lifetimes {theirs['version']} BG/NBD {theirs['bgnbd_fit_s']:.2f}s "
                    f"+ GG {theirs['gamma_gamma_fit_s']:.2f}s; max param diff {worst:.2e}, "
                    f"ΔLL(ours-lifetimes) {row['agreement']['bgnbd_ll_ours_minus_lifetimes']:+.3f}"
                )
        results["sizes"][str(size)] = row
    return results


def relative_to_truth(fitted: dict[str, float], truth: dict[str, float]) -> dict[str, float]:
    return {
        k: (fitted[k] - truth[k]) / truth[k]
        for k in fitted
        if k in truth and not math.isnan(fitted[k])
    }
