"""The transition table drives these tests: every row happens, every other move never does."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.lifecycle import domain as d
from services.lifecycle.domain import Reason, Stage, TransitionRule, Trigger

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


# --- stage contexts: reach a stage by a realistic path ---------------------------------


def _prospect(j):
    j.register(day(0))
    return j


def _growth(j):
    j.buy(day(0), order_id="first")
    return j


def _growth_with_low_complaint(j):
    j.buy(day(0), order_id="first")
    j.complain(day(1), "c-low", "low")
    return j


def _mature(j):
    for n in (0, 45, 90):
        j.buy(day(n), order_id=f"o{n}")
    assert j.stage is Stage.MATURE
    return j


def _lapsing_decline(j):
    j.buy(day(0), order_id="first")
    j.evaluate(day(130))
    assert (j.stage, j.now.reason) == (Stage.DECLINE, Reason.LAPSING)
    return j


def _complaint_decline(j):
    _mature(j)
    j.complain(day(100), "c-cause", "critical")
    assert (j.stage, j.now.reason) == (Stage.DECLINE, Reason.COMPLAINT)
    return j


def _inactive_churn(j):
    j.buy(day(0), order_id="first")
    j.evaluate(day(300))
    assert (j.stage, j.now.reason) == (Stage.CHURNED, Reason.INACTIVE)
    return j


def _model_churn(j):
    _lapsing_decline(j)
    j.score(day(140), 0.01)
    assert (j.stage, j.now.reason) == (Stage.CHURNED, Reason.MODEL_CHURN)
    return j


CONTEXTS: dict[Stage, list[Callable]] = {
    Stage.PROSPECT: [_prospect],
    Stage.GROWTH: [_growth, _growth_with_low_complaint],
    Stage.MATURE: [_mature],
    Stage.DECLINE: [_lapsing_decline, _complaint_decline],
    Stage.CHURNED: [_inactive_churn, _model_churn],
}


# --- every row of the table happens, exactly as written --------------------------------


def _row_registered(j):
    return j.register(day(0)), day(0)


def _row_first_purchase(j):
    j.register(day(0))
    return j.buy(day(5)), day(5)


def _row_established(j):
    j.buy(day(0))
    j.buy(day(45))
    return j.buy(day(90)), day(90)


def _row_growth_lapsing(j):
    j.buy(day(0))  # g = default 60 -> lapsing after max(60, 120) days
    return j.evaluate(day(200)), day(120)


def _row_mature_lapsing(j):
    _mature(j)  # g = 45 -> lapsing after max(60, 90) days from day 90
    return j.evaluate(day(200)), day(180)


def _row_growth_complaint(j):
    j.buy(day(0))
    return j.complain(day(10), "c1", "high"), day(10)


def _row_mature_complaint(j):
    _mature(j)
    return j.complain(day(100), "c1", "critical"), day(100)


def _row_growth_complaint_reopened(j):
    j.buy(day(0))
    j.complain(day(10), "c1", "high")
    j.close(day(20), "c1", 5)
    assert j.stage is Stage.GROWTH
    return j.reopen(day(30), "c1"), day(30)


def _row_mature_complaint_reopened(j):
    _mature(j)
    j.complain(day(100), "c1", "high")
    j.close(day(101), "c1", 4)
    assert j.stage is Stage.MATURE
    return j.reopen(day(102), "c1"), day(102)


def _row_inactive(j):
    j.buy(day(0))
    j.evaluate(day(130))
    return j.evaluate(day(300)), day(240)


def _row_model_churn(j):
    _lapsing_decline(j)
    return j.score(day(140), 0.05), day(140)


def _row_reactivated_growth(j):
    _lapsing_decline(j)
    return j.buy(day(140)), day(140)


def _row_reactivated_mature(j):
    _mature(j)
    j.evaluate(day(200))
    return j.buy(day(210)), day(210)


def _row_recovery_growth(j):
    j.buy(day(0))
    j.complain(day(10), "c1", "high")
    return j.close(day(20), "c1", 4), day(20)


def _row_recovery_mature(j):
    _complaint_decline(j)
    return j.close(day(110), "c-cause", 5), day(110)


def _row_winback(j):
    _inactive_churn(j)
    return j.buy(day(310)), day(310)


def R(frm: Stage | None, to: Stage, reason: Reason, trigger: Trigger) -> TransitionRule:
    return TransitionRule(frm, to, reason, trigger)


ROW_SCENARIOS: dict[TransitionRule, Callable] = {
    R(None, Stage.PROSPECT, Reason.REGISTERED, Trigger.REGISTRATION): _row_registered,
    R(Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, Trigger.PURCHASE): _row_first_purchase,
    R(Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, Trigger.PURCHASE): _row_established,
    R(Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, Trigger.TIME): _row_growth_lapsing,
    R(Stage.MATURE, Stage.DECLINE, Reason.LAPSING, Trigger.TIME): _row_mature_lapsing,
    R(
        Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_OPENED
    ): _row_growth_complaint,
    R(
        Stage.MATURE, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_OPENED
    ): _row_mature_complaint,
    R(
        Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_REOPENED
    ): _row_growth_complaint_reopened,
    R(
        Stage.MATURE, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_REOPENED
    ): _row_mature_complaint_reopened,
    R(Stage.DECLINE, Stage.CHURNED, Reason.INACTIVE, Trigger.TIME): _row_inactive,
    R(Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, Trigger.VALUE_SCORED): _row_model_churn,
    R(Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, Trigger.PURCHASE): _row_reactivated_growth,
    R(Stage.DECLINE, Stage.MATURE, Reason.REACTIVATED, Trigger.PURCHASE): _row_reactivated_mature,
    R(
        Stage.DECLINE, Stage.GROWTH, Reason.SERVICE_RECOVERY, Trigger.COMPLAINT_CLOSED
    ): _row_recovery_growth,
    R(
        Stage.DECLINE, Stage.MATURE, Reason.SERVICE_RECOVERY, Trigger.COMPLAINT_CLOSED
    ): _row_recovery_mature,
    R(Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, Trigger.PURCHASE): _row_winback,
}


def test_the_table_is_domain_md_section_1() -> None:
    assert len(d.TRANSITIONS) == len(set(d.TRANSITIONS)) == 16
    assert set(ROW_SCENARIOS) == set(d.TRANSITIONS), "every row needs exactly one scenario"


@pytest.mark.parametrize("rule", d.TRANSITIONS, ids=str)
def test_every_row_of_the_table_happens(rule: TransitionRule, journey) -> None:
    changes, expected_at = ROW_SCENARIOS[rule](journey())
    assert changes, f"the scenario for {rule} moved nothing"
    last = changes[-1]
    assert TransitionRule(last.from_stage, last.to_stage, last.reason, last.trigger) == rule
    assert last.at == expected_at


# --- every (stage, trigger) pair without a row moves nothing ---------------------------


def _provoke(j, trigger: Trigger, at: datetime) -> list[d.StageChange]:
    """Fire ``trigger`` with the input most likely to move the customer."""
    match trigger:
        case Trigger.REGISTRATION:
            return list(j.register(at))
        case Trigger.PURCHASE:
            return list(j.buy(at))
        case Trigger.REFUND:
            changes = []
            for order_id, order in j.now.orders.items():
                changes += j.refund(at, order_id=order_id, total=str(order.amount))
            return changes + list(j.refund(at, order_id="never-seen", total="5.00"))
        case Trigger.COMPLAINT_OPENED:
            return list(j.complain(at, "provocation", "critical"))
        case Trigger.COMPLAINT_REOPENED:
            changes = []
            for cid in [c for c, k in j.now.complaints.items() if not k.is_open]:
                changes += j.reopen(at, cid, "critical")
            return changes + list(j.reopen(at, "provocation", "critical"))
        case Trigger.COMPLAINT_CLOSED:
            changes = []
            for cid in list(j.now.complaints):
                changes += j.close(at, cid, 5)
            return changes + list(j.close(at, "provocation", 5))
        case Trigger.VALUE_SCORED:
            return list(j.score(at, 0.0))
        case Trigger.TIME:
            return list(j.evaluate(at + timedelta(days=3650)))
    raise AssertionError(trigger)


ALLOWED_PAIRS = {(rule.from_stage, rule.trigger) for rule in d.TRANSITIONS}
FORBIDDEN = [
    (stage, trigger, context)
    for stage, trigger in itertools.product(Stage, Trigger)
    if (stage, trigger) not in ALLOWED_PAIRS
    for context in CONTEXTS[stage]
]


def test_forbidden_pairs_cover_every_stage_and_trigger() -> None:
    pairs = {(stage, trigger) for stage, trigger, _ in FORBIDDEN}
    assert pairs | ALLOWED_PAIRS >= set(itertools.product(Stage, Trigger))
    assert (Stage.CHURNED, Trigger.TIME) in pairs
    assert (Stage.MATURE, Trigger.PURCHASE) in pairs


@pytest.mark.parametrize(
    ("stage", "trigger", "context"),
    FORBIDDEN,
    ids=[f"{s}-{t}-{c.__name__.strip('_')}" for s, t, c in FORBIDDEN],
)
def test_a_trigger_without_a_row_never_moves_the_stage(
    stage: Stage, trigger: Trigger, context: Callable, journey
) -> None:
    j = context(journey())
    assert j.stage is stage
    before = j.now
    changes = _provoke(j, trigger, before.since + timedelta(days=1))
    assert changes == []
    assert (j.stage, j.now.since, j.now.reason) == (stage, before.since, before.reason)


@pytest.mark.parametrize(
    "trigger",
    [
        Trigger.REGISTRATION,
        Trigger.PURCHASE,
        Trigger.REFUND,
        Trigger.COMPLAINT_OPENED,
        Trigger.COMPLAINT_REOPENED,
        Trigger.COMPLAINT_CLOSED,
    ],
)
def test_a_customer_without_state_only_enters_as_a_registered_prospect(trigger, journey) -> None:
    j = journey()
    changes = _provoke_unknown(j, trigger, day(3))
    assert changes[0] == d.StageChange(
        None, Stage.PROSPECT, Reason.REGISTERED, Trigger.REGISTRATION, day(3)
    )
    assert j.now.registered_at == day(3)


def _provoke_unknown(j, trigger: Trigger, at: datetime) -> tuple[d.StageChange, ...]:
    match trigger:
        case Trigger.REGISTRATION:
            return j.register(at)
        case Trigger.PURCHASE:
            return j.buy(at)
        case Trigger.REFUND:
            return j.refund(at, order_id="o", total="1.00")
        case Trigger.COMPLAINT_OPENED:
            return j.complain(at, "c", "critical")
        case Trigger.COMPLAINT_REOPENED:
            return j.reopen(at, "c", "critical")
        case Trigger.COMPLAINT_CLOSED:
            return j.close(at, "c", 5)
    raise AssertionError(trigger)


# --- the guard itself ------------------------------------------------------------------


def _all_conceivable_rules() -> list[TransitionRule]:
    return [
        TransitionRule(frm, to, reason, trigger)
        for frm in [None, *Stage]
        for to in Stage
        for reason in Reason
        for trigger in Trigger
    ]


def test_the_guard_refuses_every_rule_not_in_the_table() -> None:
    state = d.CustomerLifecycle(
        stage=Stage.GROWTH, since=day(0), reason=Reason.FIRST_PURCHASE, registered_at=day(0)
    )
    refused = 0
    for rule in _all_conceivable_rules():
        if rule.from_stage is not Stage.GROWTH:
            continue
        if rule in d.TRANSITIONS:
            moved, change = d._move(state, rule.to_stage, rule.reason, rule.trigger, day(1))
            assert (moved.stage, change.reason) == (rule.to_stage, rule.reason)
        else:
            with pytest.raises(d.ForbiddenTransitionError):
                d._move(state, rule.to_stage, rule.reason, rule.trigger, day(1))
            refused += 1
    assert refused == len(Stage) * len(Reason) * len(Trigger) - 4


def test_the_guard_refuses_a_change_in_the_past_of_the_stage() -> None:
    state = d.CustomerLifecycle(
        stage=Stage.GROWTH, since=day(10), reason=Reason.FIRST_PURCHASE, registered_at=day(0)
    )
    with pytest.raises(d.ForbiddenTransitionError, match="before the stage began"):
        d._move(state, Stage.DECLINE, Reason.LAPSING, Trigger.TIME, day(9))
