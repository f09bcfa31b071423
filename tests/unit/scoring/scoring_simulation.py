"""Draw customers from the BG/NBD and Gamma-Gamma processes themselves (not their likelihoods)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimulatedHistories:
    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray


def simulate_bgnbd(
    rng: np.random.Generator,
    n: int,
    *,
    r: float,
    alpha: float,
    a: float,
    b: float,
    observed_from: float,
    observed_to: float,
) -> SimulatedHistories:
    """Each customer: rate ~ Gamma(r, rate alpha), dropout p ~ Beta(a, b), first purchase at 0,
    observed for T ~ U(observed_from, observed_to); Poisson purchases while alive, and after
    every repeat purchase the customer drops out with probability p."""
    rate = rng.gamma(shape=r, scale=1.0 / alpha, size=n)
    dropout = rng.beta(a, b, size=n)
    age = rng.uniform(observed_from, observed_to, size=n)
    repeats = np.zeros(n)
    last = np.zeros(n)
    clock = np.zeros(n)
    active = np.ones(n, dtype=bool)
    for _ in range(100_000):  # bounded: every round ends at least one purchase per active customer
        customers = np.flatnonzero(active)
        if len(customers) == 0:
            break
        clock[customers] += rng.exponential(1.0 / rate[customers])
        beyond = clock[customers] > age[customers]
        active[customers[beyond]] = False
        buyers = customers[~beyond]
        repeats[buyers] += 1
        last[buyers] = clock[buyers]
        drops = rng.random(len(buyers)) < dropout[buyers]
        active[buyers[drops]] = False
    return SimulatedHistories(x=repeats, t_x=last, T=age)


def simulate_gamma_gamma(
    rng: np.random.Generator, x: np.ndarray, *, p: float, q: float, gamma: float
) -> np.ndarray:
    """Mean of each customer's x transaction values: value ~ Gamma(p, rate nu), nu ~ Gamma(q, rate gamma)."""
    nu = rng.gamma(shape=q, scale=1.0 / gamma, size=len(x))
    owner = np.repeat(np.arange(len(x)), x.astype(int))
    values = rng.gamma(shape=p, scale=1.0 / nu[owner])
    return np.bincount(owner, weights=values, minlength=len(x)) / np.maximum(x, 1)
