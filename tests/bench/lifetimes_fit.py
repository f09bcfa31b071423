"""Fit the `lifetimes` package's BG/NBD and Gamma-Gamma on the same data as our models.

Run by the harness with the Python that has `lifetimes` (the main venv when installed there,
else `.cache/bench-venv`): `python lifetimes_fit.py DATA.npz` prints the fitted parameters and
wall times as JSON. Plain script: no import of our code (it may run in another venv).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np


def main() -> None:
    data = np.load(sys.argv[1])
    x, t_x, T, m_x = data["x"], data["t_x"], data["T"], data["m_x"]
    warnings.filterwarnings("ignore")
    import lifetimes
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    started = time.perf_counter()
    bg = BetaGeoFitter(penalizer_coef=0.0)
    bg.fit(x, t_x, T)
    bgnbd_s = time.perf_counter() - started
    repeat = (x > 0) & (m_x > 0)
    started = time.perf_counter()
    gg = GammaGammaFitter(penalizer_coef=0.0)
    gg.fit(x[repeat], m_x[repeat])
    gamma_gamma_s = time.perf_counter() - started
    started = time.perf_counter()
    bg.conditional_probability_alive(x, t_x, T)
    bg.conditional_expected_number_of_purchases_up_to_time(52, x, t_x, T)
    gg.conditional_expected_average_profit(x[repeat], m_x[repeat])
    predict_s = time.perf_counter() - started
    result = {
        "version": lifetimes.__version__,
        "numpy": np.__version__,
        "bgnbd": {k: float(bg.params_[k]) for k in ("r", "alpha", "a", "b")},
        "gamma_gamma": {k: float(gg.params_[k]) for k in ("p", "q", "v")},
        "bgnbd_fit_s": bgnbd_s,
        "gamma_gamma_fit_s": gamma_gamma_s,
        "predict_s": predict_s,
    }
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
