"""Properties: arrival order, sweep timing and redelivery do not change where a customer ends.

The reference is in-order processing: events sorted by business time, with the time rules
swept right before each one. The system under test sees the same events in another order,
each processed at some wall time no earlier than its business time, with sweeps at
arbitrary moments in between, and a final sweep strictly after the last processing (a stage
entered at the instant of a sweep is only left by a later one).

One divergence is inherent and pinned below: a late purchase can shorten g so much that an
earlier gap becomes churn-long in hindsight; in order the customer churned there and was won
back (growth), while out of order they may already have matured, and stages only move along
the table (never mature -> growth).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import event as note_case
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.lifecycle.arrival import interleaved

from services.lifecycle import domain as d

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = d.LifecyclePolicy()


@dataclass(frozen=True)
class Arrival:
    purchase_times: list[datetime]
    order: list[int]  # processing order, as indices into purchase_times
    delays: list[timedelta]  # wall time passing before each processing
    sweep_before: list[bool]
    final_delay: timedelta


@st.composite
def arrivals(draw: st.DrawFn) -> Arrival:
    n = draw(st.integers(min_value=1, max_value=6))
    days = st.integers(min_value=0, max_value=700)
    hours = st.integers(min_value=0, max_value=23)
    times = [T0 + timedelta(days=draw(days), hours=draw(hours)) for _ in range(n)]
    delay = st.integers(min_value=0, max_value=400).map(lambda x: timedelta(days=x))
    return Arrival(
        purchase_times=times,
        order=draw(st.permutations(range(n))),
        delays=[draw(delay) for _ in range(n)],
        sweep_before=[draw(st.booleans()) for _ in range(n)],
        final_delay=draw(delay),
    )


def _buy(state, index: int, at: datetime) -> d.Decision:
    return d.on_purchase(state, POLICY, order_id=f"o{index}", amount=Decimal("10.00"), at=at)


def in_order(arrival: Arrival, final: datetime) -> d.CustomerLifecycle:
    state = None
    for index in sorted(range(len(arrival.purchase_times)), key=arrival.purchase_times.__getitem__):
        at = arrival.purchase_times[index]
        if state is not None:
            state = d.evaluate(state, POLICY, as_of=at).state
        state = _buy(state, index, at).state
    assert state is not None
    return d.evaluate(state, POLICY, as_of=final).state


def as_arrived(arrival: Arrival) -> tuple[d.CustomerLifecycle, list[d.StageChange], datetime]:
    state, history, wall = None, [], T0
    for step, index in enumerate(arrival.order):
        at = arrival.purchase_times[index]
        wall = max(wall, at) + arrival.delays[step]
        if state is not None and arrival.sweep_before[step]:
            swept = d.evaluate(state, POLICY, as_of=wall)
            state, history = swept.state, history + list(swept.changes)
        decision = _buy(state, index, at)
        state, history = decision.state, history + list(decision.changes)
    final = wall + arrival.final_delay + timedelta(seconds=1)
    assert state is not None
    swept = d.evaluate(state, POLICY, as_of=final)
    return swept.state, history + list(swept.changes), final


@settings(max_examples=600, deadline=None)
@given(arrivals())
def test_any_arrival_order_ends_in_the_stage_of_in_order_processing(arrival: Arrival) -> None:
    state, _, final = as_arrived(arrival)
    reference = in_order(arrival, final)
    assert state.purchase_days == reference.purchase_days
    if (state.stage, reference.stage) == (d.Stage.MATURE, d.Stage.GROWTH):
        # the inherent divergence: matured before a late purchase revealed a churn-long gap
        note_case("matured before a churn-long gap was revealed")
        assert not d.is_established(state, POLICY)
        restart = d.relationship_start(state, POLICY)
        assert restart is not None and restart > min(arrival.purchase_times)
        return
    assert state.stage is reference.stage
    assert d.due_times(state, POLICY) == d.due_times(reference, POLICY)


@settings(max_examples=200, deadline=None)
@given(arrivals())
def test_history_never_goes_back_in_business_time(arrival: Arrival) -> None:
    state, history, final = as_arrived(arrival)
    times = [change.at for change in history]
    assert times == sorted(times)
    assert all(at <= final for at in times)
    for before, after in itertools.pairwise(history):
        assert before.to_stage is after.from_stage
    assert history[-1].to_stage is state.stage


@settings(max_examples=200, deadline=None)
@given(
    arrivals(), st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=2000)
)
def test_sweeping_twice_equals_sweeping_once(arrival: Arrival, first: int, second: int) -> None:
    state, _, _ = as_arrived(arrival)
    early, late = sorted(
        (state.since + timedelta(days=first), state.since + timedelta(days=second))
    )
    once = d.evaluate(state, POLICY, as_of=late)
    step = d.evaluate(state, POLICY, as_of=early)
    twice = d.evaluate(step.state, POLICY, as_of=late)
    assert step.changes + twice.changes == once.changes
    assert twice.state == once.state


@settings(max_examples=200, deadline=None)
@given(arrivals())
def test_redelivered_purchases_change_nothing(arrival: Arrival) -> None:
    state, _, _ = as_arrived(arrival)
    for index, at in enumerate(arrival.purchase_times):
        again = _buy(state, index, at)
        assert again.changes == ()
        assert again.state == state


# --- purchases and complaints interleaved (two topics: each in order, together not) ------


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str  # "buy", "open", "close"
    key: str
    severity: str = "high"
    satisfaction: int | None = None


def test_a_purchase_at_the_instant_an_inactivity_churn_fell_due_prevents_it() -> None:
    """A time rule fires only after its due time, so in business order a purchase at that very
    instant comes first: reactivated, mature when established. A sweep that ran before the
    purchase arrived churned the customer at that instant; the purchase then restores the stage
    business order gives (found by the property below: purchases on days 135, 225, 540, and 1350,
    when inactivity fell due, arriving after a sweep)."""
    days = (135, 225, 540)
    state = None
    for n in days:
        state = _buy(state, n, T0 + timedelta(days=n)).state
    assert state is not None
    churned = d.evaluate(state, POLICY, as_of=T0 + timedelta(days=1351)).state
    due = T0 + timedelta(days=1350)
    assert (churned.stage, churned.reason, churned.since) == (
        d.Stage.CHURNED,
        d.Reason.INACTIVE,
        due,
    )
    late = _buy(churned, 1350, due).state
    in_order = _buy(state, 1350, due).state
    assert in_order.stage is d.Stage.MATURE
    assert late.stage is in_order.stage


@st.composite
def mixed(
    draw: st.DrawFn,
) -> tuple[list[Event], list[Event], list[timedelta], list[bool], timedelta]:
    when = st.builds(
        lambda dd, hh: T0 + timedelta(days=dd, hours=hh),
        st.integers(min_value=0, max_value=400),
        st.integers(min_value=0, max_value=23),
    )
    purchases = [Event(draw(when), "buy", f"o{i}") for i in range(draw(st.integers(1, 5)))]
    complaints: list[Event] = []
    for i in range(draw(st.integers(0, 3))):
        opened = draw(when)
        severity = draw(st.sampled_from(["high", "critical", "low"]))
        complaints.append(Event(opened, "open", f"c{i}", severity))
        if draw(st.booleans()):
            closed = opened + timedelta(hours=draw(st.integers(1, 24 * 60)))
            sat = draw(st.integers(1, 5))
            complaints.append(Event(closed, "close", f"c{i}", severity, sat))
    # each topic keeps its own order of business time; the two interleave arbitrarily
    arrival = interleaved(
        draw, sorted(purchases, key=lambda e: e.at), sorted(complaints, key=lambda e: e.at)
    )
    n = len(arrival)
    delay = st.integers(min_value=0, max_value=300).map(lambda x: timedelta(days=x))
    delays = [draw(delay) for _ in range(n)]
    sweeps = [draw(st.booleans()) for _ in range(n)]
    return purchases + complaints, arrival, delays, sweeps, draw(delay)


def _apply(state, event: Event) -> d.Decision:
    if event.kind == "buy":
        return d.on_purchase(state, POLICY, order_id=event.key, amount=Decimal(5), at=event.at)
    if event.kind == "open":
        return d.on_complaint_opened(
            state, POLICY, complaint_id=event.key, severity=d.Severity(event.severity), at=event.at
        )
    return d.on_complaint_closed(
        state, POLICY, complaint_id=event.key, satisfaction=event.satisfaction, at=event.at
    )


_KIND_ORDER = {"buy": 0, "open": 1, "close": 2}


@settings(max_examples=600, deadline=None)
@given(mixed())
def test_interleaved_topics_end_in_the_stage_of_in_order_processing(case) -> None:
    events, arrival, delays, sweeps, final_delay = case
    state, wall = None, T0
    for event, delay, sweep in zip(arrival, delays, sweeps, strict=True):
        wall = max(wall, event.at) + delay
        if state is not None and sweep:
            state = d.evaluate(state, POLICY, as_of=wall).state
        state = _apply(state, event).state
    final = wall + final_delay + timedelta(seconds=1)
    state = d.evaluate(state, POLICY, as_of=final).state

    reference = None
    for event in sorted(events, key=lambda e: (e.at, _KIND_ORDER[e.kind])):
        if reference is not None:
            reference = d.evaluate(reference, POLICY, as_of=event.at).state
        reference = _apply(reference, event).state
    reference = d.evaluate(reference, POLICY, as_of=final).state
    assert state.stage is reference.stage
