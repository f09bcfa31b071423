"""Remembered low P(alive) scores: a score below the model-churn threshold is kept until an
order after it makes it stale, and every decision applies the kept scores again at their times,
so that events arriving after a score end where business order does."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from unit.lifecycle.arrival import interleaved

from services.lifecycle import domain as d
from services.lifecycle.domain import LifecyclePolicy, LowScore, Reason, Stage

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = LifecyclePolicy()
Journey = Callable[..., Any]  # the conftest's fixture
Event = tuple[str, int]  # ("buy" or "score", business day)
Case = tuple[list[int], list[int], list[Event], list[timedelta], list[bool], timedelta]


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def moves(changes: Iterable[d.StageChange]) -> list[tuple[Stage | None, Stage, Reason, datetime]]:
    return [(c.from_stage, c.to_stage, c.reason, c.at) for c in changes]


def test_only_scores_below_the_threshold_are_remembered(journey: Journey) -> None:
    j = journey()
    j.buy(day(0))
    assert j.score(day(10), 0.1) == ()  # at the threshold: not low
    assert j.now.low_scores == ()
    assert j.score(day(20), 0.05) == ()  # growing: moves nothing, but remembered
    assert j.now.low_scores == (LowScore(day(20), 0.05),)
    assert d.low_score(POLICY, p_alive=None, at=day(1)) is None
    assert d.low_score(POLICY, p_alive=0.0999, at=day(1)) == LowScore(day(1), 0.0999)


def test_an_order_after_a_remembered_score_forgets_it(journey: Journey) -> None:
    j = journey()
    j.buy(day(0))
    j.score(day(20), 0.05)
    j.score(day(40), 0.05)
    j.buy(day(30))
    assert j.now.low_scores == (LowScore(day(40), 0.05),)
    j.buy(day(40))  # an order at the score's instant: the score saw it, it stays
    assert j.now.low_scores == (LowScore(day(40), 0.05),)
    j.buy(day(41))
    assert j.now.low_scores == ()


def test_of_two_scores_at_one_instant_the_lower_is_kept(journey: Journey) -> None:
    j = journey()
    j.buy(day(0))
    j.score(day(20), 0.05)
    j.score(day(20), 0.07)
    j.score(day(20), 0.01)
    assert j.now.low_scores == (LowScore(day(20), 0.01),)


def test_a_churned_customer_scored_by_every_recompute_keeps_the_latest_scores(
    journey: Journey,
) -> None:
    """The remembered scores do not grow for good: a customer churned by inactivity and scored
    low every night keeps the latest LOW_SCORES_KEPT of them."""
    j = journey()
    j.buy(day(0))
    nights = [day(400 + n) for n in range(3 * d.LOW_SCORES_KEPT)]
    for night in nights:
        j.score(night, 0.05)
    assert j.now.stage is Stage.CHURNED
    assert [s.at for s in j.now.low_scores] == nights[-d.LOW_SCORES_KEPT :]
    assert j.score(nights[0], 0.01) == ()  # older than every kept one: still nothing moves
    assert len(j.now.low_scores) == d.LOW_SCORES_KEPT


def test_scores_before_the_first_event_churn_in_business_order() -> None:
    """Defect 1, pure: the score of day 150 came before the customer had a state."""
    registered = d.on_registered(None, at=day(0)).state
    joined = d.with_low_scores(registered, POLICY, [LowScore(day(150), 0.05)])
    assert joined.changes == ()  # a prospect: nothing to churn
    bought = d.on_purchase(joined.state, POLICY, order_id="a", amount=Decimal(10), at=day(1))
    assert moves(bought.changes) == [
        (Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, day(1)),
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(121)),
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(150)),
    ]
    # A score older than the first purchase found no customer to churn: stale, forgotten.
    late = d.with_low_scores(bought.state, POLICY, [LowScore(day(0.5), 0.01)])
    assert late.changes == () and late.state.low_scores == (LowScore(day(150), 0.05),)


def test_a_score_absorbed_by_an_inactivity_churn_churns_once_a_late_purchase_undoes_it(
    journey: Journey,
) -> None:
    """Defect 2, pure: in business order (days 0 and 100, lapse on day 300) the score of day
    350 churns the customer; it arrived when inactivity had churned them on day 240."""
    j = journey()
    j.buy(day(0))
    j.evaluate(day(330))
    assert (j.stage, j.now.reason, j.now.since) == (Stage.CHURNED, Reason.INACTIVE, day(240))
    assert j.score(day(350), 0.05) == ()
    assert moves(j.buy(day(100))) == [
        (Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(240)),
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(300)),
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(350)),
    ]


def test_a_late_purchase_does_not_win_back_whom_a_remembered_score_churned(
    journey: Journey,
) -> None:
    # With the purchase of day -70, g = 70: the churn is not due before day 280 (after the
    # inactivity churn of day 240), but the lapse is on day 140, before the score of day 145.
    j = journey()
    j.register(day(-80))
    j.buy(day(0))
    j.evaluate(day(250))
    j.score(day(145), 0.05)
    assert j.buy(day(-70)) == ()
    assert (j.stage, j.now.reason) == (Stage.CHURNED, Reason.INACTIVE)
    # Without the score the churn was a mistake: won back.
    k = journey()
    k.register(day(-80))
    k.buy(day(0))
    k.evaluate(day(250))
    assert moves(k.buy(day(-70)))[0] == (Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(240))


def test_a_score_older_than_a_decline_churns_if_the_known_facts_put_it_in_decline(
    journey: Journey,
) -> None:
    j = journey()
    j.register(day(-10))
    j.buy(day(0))
    j.evaluate(day(125))  # lapsing on day 120
    assert j.score(day(110), 0.05) == ()  # in order it found a growing customer
    # The purchase of day -5 (g = 5) puts the lapse on day 60, before the score.
    assert moves(j.buy(day(-5))) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(120)),
    ]


def test_a_late_complaint_before_a_remembered_score_churns(journey: Journey) -> None:
    j = journey()
    j.buy(day(0))
    j.score(day(20), 0.05)  # growing: moves nothing
    assert moves(j.complain(day(10), "c1")) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, day(10)),
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(20)),
    ]


def test_a_remembered_score_counts_under_the_threshold_in_force_when_applied(
    journey: Journey,
) -> None:
    j = journey()
    j.buy(day(0))
    j.score(day(20), 0.05)
    lower = LifecyclePolicy(model_churn_p_alive=0.01)
    decision = d.on_complaint_opened(
        j.now, lower, complaint_id="c1", severity=d.Severity.HIGH, at=day(10)
    )
    assert moves(decision.changes) == [(Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, day(10))]
    # A score not low when it arrived is not kept: a higher threshold later cannot use it.
    k = journey()
    k.buy(day(0))
    k.score(day(20), 0.15)
    higher = LifecyclePolicy(model_churn_p_alive=0.2)
    decision = d.on_complaint_opened(
        k.now, higher, complaint_id="c1", severity=d.Severity.HIGH, at=day(10)
    )
    assert decision.state.stage is Stage.DECLINE


def test_a_decision_without_remembered_scores_keeps_the_state_it_did_not_change(
    journey: Journey,
) -> None:
    j = journey()
    j.buy(day(0))
    state = j.now
    assert d.on_value_scored(state, POLICY, p_alive=0.5, at=day(5)).state is state
    assert d.with_low_scores(state, POLICY, []).state is state


# --- property: purchases and scores on two topics ----------------------------------------


@st.composite
def two_topics(draw: st.DrawFn) -> Case:
    """Purchases and scores, each topic in business order, interleaved in any way; the scores
    are low. Purchase days are at least 45 apart and scores at least 10 days from any purchase,
    to stay clear of the inherent divergences of late purchases (a shorter g revealing a
    churn-long gap; a score older than a purchase taken as stale)."""
    purchase_days = sorted(
        draw(
            st.lists(st.integers(0, 30).map(lambda n: n * 45), min_size=1, max_size=4, unique=True)
        )
    )
    scores = sorted(
        draw(
            st.lists(
                st.integers(0, 1500).filter(lambda n: all(abs(n - p) > 10 for p in purchase_days)),
                max_size=3,
                unique=True,
            )
        )
    )
    scores = [s for s in scores if s > purchase_days[-1]]  # never stale
    buys: list[Event] = [("buy", n) for n in purchase_days]
    arrival = interleaved(draw, buys, [("score", n) for n in scores])
    delay = st.integers(0, 200).map(lambda n: timedelta(days=n))
    delays = [draw(delay) for _ in arrival]
    sweeps = [draw(st.booleans()) for _ in arrival]
    return purchase_days, scores, arrival, delays, sweeps, draw(delay)


def _take(state: d.CustomerLifecycle | None, event: Event) -> d.Decision | None:
    kind, n = event
    if kind == "buy":
        return d.on_purchase(state, POLICY, order_id=f"o{n}", amount=Decimal(5), at=day(n))
    if state is None:
        return None
    return d.on_value_scored(state, POLICY, p_alive=0.05, at=day(n))


@settings(max_examples=400, deadline=None)
@given(two_topics())
def test_low_scores_arriving_in_any_order_end_where_business_order_does(case: Case) -> None:
    """Each event processed at a wall time no earlier than its business time, with sweeps at
    some of those times, compared with business order at a final time after the last."""
    purchase_days, scores, arrival, delays, sweeps, final_delay = case
    state: d.CustomerLifecycle | None = None
    early: list[LowScore] = []
    wall = day(0)
    for event, delay, sweep in zip(arrival, delays, sweeps, strict=True):
        wall = max(wall, day(event[1])) + delay
        if state is not None and sweep:
            state = d.evaluate(state, POLICY, as_of=wall).state
        if state is None and event[0] == "score":
            early.append(LowScore(day(event[1]), 0.05))
            continue
        first = state is None
        taken = _take(state, event)
        assert taken is not None
        state = taken.state
        if first and early:
            state = d.with_low_scores(state, POLICY, early).state
    assert state is not None
    final = wall + final_delay + timedelta(seconds=1)
    state = d.evaluate(state, POLICY, as_of=final).state

    reference: d.CustomerLifecycle | None = None
    in_order = sorted(
        [("buy", n) for n in purchase_days] + [("score", n) for n in scores], key=lambda e: e[1]
    )
    for event in in_order:
        decision = _take(reference, event)
        reference = decision.state if decision is not None else reference
    assert reference is not None
    reference = d.evaluate(reference, POLICY, as_of=final).state
    # The stage; not always the reason: a score older than an inactivity churn it arrives after
    # churned the customer in order, and the churn is not dated back (no change in the past).
    assert state.stage is reference.stage
