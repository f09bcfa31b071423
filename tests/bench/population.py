"""A seeded, realistic customer population: who buys, when, how much, and who complains.

Purchase histories follow the BG/NBD story (Fader, Hardie & Lee 2005): while alive, customer i
buys at rate lambdaᵢ ~ Gamma(r, alpha) and after each repeat purchase drops out with probability
pᵢ ~ Beta(a, b). Spend per purchase follows Gamma-Gamma: zᵢⱼ ~ Gamma(p, nuᵢ), nuᵢ ~ Gamma(q, gamma).
On top of that the purchase rate is seasonal (time of day, day of week, the year-end peak),
drawn by thinning a non-homogeneous Poisson process, so the order stream has the weekly and
yearly rhythm of a real shop. Complaints follow a small share of purchases.

Everything is numpy and vectorised over customers: no I/O, no wall clock (`end` is given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY = 86_400.0
CATEGORIES = ("apparel", "shoes", "home", "beauty", "electronics", "books", "toys", "garden")
CHANNELS = ("web", "store", "app", "phone")
SEVERITIES = ("low", "medium", "high", "critical")
SEVERITY_SHARES = (0.40, 0.35, 0.20, 0.05)
COMPLAINT_CATEGORIES = ("product", "service", "delivery", "billing", "other")
COMPLAINT_CHANNELS = ("phone", "email", "web", "store", "social", "other")

# Relative demand by hour of day (UTC) and weekday (Monday first); normalised below.
_HOURLY = np.array(
    [
        *(0.15, 0.1, 0.08, 0.08, 0.1, 0.2, 0.4, 0.7, 0.9, 1.0, 1.1, 1.2),  # 0-11 h
        *(1.3, 1.2, 1.1, 1.1, 1.2, 1.4, 1.6, 1.7, 1.6, 1.3, 0.8, 0.4),  # 12-23 h
    ]
)
_WEEKLY = np.array([0.9, 0.9, 0.95, 1.0, 1.1, 1.35, 0.8])
_HOURLY = _HOURLY / _HOURLY.mean()
_WEEKLY = _WEEKLY / _WEEKLY.mean()
_YEARLY_AMPLITUDE = 0.3  # ±30% around the mean, peaking early December
_YEARLY_PEAK_DAY = 340.0
_SEASONAL_MAX = float(_HOURLY.max() * _WEEKLY.max() * (1 + _YEARLY_AMPLITUDE))


@dataclass(frozen=True)
class BgNbdTruth:
    """Population parameters, rates per day (r, alpha) and per transaction (a, b)."""

    r: float = 0.9
    alpha: float = 45.0
    a: float = 0.8
    b: float = 4.0


@dataclass(frozen=True)
class GammaGammaTruth:
    p: float = 6.0
    q: float = 4.0
    gamma: float = 15.0


def seasonality(epoch_seconds: FloatArray) -> FloatArray:
    """Relative demand at these instants (mean 1 over a year of whole weeks)."""
    days = epoch_seconds / DAY
    hour = np.floor((days % 1.0) * 24).astype(np.int64)
    weekday = (np.floor(days).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    day_of_year = days % 365.2425
    yearly = 1 + _YEARLY_AMPLITUDE * np.cos(
        2 * math.pi * (day_of_year - _YEARLY_PEAK_DAY) / 365.2425
    )
    return np.asarray(_HOURLY[hour] * _WEEKLY[weekday] * yearly, dtype=np.float64)


@dataclass(frozen=True)
class Orders:
    """The order stream, sorted by business time."""

    customer: IntArray  # index into Population.external_refs
    at: FloatArray  # epoch seconds (UTC)
    amount_cents: IntArray
    category: IntArray  # index into CATEGORIES
    channel: IntArray  # index into CHANNELS
    quantity: IntArray

    def __len__(self) -> int:
        return len(self.at)


@dataclass(frozen=True)
class Complaints:
    customer: IntArray
    at: FloatArray
    severity: IntArray  # index into SEVERITIES
    category: IntArray  # index into COMPLAINT_CATEGORIES
    channel: IntArray  # index into COMPLAINT_CHANNELS

    def __len__(self) -> int:
        return len(self.at)


@dataclass(frozen=True)
class Population:
    seed: int
    external_refs: list[str]
    orders: Orders
    complaints: Complaints

    def order_document(self, index: int, run: str) -> dict[str, object]:
        """The ingest order (shared/events/catalog.py INGEST_ORDER_SCHEMA) for order `index`."""
        o = self.orders
        quantity = int(o.quantity[index])
        cents = int(o.amount_cents[index])
        unit = cents // quantity
        total = unit * quantity
        category = CATEGORIES[int(o.category[index])]
        return {
            "order_id": f"{run}-{index}",
            "external_ref": self.external_refs[int(o.customer[index])],
            "amount": _money(total),
            "currency": "USD",
            "occurred_at": _rfc3339(float(o.at[index])),
            "channel": CHANNELS[int(o.channel[index])],
            "items": [
                {
                    "sku": f"{category[:3].upper()}-{index % 997}",
                    "category": category,
                    "quantity": quantity,
                    "unit_price": _money(unit),
                }
            ],
        }


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _rfc3339(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def generate(
    customers: int,
    *,
    seed: int,
    end: float,
    history_days: float = 730.0,
    bgnbd: BgNbdTruth = BgNbdTruth(),
    spend: GammaGammaTruth = GammaGammaTruth(),
    complaint_share: float = 0.02,
    max_orders_per_customer: int = 200,
) -> Population:
    """Customers acquired over `history_days` before `end` (epoch seconds), with their orders."""
    rng = np.random.default_rng(seed)
    start = end - history_days * DAY
    # Acquisition grows over time: later cohorts are larger (sqrt of a uniform leans late).
    birth = start + (end - start - DAY) * np.sqrt(rng.random(customers))
    rate = rng.gamma(bgnbd.r, 1 / bgnbd.alpha, customers) / DAY  # purchases per second
    dropout = rng.beta(bgnbd.a, bgnbd.b, customers)
    nu = rng.gamma(spend.q, 1 / spend.gamma, customers)
    favourite = rng.integers(0, len(CATEGORIES), customers)
    channel = rng.integers(0, len(CHANNELS), customers)

    owners: list[IntArray] = []
    times: list[FloatArray] = []
    alive = np.arange(customers)
    now = birth.copy()
    first = True
    for _ in range(max_orders_per_customer):
        if first:
            owners.append(alive.copy())
            times.append(now[alive].copy())
            first = False
        else:
            # Thinning: candidate gaps at the peak rate, kept with probability s(t)/s_max.
            pending = alive.copy()
            bought = np.zeros(len(pending), dtype=bool)
            for _attempt in range(64):
                if len(pending) == 0:
                    break
                now[pending] += rng.exponential(1 / (rate[pending] * _SEASONAL_MAX))
                beyond = now[pending] > end
                keep = ~beyond & (
                    rng.random(len(pending)) < seasonality(now[pending]) / _SEASONAL_MAX
                )
                bought[np.searchsorted(alive, pending[keep])] = True
                pending = pending[~beyond & ~keep]
            accepted = alive[bought]
            if len(accepted) == 0:
                break
            owners.append(accepted)
            times.append(now[accepted].copy())
            # BG/NBD: after each repeat purchase the customer may drop out for good.
            survives = rng.random(len(accepted)) >= dropout[accepted]
            alive = accepted[survives]
            if len(alive) == 0:
                break
    owner = np.concatenate(owners)
    at = np.concatenate(times)
    order = np.argsort(at, kind="stable")
    owner, at = owner[order], at[order]
    n = len(at)
    amount = rng.gamma(spend.p, 1 / nu[owner])
    amount_cents = np.maximum(100, np.round(amount * 100)).astype(np.int64)
    other_category = rng.integers(0, len(CATEGORIES), n)
    category = np.where(rng.random(n) < 0.7, favourite[owner], other_category)
    quantity = rng.choice(np.array([1, 1, 1, 2, 2, 3]), n)
    orders = Orders(
        customer=owner.astype(np.int64),
        at=at,
        amount_cents=amount_cents,
        category=category.astype(np.int64),
        channel=channel[owner].astype(np.int64),
        quantity=quantity.astype(np.int64),
    )
    complained = rng.random(n) < complaint_share
    complaint_at = np.minimum(at[complained] + rng.exponential(3 * DAY, int(complained.sum())), end)
    k = len(complaint_at)
    complaints = Complaints(
        customer=owner[complained].astype(np.int64),
        at=complaint_at,
        severity=rng.choice(len(SEVERITIES), k, p=SEVERITY_SHARES).astype(np.int64),
        category=rng.integers(0, len(COMPLAINT_CATEGORIES), k),
        channel=rng.integers(0, len(COMPLAINT_CHANNELS), k),
    )
    refs = [f"bench-{seed}-{i}" for i in range(customers)]
    return Population(seed=seed, external_refs=refs, orders=orders, complaints=complaints)


@dataclass(frozen=True)
class Summary:
    """BG/NBD sufficient statistics per customer, in `unit_days` units, and the mean repeat spend."""

    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    m_x: FloatArray  # mean value of the repeat transactions (0 when x = 0)


def simulate_summary(
    customers: int,
    *,
    seed: int,
    bgnbd: BgNbdTruth,
    spend: GammaGammaTruth,
    max_T: float,
    max_purchases: int = 500,
) -> Summary:
    """Draw (x, t_x, T, m_x) straight from BG/NBD and Gamma-Gamma (time in the rate's unit).

    T is uniform on [max_T/10, max_T] (staggered cohorts). Exact models, no seasonality: the
    estimators should recover `bgnbd` and `spend` within sampling error.
    """
    rng = np.random.default_rng(seed)
    T = rng.uniform(max_T / 10, max_T, customers)
    lam = rng.gamma(bgnbd.r, 1 / bgnbd.alpha, customers)
    p = rng.beta(bgnbd.a, bgnbd.b, customers)
    nu = rng.gamma(spend.q, 1 / spend.gamma, customers)
    x = np.zeros(customers)
    t_x = np.zeros(customers)
    spent = np.zeros(customers)
    clock = np.zeros(customers)
    active = np.arange(customers)
    for _ in range(max_purchases):
        clock[active] += rng.exponential(1 / lam[active])
        buying = active[clock[active] <= T[active]]
        if len(buying) == 0:
            break
        x[buying] += 1
        t_x[buying] = clock[buying]
        spent[buying] += rng.gamma(spend.p, 1 / nu[buying])
        # Dropout after a repeat purchase ends the customer's story.
        active = buying[rng.random(len(buying)) >= p[buying]]
        if len(active) == 0:
            break
    m_x = np.divide(spent, x, out=np.zeros(customers), where=x > 0)
    return Summary(x=x, t_x=t_x, T=T, m_x=m_x)
