"""The lifecycle rules and their edges (DOMAIN.md §1 plus the lead's decisions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.lifecycle import domain as d
from services.lifecycle.domain import LifecyclePolicy, Reason, Stage, Trigger
from shared.errors import NotRetryable

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = LifecyclePolicy()


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def moves(changes) -> list[tuple[Stage | None, Stage, Reason, datetime]]:
    return [(c.from_stage, c.to_stage, c.reason, c.at) for c in changes]


# --- purchase days, g, first/last ------------------------------------------------------


def test_with_fewer_than_two_purchase_days_g_is_the_default(journey) -> None:
    j = journey()
    j.register(day(0))
    assert d.median_gap_days(j.now, POLICY) == 60.0
    j.buy(day(10))
    assert d.median_gap_days(j.now, POLICY) == 60.0
    # default g = 60 -> lapse after max(60, 2*60) = 120 days, churn after max(180, 4*60) = 240
    assert d.due_times(j.now, POLICY) == (day(130), day(250))


def test_g_is_the_median_gap_between_distinct_purchase_days(journey) -> None:
    j = journey()
    for n in (0, 10, 40):
        j.buy(day(n))
    assert d.median_gap_days(j.now, POLICY) == 20.0  # gaps 10, 30
    j.buy(day(100))
    assert d.median_gap_days(j.now, POLICY) == 30.0  # gaps 10, 30, 60
    j.buy(day(101))
    assert d.median_gap_days(j.now, POLICY) == 20.0  # gaps 1, 10, 30, 60


def test_same_day_purchases_are_one_purchase_day(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(0) + timedelta(hours=3))
    j.buy(day(0) + timedelta(hours=6))
    assert j.now.purchase_days == (day(0).date(),)
    assert d.median_gap_days(j.now, POLICY) == 60.0
    j.buy(day(100))
    j.buy(day(100) + timedelta(hours=1))
    # two distinct days only, although five orders and 100 days of tenure
    assert j.stage is Stage.GROWTH
    assert d.median_gap_days(j.now, POLICY) == 100.0
    assert j.now.last_purchase_at == day(100) + timedelta(hours=1)


def test_purchase_days_are_utc_dates() -> None:
    tokyo = timezone(timedelta(hours=9))
    morning_tokyo = datetime(2025, 3, 2, 8, 0, tzinfo=tokyo)  # 1 March, 23:00 UTC
    state = d.on_purchase(None, POLICY, order_id="a", amount=Decimal(1), at=morning_tokyo).state
    state = d.on_purchase(
        state, POLICY, order_id="b", amount=Decimal(1), at=datetime(2025, 3, 1, 1, tzinfo=UTC)
    ).state
    assert state.purchase_days == (datetime(2025, 3, 1).date(),)


def test_a_free_order_counts_as_a_purchase_day(journey) -> None:
    j = journey()
    assert [c.reason for c in j.buy(day(0), amount="0.00")] == [
        Reason.REGISTERED,
        Reason.FIRST_PURCHASE,
    ]
    assert j.now.purchase_days == (day(0).date(),)


# --- maturity --------------------------------------------------------------------------


@pytest.mark.parametrize(("third_day", "mature"), [(89, False), (90, True)])
def test_maturity_needs_the_tenure_counted_in_days(third_day, mature, journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(30))
    j.buy(day(third_day))
    assert (j.stage is Stage.MATURE) is mature


def test_maturity_needs_enough_distinct_days_not_orders(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(100))
    j.buy(day(100) + timedelta(hours=2))
    assert j.stage is Stage.GROWTH
    assert moves(j.buy(day(101))) == [(Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, day(101))]


def test_a_purchase_for_a_mature_customer_changes_nothing(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    assert j.buy(day(100)) == ()
    assert (j.stage, j.now.since) == (Stage.MATURE, day(90))


# --- refunds ---------------------------------------------------------------------------


def test_a_partial_refund_keeps_the_purchase_day(journey) -> None:
    j = journey()
    j.buy(day(0), order_id="a", amount="100.00")
    j.buy(day(20), order_id="b", amount="100.00")
    assert j.refund(day(21), order_id="b", total="99.99") == ()
    assert j.now.purchase_days == (day(0).date(), day(20).date())


def test_a_full_refund_removes_the_purchase_day_and_moves_the_due_times(journey) -> None:
    j = journey()
    j.buy(day(0), order_id="a", amount="100.00")
    j.buy(day(20), order_id="b", amount="100.00")
    due_before = d.due_times(j.now, POLICY)
    j.refund(day(21), order_id="b", total="60.00")
    assert j.refund(day(22), order_id="b", total="100.00") == ()  # the second refund completes it
    assert j.refund(day(23), order_id="b", total="60.00") == ()  # a late, older total is no news
    assert j.now.purchase_days == (day(0).date(),)
    assert j.now.last_purchase_at == day(0)
    assert d.due_times(j.now, POLICY) == (day(120), day(240))
    assert due_before == (day(80), day(200))  # g = 20: max(60, 40) = 60, max(180, 80) = 180
    assert j.stage is Stage.GROWTH  # a refund never moves the stage


def test_refunds_never_take_maturity_away(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n), order_id=f"o{n}", amount="10.00")
    for n in (0, 45, 90):
        assert j.refund(day(95), order_id=f"o{n}", total="10.00") == ()
    assert j.stage is Stage.MATURE
    assert j.now.purchase_days == ()
    # no purchase counts: idle time runs from registration (day 0), g = default
    assert d.due_times(j.now, POLICY) == (day(120), day(240))


def test_a_refund_seen_before_its_order_waits_for_it(journey) -> None:
    j = journey()
    j.register(day(0))
    j.refund(day(5), order_id="a", total="30.00")
    assert j.buy(day(4), order_id="a", amount="30.00") == ()  # arrives fully refunded
    assert (j.stage, j.now.purchase_days) == (Stage.PROSPECT, ())
    assert j.now.pending_refunds == {}
    assert [c.reason for c in j.buy(day(6), order_id="b")] == [Reason.FIRST_PURCHASE]


def test_a_refund_of_nothing_changes_nothing(journey) -> None:
    # The contract's Money allows 0; scoring and profile take such a refund, and so does this.
    j = journey()
    j.buy(day(0), order_id="a", amount="30.00")
    assert j.refund(day(1), order_id="a", total="0.00") == ()
    assert j.refund(day(1), order_id="not-seen-yet", total="0.00") == ()
    assert j.now.purchase_days == (day(0).date(),)
    assert j.now.pending_refunds == {}


def test_a_free_order_cannot_be_fully_refunded(journey) -> None:
    j = journey()
    j.buy(day(0), order_id="gift", amount="0.00")
    j.refund(day(1), order_id="gift", total="5.00")
    assert j.now.purchase_days == (day(0).date(),)


# --- time rules ------------------------------------------------------------------------


def test_a_time_rule_fires_only_strictly_after_its_threshold(journey) -> None:
    j = journey()
    j.buy(day(0))
    assert j.evaluate(day(120)) == ()  # idle exactly 120 days: not more than the threshold
    assert moves(j.evaluate(day(120) + timedelta(microseconds=1))) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(120))
    ]
    assert j.evaluate(day(240)) == ()
    assert moves(j.evaluate(day(240) + timedelta(seconds=1))) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.INACTIVE, day(240))
    ]


def test_evaluate_runs_to_a_fixed_point_each_change_at_its_own_time(journey) -> None:
    j = journey()
    j.buy(day(0))
    assert moves(j.evaluate(day(300))) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(120)),
        (Stage.DECLINE, Stage.CHURNED, Reason.INACTIVE, day(240)),
    ]
    assert j.evaluate(day(300)) == ()  # idempotent


def test_evaluate_never_dates_a_change_beyond_as_of(journey) -> None:
    j = journey()
    j.buy(day(0))
    (change,) = j.evaluate(day(200))
    assert change.at == day(120) <= day(200)
    assert j.stage is Stage.DECLINE  # churn is due at 240, after as_of


def test_evaluating_in_the_past_of_the_stage_changes_nothing(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(100))  # g = 100 -> lapse after 200 days, due day 300
    assert j.evaluate(day(50)) == ()
    assert j.evaluate(day(299)) == ()


def test_lapsing_uses_the_customers_own_rhythm(journey) -> None:
    j = journey()
    for n in (0, 100, 200):
        j.buy(day(n))
    # g = 100: lapse after max(60, 200) = 200 days, churn after max(180, 400) = 400
    assert d.due_times(j.now, POLICY) == (day(400), day(600))
    assert j.evaluate(day(399)) == ()
    assert [c.at for c in j.evaluate(day(601))] == [day(400), day(600)]


def test_due_times_per_stage(journey) -> None:
    j = journey()
    j.register(day(0))
    assert d.due_times(j.now, POLICY) == (None, None)
    j.buy(day(10))
    assert d.due_times(j.now, POLICY) == (day(130), day(250))
    j.evaluate(day(131))
    assert d.due_times(j.now, POLICY) == (None, day(250))
    j.evaluate(day(251))
    assert d.due_times(j.now, POLICY) == (None, None)


def test_a_recovered_idle_customer_lapses_from_the_recovery_not_in_its_past(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(100), "c1")
    j.close(day(110), "c1", 5)
    assert (j.stage, j.now.since) == (Stage.GROWTH, day(110))
    # idle since day 0, over the 120-day threshold only after day 120
    assert d.due_times(j.now, POLICY) == (day(120), day(240))
    j.complain(day(115), "c2")
    j.close(day(200), "c2", 5)
    assert d.due_times(j.now, POLICY)[0] == day(200)  # threshold long past: due at since
    assert moves(j.evaluate(day(201))) == [(Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(200))]


def test_a_complaint_decline_churns_by_inactivity_counted_from_the_last_purchase(
    journey,
) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.complain(day(100), "c1")
    # g = 45: churn after max(180, 180) days from day 90
    assert d.due_times(j.now, POLICY) == (None, day(270))
    assert moves(j.evaluate(day(271))) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.INACTIVE, day(270))
    ]


# --- complaints ------------------------------------------------------------------------


@pytest.mark.parametrize("severity", ["low", "medium"])
def test_low_and_medium_complaints_never_move_the_stage(severity, journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    assert j.complain(day(100), "c1", severity) == ()
    assert j.close(day(101), "c1", 1) == ()
    assert j.reopen(day(102), "c1") == ()
    assert j.stage is Stage.MATURE
    assert j.now.open_complaints == {"c1"}


def test_policy_decides_which_severities_move_the_stage(journey) -> None:
    j = journey(LifecyclePolicy(complaint_severities={"critical"}))
    j.buy(day(0))
    assert j.complain(day(1), "c1", "high") == ()
    assert [c.reason for c in j.complain(day(2), "c2", "critical")] == [Reason.COMPLAINT]


def test_a_complaint_remembers_the_stage_before_and_recovery_returns_to_it(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.complain(day(100), "c1", "critical")
    assert j.now.stage_before_decline is Stage.MATURE
    assert j.now.decline_causes == {"c1"}
    assert moves(j.close(day(103), "c1", 5)) == [
        (Stage.DECLINE, Stage.MATURE, Reason.SERVICE_RECOVERY, day(103))
    ]
    assert j.now.decline_causes == frozenset()
    assert j.now.stage_before_decline is None


@pytest.mark.parametrize("satisfaction", [1, 3, None])
def test_an_unsatisfied_closure_blocks_recovery_until_a_purchase(satisfaction, journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    assert j.close(day(20), "c1", satisfaction) == ()
    assert j.stage is Stage.DECLINE
    assert moves(j.buy(day(30))) == [(Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, day(30))]


def test_recovery_threshold_is_policy(journey) -> None:
    j = journey(LifecyclePolicy(recovery_min_satisfaction=5))
    j.buy(day(0))
    j.complain(day(10), "c1")
    assert j.close(day(20), "c1", 4) == ()
    assert j.stage is Stage.DECLINE


def test_a_complaint_while_in_a_lapsing_decline_neither_moves_nor_joins(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    assert j.complain(day(131), "c1", "critical") == ()
    assert (j.stage, j.now.reason, j.now.decline_causes) == (
        Stage.DECLINE,
        Reason.LAPSING,
        frozenset(),
    )
    assert j.close(day(132), "c1", 5) == ()  # no service recovery out of a lapse
    assert j.stage is Stage.DECLINE


def test_a_complaint_while_in_a_complaint_decline_joins_the_causes(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    assert j.complain(day(11), "c2", "critical") == ()
    assert j.complain(day(12), "c3", "low") == ()  # low severity does not join
    assert j.now.decline_causes == {"c1", "c2"}
    assert j.now.since == day(10)


def test_two_overlapping_complaints_both_need_a_satisfied_closure(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.complain(day(100), "c1")
    j.complain(day(101), "c2")
    assert j.close(day(102), "c1", 5) == ()
    assert j.stage is Stage.DECLINE
    assert moves(j.close(day(104), "c2", 4)) == [
        (Stage.DECLINE, Stage.MATURE, Reason.SERVICE_RECOVERY, day(104))
    ]


def test_one_unsatisfied_of_two_overlapping_complaints_blocks_recovery(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.complain(day(11), "c2")
    j.close(day(12), "c1", 2)
    assert j.close(day(13), "c2", 5) == ()
    assert j.stage is Stage.DECLINE
    # ... unless the unsatisfied one is reopened and then closed satisfied
    assert j.reopen(day(14), "c1") == ()
    assert moves(j.close(day(15), "c1", 5)) == [
        (Stage.DECLINE, Stage.GROWTH, Reason.SERVICE_RECOVERY, day(15))
    ]


def test_closing_a_complaint_that_did_not_cause_the_decline_recovers_nothing(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(1), "c-low", "low")
    j.complain(day(10), "c1")
    assert j.close(day(11), "c-low", 5) == ()
    assert j.stage is Stage.DECLINE


def test_a_purchase_ends_a_complaint_decline_and_forgets_its_causes(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.buy(day(20))
    assert (j.stage, j.now.decline_causes) == (Stage.GROWTH, frozenset())
    assert j.close(day(21), "c1", 5) == ()
    assert j.stage is Stage.GROWTH


def test_a_complaint_redelivered_or_reopened_while_open_is_idempotent(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.close(day(11), "c1", 5)
    assert j.stage is Stage.GROWTH
    assert j.complain(day(12), "c1") == ()  # a redelivered opening of a known complaint
    j.reopen(day(13), "c1")
    assert j.reopen(day(14), "c1") == ()
    assert j.now.complaints["c1"].opened_at == day(13)


def test_a_complaint_on_a_prospect_or_churned_customer_moves_nothing(journey) -> None:
    j = journey()
    j.register(day(0))
    assert j.complain(day(1), "c1", "critical") == ()
    j.buy(day(2))
    j.evaluate(day(400))
    assert j.stage is Stage.CHURNED
    assert j.complain(day(401), "c2", "critical") == ()


# --- model churn -----------------------------------------------------------------------


def test_model_churn_needs_p_alive_strictly_below_the_threshold(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    assert j.score(day(131), 0.1) == ()
    assert moves(j.score(day(132), 0.0999)) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(132))
    ]


@pytest.mark.parametrize("stage_path", ["prospect", "growth", "mature"])
def test_model_churn_only_from_decline(stage_path, journey) -> None:
    j = journey()
    j.register(day(0))
    if stage_path != "prospect":
        j.buy(day(1))
    if stage_path == "mature":
        j.buy(day(50))
        j.buy(day(100))
    assert j.score(day(101), 0.0) == ()
    assert j.stage is Stage(stage_path)


def test_a_score_older_than_the_latest_purchase_is_stale(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.buy(day(5), order_id="late")  # late purchase, before the complaint: still in decline
    assert j.stage is Stage.DECLINE
    assert j.score(day(4), 0.01) == ()  # computed before the purchase of day 5
    assert j.score(day(6), 0.01) == ()  # in order it found a growth customer: no decline yet
    assert [c.at for c in j.score(day(11), 0.01)] == [day(11)]


@pytest.mark.parametrize("scored_at", [day(100), day(120)])
def test_a_score_older_than_a_lapse_did_not_see_the_decline(scored_at, journey) -> None:
    # In order the score found a growth customer (model churn moves only decline): the lapse
    # due at day 120 happens for times after it, so a score at day 120 is before it too.
    reference = journey()
    reference.buy(day(0))
    assert reference.score(scored_at, 0.01) == ()
    reference.evaluate(day(130))
    assert (reference.stage, reference.now.reason) == (Stage.DECLINE, Reason.LAPSING)
    # The same score arriving after the sweep (a recompute `as_of` a past time, a slow
    # consumer) ends where in-order processing does.
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    assert j.score(scored_at, 0.01) == ()
    assert (j.stage, j.now.reason) == (Stage.DECLINE, Reason.LAPSING)
    assert moves(j.score(day(121), 0.01)) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(121))
    ]


def test_a_score_at_the_instant_of_a_complaint_decline_sees_it(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    assert moves(j.score(day(10), 0.01)) == [
        (Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, day(10))
    ]


# --- winback ---------------------------------------------------------------------------


def test_winback_after_inactivity_churn_re_enters_growth(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.evaluate(day(400))
    assert j.stage is Stage.CHURNED
    # won-back customers re-enter growth and re-establish: maturity counts from the return
    assert moves(j.buy(day(500))) == [(Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(500))]
    assert d.relationship_start(j.now, POLICY) == day(500)
    assert j.buy(day(510)) == ()
    assert j.buy(day(589)) == ()  # three days, 89 days of tenure in this relationship
    assert moves(j.buy(day(590))) == [(Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, day(590))]


def test_winback_after_model_churn(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    j.score(day(131), 0.02)
    assert moves(j.buy(day(132))) == [(Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(132))]


def test_late_purchase_older_than_a_model_churn_it_would_not_have_prevented(journey) -> None:
    # In order: days 0 and 10 give g = 10, so the lapse is at day 70; the score of day 140
    # finds a declining customer and churns them. The purchase of day 10 arriving after the
    # score is no sign of life at day 140.
    reference = journey()
    reference.buy(day(0))
    reference.buy(day(10))
    reference.evaluate(day(140))
    reference.score(day(140), 0.02)
    assert reference.stage is Stage.CHURNED
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    j.score(day(140), 0.02)
    assert j.buy(day(10)) == ()
    assert (j.stage, j.now.reason) == (Stage.CHURNED, Reason.MODEL_CHURN)


def test_late_purchase_older_than_a_model_churn_it_would_have_prevented(journey) -> None:
    # In order: days 0, 45, 90 (mature), 130 keep the customer mature (lapse due day 220),
    # and the score of day 150 finds no decline. Out of order the churn is undone as such.
    reference = journey()
    for n in (0, 45, 90, 130):
        reference.buy(day(n))
    reference.score(day(150), 0.02)
    assert reference.stage is Stage.MATURE
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.evaluate(day(181))  # g = 45: lapsing max(60, 90) days after day 90, at day 180
    j.score(day(185), 0.02)
    assert j.stage is Stage.CHURNED
    assert moves(j.buy(day(130))) == [
        (Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(185)),
        (Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, day(185)),
    ]
    assert d.due_times(j.now, POLICY) == d.due_times(
        d.evaluate(reference.now, POLICY, as_of=day(185)).state, POLICY
    )


def test_a_won_back_customer_can_decline_and_churn_again(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.evaluate(day(300))
    j.buy(day(400))
    # g is now 400 days: lapse after 800, churn after 1600
    assert j.evaluate(day(1200)) == ()
    assert [(c.reason, c.at) for c in j.evaluate(day(2001))] == [
        (Reason.LAPSING, day(1200)),
        (Reason.INACTIVE, day(2000)),
    ]
    assert [c.reason for c in j.history] == [
        Reason.REGISTERED,
        Reason.FIRST_PURCHASE,
        Reason.LAPSING,
        Reason.INACTIVE,
        Reason.WINBACK,
        Reason.LAPSING,
        Reason.INACTIVE,
    ]


# --- registration, redelivery ----------------------------------------------------------


def test_a_purchase_before_registration_registers_implicitly(journey) -> None:
    j = journey()
    assert moves(j.buy(day(5))) == [
        (None, Stage.PROSPECT, Reason.REGISTERED, day(5)),
        (Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, day(5)),
    ]
    assert j.register(day(1)) == ()  # the registration arrives late
    assert (j.stage, j.now.registered_at) == (Stage.GROWTH, day(1))


def test_an_older_event_than_the_implicit_registration_moves_it_earlier(journey) -> None:
    """In business order the older event registered the customer; idle time counts from it
    when no purchase counts, whichever event arrived first."""
    j = journey()
    j.buy(day(130), order_id="a")  # registers implicitly at day 130
    j.complain(day(0), "c1", severity="low")  # came first in business time, arrives late
    assert j.now.registered_at == day(0)
    j.refund(day(131), order_id="a", total="25.00")  # no purchase counts: idle since day 0
    assert moves(j.evaluate(day(132))) == [(Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(130))]


def test_a_score_older_than_the_registration_does_not_move_it(journey) -> None:
    j = journey()
    j.register(day(10))
    j.score(day(5), 0.05)
    assert j.now.registered_at == day(10)


def test_a_purchase_dated_before_registration_moves_at_registration(journey) -> None:
    j = journey()
    j.register(day(10))
    assert moves(j.buy(day(3))) == [(Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, day(10))]


def test_a_redelivered_order_changes_nothing(journey) -> None:
    j = journey()
    j.buy(day(0), order_id="a")
    state = j.now
    assert j.buy(day(0), order_id="a") == ()
    assert j.now == state


# --- late and out-of-order events ------------------------------------------------------


def test_late_purchase_reactivates_a_lapse_it_would_have_prevented(journey) -> None:
    j = journey()
    for n in (0, 20, 110, 140):  # gaps 20, 90, 30 -> g = 30, lapse after 60 days
        j.buy(day(n))
    assert j.stage is Stage.MATURE
    assert moves(j.evaluate(day(201))) == [(Stage.MATURE, Stage.DECLINE, Reason.LAPSING, day(200))]
    assert moves(j.buy(day(150))) == [(Stage.DECLINE, Stage.MATURE, Reason.REACTIVATED, day(200))]


def test_late_purchase_reactivates_to_growth_when_not_established(journey) -> None:
    j = journey()
    j.buy(day(80))
    j.evaluate(day(201))
    assert j.now.since == day(200)
    assert moves(j.buy(day(150))) == [(Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, day(200))]


def test_late_purchase_that_would_not_have_prevented_the_lapse_changes_nothing(journey) -> None:
    j = journey()
    j.buy(day(80))
    j.evaluate(day(201))
    # in order: days 79, 80 -> g = 1 -> lapse after 60 days, at day 140, before day 200
    assert j.buy(day(79)) == ()
    assert (j.stage, j.now.since) == (Stage.DECLINE, day(200))


def test_late_purchase_older_than_the_complaint_does_not_end_its_decline(journey) -> None:
    j = journey()
    for n in (0, 45, 90):
        j.buy(day(n))
    j.complain(day(100), "c1")
    assert j.buy(day(95)) == ()
    assert j.stage is Stage.DECLINE
    assert [c.reason for c in j.buy(day(105))] == [Reason.REACTIVATED]


def test_late_purchase_in_a_complaint_decline_can_make_the_stage_before_mature(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(45))
    j.complain(day(100), "c1")
    assert j.now.stage_before_decline is Stage.GROWTH
    assert j.buy(day(90)) == ()  # in order, this purchase made them mature before day 100
    assert moves(j.close(day(101), "c1", 5)) == [
        (Stage.DECLINE, Stage.MATURE, Reason.SERVICE_RECOVERY, day(101))
    ]


def test_late_complaint_older_than_the_latest_purchase_moves_nothing(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(50))
    # in order: decline at day 40, reactivated by the purchase of day 50
    assert j.complain(day(40), "c1", "critical") == ()
    assert j.stage is Stage.GROWTH


def test_late_complaint_moves_at_the_start_of_the_current_stage(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.close(day(20), "c1", 5)
    assert moves(j.complain(day(15), "c2")) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, day(20))
    ]


def test_late_purchase_undoes_an_inactivity_churn_it_would_have_prevented(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(10))  # g = 10: lapse after 60 days (day 70), churn after 180 (day 190)
    j.evaluate(day(195))
    assert j.stage is Stage.CHURNED
    # in order: days 0, 10, 100 -> reactivated at day 100 as mature; churn due day 300
    assert moves(j.buy(day(100))) == [
        (Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, day(190)),
        (Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, day(190)),
    ]
    assert d.due_times(j.now, POLICY) == (day(200), day(300))


def test_late_purchase_that_would_not_have_prevented_the_churn_changes_nothing(
    journey,
) -> None:
    j = journey()
    j.buy(day(0))
    j.buy(day(10))
    j.evaluate(day(195))
    assert j.buy(day(5)) == ()  # in order: g = 5, churn due at day 190 all the same
    assert (j.stage, j.now.since) == (Stage.CHURNED, day(190))


def test_a_late_event_never_dates_a_change_before_the_current_stage(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.evaluate(day(130))
    j.score(day(135), 0.0)
    changes = j.buy(day(125))
    assert [c.at for c in changes] == [day(135)]


# --- bad input -------------------------------------------------------------------------


def test_naive_times_are_rejected() -> None:
    naive = datetime(2025, 1, 1)
    with pytest.raises(d.InvalidLifecycleEventError, match="timezone-aware"):
        d.on_registered(None, at=naive)
    state = d.on_registered(None, at=day(0)).state
    with pytest.raises(d.InvalidLifecycleEventError):
        d.evaluate(state, POLICY, as_of=naive)
    with pytest.raises(d.InvalidLifecycleEventError):
        d.on_purchase(state, POLICY, order_id="a", amount=Decimal(1), at=naive)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: d.on_purchase(s, POLICY, order_id="a", amount=Decimal("-1"), at=day(1)),
        lambda s: d.on_refund(s, POLICY, order_id="a", refunded_total=Decimal(-1), at=day(1)),
        lambda s: d.on_complaint_closed(s, POLICY, complaint_id="c", satisfaction=6, at=day(1)),
        lambda s: d.on_complaint_closed(s, POLICY, complaint_id="c", satisfaction=0, at=day(1)),
        lambda s: d.on_value_scored(s, POLICY, p_alive=1.5, at=day(1)),
    ],
    ids=["negative-amount", "negative-refund", "satisfaction-6", "satisfaction-0", "p-alive-1.5"],
)
def test_out_of_range_inputs_are_rejected(call) -> None:
    state = d.on_registered(None, at=day(0)).state
    with pytest.raises(d.InvalidLifecycleEventError) as refused:
        call(state)
    assert isinstance(refused.value, NotRetryable)  # dead-lettered at once, not retried


def test_the_state_is_immutable(journey) -> None:
    j = journey()
    j.buy(day(0))
    before = j.now
    j.buy(day(1))
    assert len(before.orders) == 1 and len(j.now.orders) == 2
    with pytest.raises(AttributeError):
        before.stage = Stage.CHURNED  # type: ignore[misc]


def test_changes_carry_their_trigger(journey) -> None:
    j = journey()
    j.buy(day(0))
    assert [c.trigger for c in j.evaluate(day(300))] == [Trigger.TIME, Trigger.TIME]


# --- time rules run up to every event: decisions do not depend on the sweep cadence -----


def test_an_event_first_applies_the_time_rules_up_to_its_time(journey) -> None:
    j = journey()
    j.buy(day(0))
    # no sweep ran; in order the customer lapsed at day 120 and came back at day 130
    assert moves(j.buy(day(130))) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(120)),
        (Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, day(130)),
    ]


def test_a_complaint_after_the_lapse_threshold_finds_the_customer_lapsed(journey) -> None:
    j = journey()
    j.buy(day(0))
    assert moves(j.complain(day(121), "c1", "critical")) == [
        (Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, day(120))
    ]
    assert j.now.reason is Reason.LAPSING
    assert j.close(day(122), "c1", 5) == ()


def test_a_refund_moves_no_stage_but_the_time_rules_still_run_up_to_it(journey) -> None:
    j = journey()
    j.buy(day(0), order_id="a")
    assert [c.trigger for c in j.refund(day(200), order_id="a", total="1.00")] == [Trigger.TIME]


# --- complaints and purchases on two topics: either may arrive first --------------------


def test_a_complaint_seen_before_the_older_purchase_declines_once_it_arrives(journey) -> None:
    j = journey()
    assert moves(j.complain(day(10), "c1")) == [(None, Stage.PROSPECT, Reason.REGISTERED, day(10))]
    # in order: growth at day 5, decline by the complaint of day 10
    assert moves(j.buy(day(5))) == [
        (Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, day(10)),
        (Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, day(10)),
    ]
    assert j.now.decline_causes == {"c1"}
    assert moves(j.close(day(12), "c1", 5)) == [
        (Stage.DECLINE, Stage.GROWTH, Reason.SERVICE_RECOVERY, day(12))
    ]


def test_a_complaint_already_resolved_does_not_decline_when_the_older_purchase_arrives(
    journey,
) -> None:
    j = journey()
    j.complain(day(10), "c1")
    j.close(day(11), "c1", 5)
    assert moves(j.buy(day(5))) == [(Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, day(10))]


def test_a_complaint_after_the_lapse_does_not_decline_when_the_older_purchase_arrives(
    journey,
) -> None:
    j = journey()
    j.complain(day(130), "c1")
    # in order the customer lapsed at day 120 and the complaint of day 130 moved nothing
    assert [c.reason for c in j.buy(day(0))] == [Reason.FIRST_PURCHASE]
    assert [(c.reason, c.at) for c in j.evaluate(day(131))] == [(Reason.LAPSING, day(130))]


def test_late_purchase_undoing_a_lapse_brings_a_complaint_into_force(journey) -> None:
    j = journey()
    j.buy(day(80))
    j.evaluate(day(201))  # lapsed at day 200
    j.complain(day(205), "c1")  # in a lapsing decline: ignored
    assert j.now.reason is Reason.LAPSING
    # in order: purchase at day 150, complaint at 205 declines (lapse due day 270)
    assert moves(j.buy(day(150))) == [
        (Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, day(200)),
        (Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, day(205)),
    ]
    assert (j.now.reason, j.now.decline_causes) == (Reason.COMPLAINT, {"c1"})


def test_late_purchase_between_two_causing_complaints_keeps_only_the_later_one(journey) -> None:
    j = journey()
    j.buy(day(0))
    j.complain(day(10), "c1")
    j.complain(day(30), "c2")
    # in order: c1 declined at 10, the purchase of day 20 reactivated, c2 declined at 30
    assert j.buy(day(20)) == ()
    assert j.now.decline_causes == {"c2"}
    j.close(day(31), "c1", 1)  # no longer a cause: its dissatisfaction does not block
    assert [c.reason for c in j.close(day(32), "c2", 5)] == [Reason.SERVICE_RECOVERY]


def test_known_divergence_a_late_purchase_revealing_a_churn_long_gap(journey) -> None:
    # In order (days 0, 1, 46, 226.5): g = 23 at day 46, so 180.5 idle days churned the
    # customer and day 226.5 was a winback to growth. Arriving 226.5, 46, 0, 1, they matured
    # at the purchase of day 0 (g was 113 then); the purchase of day 1 reveals the gap, but
    # stages only move along the table, so they stay mature (see test_lifecycle_order.py).
    j = journey()
    for n in (226.5, 46, 0, 1):
        j.buy(day(n))
    assert j.stage is Stage.MATURE
    assert d.relationship_start(j.now, POLICY) == day(226.5)
    assert not d.is_established(j.now, POLICY)
