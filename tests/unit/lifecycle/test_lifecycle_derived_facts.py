"""Facts derived from a customer's orders are cached on the state and carried or updated across
the copies a decision makes: whatever was cached along the way, every state must derive
exactly what a fresh state with the same fields derives (same values, same UTC offsets)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.lifecycle import domain as d

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = d.LifecyclePolicy()
# A second policy whose churn threshold differs: a cached relationship must not leak across.
SHORT = d.LifecyclePolicy(churn_min_days=90, lapse_gap_multiplier=1, churn_gap_multiplier=1.5)
PLUS_TWO = timezone(timedelta(hours=2))


@dataclass(frozen=True)
class Step:
    kind: str  # purchase, free, refund, full_refund, complaint, close, score, sweep
    order: int
    days: int
    hours: int
    plus_two: bool  # the same instant written with another UTC offset
    peek: tuple[str, ...]  # derived facts read right after the step (fills the caches)


FACTS = (
    "purchase_days",
    "first_purchase_at",
    "last_purchase_at",
    "latest_order_at",
    "median_gap",
    "relationship",
)

steps = st.builds(
    Step,
    kind=st.sampled_from(
        ["purchase"] * 6 + ["free", "refund", "full_refund", "complaint", "close", "score", "sweep"]
    ),
    order=st.integers(min_value=0, max_value=7),
    # Few distinct instants, so that equal times (in two UTC offsets) and same days are common.
    days=st.sampled_from([0, 1, 2, 40, 41, 100, 230, 231, 420, 600]),
    hours=st.sampled_from([0, 12]),
    plus_two=st.booleans(),
    peek=st.lists(st.sampled_from(FACTS), max_size=4).map(tuple),
)


def at(step: Step) -> datetime:
    moment = T0 + timedelta(days=step.days, hours=step.hours)
    return moment.astimezone(PLUS_TWO) if step.plus_two else moment


def decide(state: d.CustomerLifecycle | None, step: Step) -> d.Decision | None:
    when, order_id = at(step), f"o{step.order}"
    match step.kind:
        case "purchase" | "free":
            amount = Decimal("0.00") if step.kind == "free" else Decimal("20.00")
            return d.on_purchase(state, POLICY, order_id=order_id, amount=amount, at=when)
        case "refund" | "full_refund":
            total = Decimal("20.00") if step.kind == "full_refund" else Decimal("5.00")
            return d.on_refund(state, POLICY, order_id=order_id, refunded_total=total, at=when)
        case "complaint":
            return d.on_complaint_opened(
                state, POLICY, complaint_id=f"c{step.order % 2}", severity=d.Severity.HIGH, at=when
            )
        case "close":
            return d.on_complaint_closed(
                state, POLICY, complaint_id=f"c{step.order % 2}", satisfaction=5, at=when
            )
        case "score" if state is not None:
            return d.on_value_scored(state, POLICY, p_alive=0.05, at=when)
        case "sweep" if state is not None:
            return d.evaluate(state, POLICY, as_of=when)
    return None


def apply(state: d.CustomerLifecycle | None, step: Step) -> d.CustomerLifecycle | None:
    decision = decide(state, step)
    return state if decision is None else decision.state


def peek(state: d.CustomerLifecycle, name: str) -> Any:
    if name == "relationship":
        return d.relationship_start(state, POLICY)
    return getattr(state, name)


def derived(state: d.CustomerLifecycle, *, short: bool = True) -> dict[str, Any]:
    """The derived facts; with ``short`` also the relationship under a second policy."""

    def offset(value: Any) -> Any:
        return (value, value.utcoffset()) if isinstance(value, datetime) else value

    return {
        "purchase_days": state.purchase_days,
        "first_purchase_at": offset(state.first_purchase_at),
        "last_purchase_at": offset(state.last_purchase_at),
        "latest_order_at": offset(state.latest_order_at),
        "median_gap": state.median_gap,
        "median_gap_days": d.median_gap_days(state, POLICY),
        "relationship": offset(d.relationship_start(state, POLICY)),
        "relationship_short": offset(d.relationship_start(state, SHORT)) if short else None,
        "established": d.is_established(state, POLICY),
        "due_times": d.due_times(state, POLICY),
        "idle_since": offset(d.idle_since(state)),
    }


def fresh(state: d.CustomerLifecycle) -> d.CustomerLifecycle:
    return d.CustomerLifecycle(**{f.name: getattr(state, f.name) for f in fields(state)})


@settings(max_examples=400, deadline=None)
@given(st.lists(steps, min_size=1, max_size=14))
def test_cached_facts_equal_facts_derived_anew(history: list[Step]) -> None:
    state: d.CustomerLifecycle | None = None
    for step in history:
        state = apply(state, step)
        if state is None:
            continue
        for name in step.peek:
            peek(state, name)
        assert derived(state) == derived(fresh(state)), step


def purchases_on(*days: int) -> d.CustomerLifecycle:
    """A customer with one order of 9.00 on each of these days after T0, named o<day>."""
    state = None
    for day in days:
        state = d.on_purchase(
            state, POLICY, order_id=f"o{day}", amount=Decimal("9"), at=T0 + timedelta(days=day)
        ).state
    assert state is not None
    return state


def with_some_orders(state: d.CustomerLifecycle, order_id: str) -> d.CustomerLifecycle:
    """The state as the service builds it from its row: only the order a step names (when
    stored) and the facts of them all, the relationship under POLICY."""
    named = {k: v for k, v in state.orders.items() if k == order_id}
    partial = d.CustomerLifecycle(
        **{f.name: getattr(state, f.name) for f in fields(state)} | {"orders": d.SomeOrders(named)}
    )
    return d.with_order_facts(partial, d.order_facts(state, POLICY), POLICY)


@settings(max_examples=600, deadline=None)
@given(st.lists(steps, min_size=2, max_size=14))
def test_some_orders_and_their_facts_decide_as_every_order_does(history: list[Step]) -> None:
    """A decision with SomeOrders either needs every order (IncompleteOrdersError, and the
    service decides again with them all) or equals the decision with every order."""
    state: d.CustomerLifecycle | None = None
    for step in history:
        full = decide(state, step)
        if state is not None:
            try:
                partial = decide(with_some_orders(state, f"o{step.order}"), step)
            except d.IncompleteOrdersError:
                partial = full
            assert (partial is None) == (full is None), step
            if partial is not None and full is not None:
                assert partial.changes == full.changes, step
                assert derived(partial.state, short=False) == derived(full.state, short=False)
                assert d.order_facts(partial.state, POLICY) == d.order_facts(full.state, POLICY)
                for name in ("stage", "since", "reason", "stage_before_decline", "decline_causes"):
                    assert getattr(partial.state, name) == getattr(full.state, name), step
        state = state if full is None else full.state


def test_a_late_purchase_and_a_refund_need_every_order() -> None:
    state = purchases_on(0, 10, 20)
    late = with_some_orders(state, "o5")
    try:
        d.on_purchase(late, POLICY, order_id="o5", amount=Decimal("9"), at=T0 + timedelta(days=5))
        raise AssertionError("a late purchase was decided without every order")
    except d.IncompleteOrdersError:
        pass
    try:
        d.on_refund(
            with_some_orders(state, "o10"),
            POLICY,
            order_id="o10",
            refunded_total=Decimal("9"),
            at=T0 + timedelta(days=21),
        )
        raise AssertionError("a refund was decided without every order")
    except d.IncompleteOrdersError:
        pass
    # In order, the stored facts are enough: g, maturity and due times come out as with all.
    next_one = d.on_purchase(
        with_some_orders(state, "o30"),
        POLICY,
        order_id="o30",
        amount=Decimal("9"),
        at=T0 + timedelta(days=30),
    )
    every = d.on_purchase(
        state, POLICY, order_id="o30", amount=Decimal("9"), at=T0 + timedelta(days=30)
    )
    assert derived(next_one.state, short=False) == derived(every.state, short=False)


def test_a_relationship_is_cached_per_policy() -> None:
    state = purchases_on(0, 100, 300)
    assert d.relationship_start(state, POLICY) == T0  # 200 days < max(180, 4 * 100)
    assert d.relationship_start(state, SHORT) == T0 + timedelta(
        days=300
    )  # 200 > max(90, 1.5 * 100)
    assert d.relationship_start(state, POLICY) == T0


@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=30))
def test_the_median_of_a_sorted_list_is_the_statistics_median(gaps: list[int]) -> None:
    assert d._median_of_sorted(sorted(gaps)) == float(statistics.median(gaps))
