"""A small driver for lifecycle tests: one customer, fed event by event through the domain.

Every change the domain returns is checked against the transition table, so each test also
proves that no stage change outside DOMAIN.md §1 happened on its path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import pytest

from services.lifecycle import domain as d


class Journey:
    """One customer's state, fed through the public decision functions."""

    _ids = itertools.count(1)

    def __init__(self, policy: d.LifecyclePolicy | None = None) -> None:
        self.policy = policy or d.LifecyclePolicy()
        self.state: d.CustomerLifecycle | None = None
        self.history: list[d.StageChange] = []

    @property
    def now(self) -> d.CustomerLifecycle:
        assert self.state is not None, "customer has no lifecycle state yet"
        return self.state

    @property
    def stage(self) -> d.Stage:
        return self.now.stage

    def _take(self, decision: d.Decision) -> tuple[d.StageChange, ...]:
        for change in decision.changes:
            rule = d.TransitionRule(
                change.from_stage, change.to_stage, change.reason, change.trigger
            )
            assert rule in d.TRANSITIONS, f"change outside the table: {change}"
        if decision.changes:
            assert decision.state.stage is decision.changes[-1].to_stage
            assert decision.state.since == decision.changes[-1].at
        self.state = decision.state
        self.history.extend(decision.changes)
        return decision.changes

    def register(self, at: datetime) -> tuple[d.StageChange, ...]:
        return self._take(d.on_registered(self.state, at=at))

    def buy(
        self, at: datetime, *, order_id: str | None = None, amount: str = "25.00"
    ) -> tuple[d.StageChange, ...]:
        oid = order_id or f"o-{next(self._ids)}"
        return self._take(
            d.on_purchase(self.state, self.policy, order_id=oid, amount=Decimal(amount), at=at)
        )

    def refund(self, at: datetime, *, order_id: str, total: str) -> tuple[d.StageChange, ...]:
        return self._take(
            d.on_refund(
                self.state, self.policy, order_id=order_id, refunded_total=Decimal(total), at=at
            )
        )

    def complain(
        self, at: datetime, complaint_id: str, severity: str = "high"
    ) -> tuple[d.StageChange, ...]:
        return self._take(
            d.on_complaint_opened(
                self.state,
                self.policy,
                complaint_id=complaint_id,
                severity=d.Severity(severity),
                at=at,
            )
        )

    def close(
        self, at: datetime, complaint_id: str, satisfaction: int | None
    ) -> tuple[d.StageChange, ...]:
        return self._take(
            d.on_complaint_closed(
                self.state,
                self.policy,
                complaint_id=complaint_id,
                satisfaction=satisfaction,
                at=at,
            )
        )

    def reopen(
        self, at: datetime, complaint_id: str, severity: str | None = None
    ) -> tuple[d.StageChange, ...]:
        return self._take(
            d.on_complaint_reopened(
                self.state,
                self.policy,
                complaint_id=complaint_id,
                at=at,
                severity=d.Severity(severity) if severity else None,
            )
        )

    def score(self, at: datetime, p_alive: float) -> tuple[d.StageChange, ...]:
        return self._take(d.on_value_scored(self.now, self.policy, p_alive=p_alive, at=at))

    def evaluate(self, as_of: datetime) -> tuple[d.StageChange, ...]:
        return self._take(d.evaluate(self.now, self.policy, as_of=as_of))


@pytest.fixture
def journey() -> Callable[..., Journey]:
    """Factory: ``journey()`` or ``journey(policy)`` gives a fresh customer."""
    return Journey
