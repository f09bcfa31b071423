"""The recompute's refit (`recompute.refit_and_score`) on simulated facts: each model is fitted
on its own, so one that the data cannot support leaves the other's outputs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from unit.scoring.scoring_simulation import simulate_bgnbd

from services.scoring import recompute
from services.scoring.domain import ModelFitError, TimeUnit, ValueModelPolicy
from services.scoring.domain.ledger import (
    MICROS_PER_DAY,
    CategoryRows,
    ComplaintRows,
    PurchaseRows,
    ReferralRows,
    RefundRows,
    ledger_facts,
)
from services.scoring.facts import Facts, micros
from services.scoring.service import CurrentModel, _empty_reference

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
EMPTY = np.zeros(0, dtype=np.int64)


def simulated_facts(customers: int = 600) -> Facts:
    """BG/NBD histories in days (the integration suite's parameters), repeats spread evenly up
    to the last purchase; spend by Gamma-Gamma (p 6, q 4, gamma 15: about 30.00 a purchase)."""
    rng = np.random.default_rng(11)
    histories = simulate_bgnbd(
        rng, customers, r=0.9, alpha=25.0, a=0.8, b=3.0, observed_from=200, observed_to=400
    )
    end = micros(AS_OF)
    spend_rate = rng.gamma(shape=4.0, scale=1 / 15.0, size=customers)
    owner, at, amount = [], [], []
    for customer, (x, t_x, age) in enumerate(
        zip(histories.x, histories.t_x, histories.T, strict=True)
    ):
        first = end - int(age * MICROS_PER_DAY)
        days = [0.0] if x == 0 else [0.0, *np.linspace(t_x / x, t_x, int(x))]
        for day in days:
            owner.append(customer)
            at.append(first + int(day * MICROS_PER_DAY))
            value = rng.gamma(shape=6.0, scale=1 / spend_rate[customer])
            amount.append(max(1, round(value * 100)) * 100)  # cents, in ten-thousandths
    ledger = ledger_facts(
        as_of=np.full(customers, end, dtype=np.int64),
        purchases=PurchaseRows(
            np.array(owner, dtype=np.int64), np.array(at, dtype=np.int64), np.array(amount)
        ),
        refunds=RefundRows(EMPTY, EMPTY, EMPTY, EMPTY),
        categories=CategoryRows(EMPTY, EMPTY, EMPTY),
        complaints=ComplaintRows(EMPTY, EMPTY, EMPTY, EMPTY),
        referrals=ReferralRows(EMPTY, EMPTY),
    )
    ids = np.arange(customers, dtype=np.int64)
    zeros = np.zeros(customers, dtype=np.int64)
    return Facts(ids, zeros, np.full(customers, end, dtype=np.int64), zeros, ledger)


def refit(facts: Facts) -> recompute.Refit:
    policy = ValueModelPolicy()
    never_fitted = CurrentModel(None, policy, TimeUnit.DAY, None, None, _empty_reference())
    return recompute.refit_and_score(
        facts, as_of=AS_OF, unit=TimeUnit.DAY, policy=policy, previous=never_fitted
    )


def test_both_models_fit_the_simulated_base() -> None:
    result = refit(simulated_facts())
    assert result.fit_error is None and result.bgnbd and result.gamma_gamma
    assert result.scored.has_clv and np.all(np.isfinite(result.scored.p_alive))


def test_spend_gamma_gamma_cannot_fit_leaves_p_alive_and_expected_purchases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Gamma-Gamma failure (one customer spending 10^13 among customers spending 100, found
    by the event fuzzer) left P(alive) unknown for everyone: lifecycle's model churn stopped."""

    def cannot_fit(*_: object, **__: object) -> None:
        raise ModelFitError("Gamma-Gamma fit ran to the parameter bounds (q=1e+06)")

    monkeypatch.setattr(recompute, "fit_gamma_gamma", cannot_fit)
    result = refit(simulated_facts())
    assert result.fit_error == "Gamma-Gamma fit ran to the parameter bounds (q=1e+06)"
    assert result.gamma_gamma is None
    assert result.bgnbd is not None and "carried_over_from" not in result.bgnbd
    scored = result.scored
    assert np.all(np.isfinite(scored.p_alive)) and np.all(
        (scored.p_alive > 0) & (scored.p_alive <= 1)
    )
    assert np.all(np.isfinite(scored.expected_purchases))
    assert not scored.has_clv and np.all(np.isnan(scored.expected_spend))
