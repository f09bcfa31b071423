"""SLA targets, clocks (pauses, reopen, the exact breach instant) and escalation levels."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import pytest
from pydantic import ValidationError

from services.complaints import domain
from services.complaints.domain import (
    Category,
    Channel,
    ClockState,
    Complaint,
    Escalation,
    Severity,
    SlaPolicy,
    Status,
    Tier,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
US = timedelta(microseconds=1)
POLICY = SlaPolicy()

# DOMAIN.md §2 in hours: (first response, resolution) for a customer outside the `key` tier.
TARGET_HOURS = {
    Severity.critical: (1, 24),
    Severity.high: (4, 72),
    Severity.medium: (24, 120),
    Severity.low: (24, 240),
}


def opened(severity: Severity = Severity.medium, tier: Tier | None = None) -> Complaint:
    return domain.open_complaint(
        complaint_id=UUID(int=7),
        customer_id=UUID(int=8),
        channel=Channel.phone,
        category=Category.delivery,
        severity=severity,
        tier=tier,
        received_at=T0,
        policy=POLICY,
    ).complaint


def investigating(severity: Severity = Severity.medium) -> Complaint:
    """Acknowledged on time (T0 + 1h), investigating from T0 + 2h."""
    complaint = domain.acknowledge(opened(severity), at=T0 + H, message="Sorry").complaint
    return domain.investigate(complaint, at=T0 + 2 * H).complaint


def resolve(complaint: Complaint, at: datetime) -> Complaint:
    return domain.resolve(
        complaint, at=at, root_cause="policy", root_cause_detail="d", resolution="r"
    ).complaint


def levels(
    escalations: list[Escalation] | tuple[Escalation, ...],
) -> list[tuple[int, str, datetime]]:
    return [(e.level, e.reason.value, e.at) for e in escalations]


E = TypeVar("E")


def the(kind: type[E], events: Sequence[domain.ComplaintEvent]) -> E:
    """The single event of the step, checked to be of `kind`."""
    (event,) = events
    assert isinstance(event, kind)
    return event


def escalated_events(events: Sequence[domain.ComplaintEvent]) -> list[domain.ComplaintEscalated]:
    assert all(isinstance(e, domain.ComplaintEscalated) for e in events)
    return [e for e in events if isinstance(e, domain.ComplaintEscalated)]


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("tier", [None, Tier.major, Tier.ordinary, Tier.small])
def test_targets_by_severity(severity: Severity, tier: Tier | None) -> None:
    first_response, resolution = TARGET_HOURS[severity]
    assert domain.sla_targets(severity, tier, T0, POLICY) == (
        T0 + first_response * H,
        T0 + resolution * H,
    )


@pytest.mark.parametrize("severity", list(Severity))
def test_key_tier_gets_half_of_each_target(severity: Severity) -> None:
    first_response, resolution = TARGET_HOURS[severity]
    assert domain.sla_targets(severity, Tier.key, T0, POLICY) == (
        T0 + first_response * H / 2,
        T0 + resolution * H / 2,
    )


def test_targets_are_fixed_at_intake_on_the_complaint() -> None:
    complaint, (event,) = domain.open_complaint(
        complaint_id=UUID(int=1),
        customer_id=UUID(int=2),
        channel=Channel.web,
        category=Category.service,
        severity=Severity.critical,
        tier=Tier.key,
        received_at=T0,
        policy=POLICY,
    )
    assert (complaint.first_response_due, complaint.resolution_due) == (T0 + H / 2, T0 + 12 * H)
    assert isinstance(event, domain.ComplaintOpened)
    assert (event.first_response_due, event.resolution_due, event.tier_at_intake) == (
        T0 + H / 2,
        T0 + 12 * H,
        Tier.key,
    )


def test_no_complaint_waits_more_than_the_response_cap() -> None:
    slow = SlaPolicy(
        first_response={
            Severity.critical: H,
            Severity.high: 4 * H,
            Severity.medium: 36 * H,
            Severity.low: 72 * H,
        }
    )
    assert domain.sla_targets(Severity.low, None, T0, slow)[0] == T0 + 24 * H
    assert domain.sla_targets(Severity.medium, None, T0, slow)[0] == T0 + 24 * H
    assert domain.sla_targets(Severity.low, Tier.key, T0, slow)[0] == T0 + 24 * H
    assert domain.sla_targets(Severity.high, None, T0, slow)[0] == T0 + 4 * H
    tight = SlaPolicy(first_response_cap=2 * H)
    assert domain.sla_targets(Severity.high, None, T0, tight)[0] == T0 + 2 * H
    assert domain.sla_targets(Severity.high, Tier.key, T0, tight)[0] == T0 + 2 * H


def test_tier_factor_is_configurable() -> None:
    policy = SlaPolicy(tier_factors={Tier.key: 0.25, Tier.major: 0.75})
    assert domain.sla_targets(Severity.high, Tier.key, T0, policy) == (T0 + H, T0 + 18 * H)
    assert domain.sla_targets(Severity.high, Tier.major, T0, policy) == (T0 + 3 * H, T0 + 54 * H)
    assert domain.sla_targets(Severity.high, Tier.small, T0, policy) == (T0 + 4 * H, T0 + 72 * H)


@pytest.mark.parametrize(
    "bad",
    [
        {"first_response": {"critical": 3600, "high": 3600, "medium": 3600}},
        {"resolution": {"critical": 0, "high": 1, "medium": 1, "low": 1}},
        {"tier_factors": {"key": 0}},
        {"tier_factors": {"key": 1.5}},
        {"tier_factors": {"diamond": 0.5}},
        {"first_response_cap": -1},
        {"level_3_after": 0},
        {"surprise": 1},
    ],
)
def test_bad_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SlaPolicy.model_validate(bad)


def test_policy_is_frozen_and_round_trips_through_json() -> None:
    with pytest.raises(ValidationError):
        POLICY.level_3_after = H  # type: ignore[misc]
    assert SlaPolicy.model_validate_json(POLICY.model_dump_json()) == POLICY


# --- the exact breach instant -------------------------------------------------------------------


def test_first_response_clock_breaches_one_microsecond_after_due() -> None:
    complaint = opened()
    due = complaint.first_response_due
    assert domain.clock_states(complaint, due).first_response is ClockState.pending
    assert domain.clock_states(complaint, due + US).first_response is ClockState.breached


def test_response_exactly_at_due_is_met_and_one_microsecond_late_is_not() -> None:
    complaint = opened()
    due = complaint.first_response_due
    on_time, (event,) = domain.acknowledge(complaint, at=due, message="Hello")
    assert domain.clock_states(on_time, due + 100 * H).first_response is ClockState.met
    assert isinstance(event, domain.ComplaintAcknowledged) and event.first_response_met
    late, (event,) = domain.acknowledge(complaint, at=due + US, message="Hello")
    assert domain.clock_states(late, due + US).first_response is ClockState.breached
    assert isinstance(event, domain.ComplaintAcknowledged) and not event.first_response_met


def test_resolution_clock_breaches_one_microsecond_after_due() -> None:
    complaint = investigating()
    due = complaint.resolution_due
    assert domain.clock_states(complaint, due) == (ClockState.met, ClockState.pending, due)
    assert domain.clock_states(complaint, due + US) == (ClockState.met, ClockState.breached, due)


def test_resolution_exactly_at_due_is_met_and_one_microsecond_late_is_not() -> None:
    complaint = investigating()
    due = complaint.resolution_due
    on_time = domain.resolve(
        complaint, at=due, root_cause="policy", root_cause_detail="d", resolution="r"
    )
    assert domain.clock_states(on_time.complaint, due + 500 * H).resolution is ClockState.met
    assert the(domain.ComplaintResolved, on_time.events).resolution_met is True
    late = domain.resolve(
        complaint, at=due + US, root_cause="policy", root_cause_detail="d", resolution="r"
    )
    assert domain.clock_states(late.complaint, due + US).resolution is ClockState.breached
    assert the(domain.ComplaintResolved, late.events).resolution_met is False


# --- pauses -------------------------------------------------------------------------------------


def test_single_pause_extends_the_resolution_due_exactly() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 10 * H).complaint
    pause = 5 * H + 7 * US
    complaint = domain.investigate(complaint, at=T0 + 10 * H + pause).complaint
    due = T0 + 120 * H + pause
    assert domain.clock_states(complaint, due) == (ClockState.met, ClockState.pending, due)
    assert domain.clock_states(complaint, due + US).resolution is ClockState.breached


def test_multiple_pauses_add_up() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 10 * H).complaint
    complaint = domain.propose(complaint, at=T0 + 13 * H, proposed_resolution="Refund").complaint
    complaint = domain.await_customer(complaint, at=T0 + 20 * H).complaint
    complaint = domain.investigate(complaint, at=T0 + 24 * H + 3 * US).complaint
    due = T0 + 120 * H + 3 * H + 4 * H + 3 * US
    assert domain.clock_states(complaint, T0 + 50 * H).effective_resolution_due == due
    assert domain.clock_states(complaint, due).resolution is ClockState.pending
    assert domain.clock_states(complaint, due + US).resolution is ClockState.breached


def test_an_ongoing_pause_counts_up_to_as_of() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 10 * H).complaint
    for waited in (0 * H, H, 500 * H):
        clocks = domain.clock_states(complaint, T0 + 10 * H + waited)
        assert clocks == (ClockState.met, ClockState.paused, T0 + 120 * H + waited)


def test_resolving_out_of_a_pause_ends_it_at_the_resolution() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 100 * H).complaint
    # 30h of waiting: resolved at nominal due + 10h, still within the paused-extended due
    resolved = domain.resolve(
        complaint, at=T0 + 130 * H, root_cause="policy", root_cause_detail="d", resolution="r"
    )
    assert resolved.complaint.pauses[-1].end == T0 + 130 * H
    assert the(domain.ComplaintResolved, resolved.events).resolution_met is True
    assert domain.clock_states(resolved.complaint, T0 + 999 * H) == (
        ClockState.met,
        ClockState.met,
        T0 + 150 * H,
    )


def test_a_pause_after_the_breach_does_not_undo_it() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 121 * H).complaint
    clocks = domain.clock_states(complaint, T0 + 125 * H)
    assert clocks == (ClockState.met, ClockState.breached, T0 + 120 * H)
    complaint = domain.investigate(complaint, at=T0 + 130 * H).complaint
    assert domain.clock_states(complaint, T0 + 130 * H).effective_resolution_due == T0 + 120 * H


def test_a_pause_starting_exactly_at_due_still_saves_the_clock() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 120 * H).complaint
    assert domain.clock_states(complaint, T0 + 121 * H).resolution is ClockState.paused
    complaint = domain.investigate(complaint, at=T0 + 122 * H).complaint
    assert domain.clock_states(complaint, T0 + 122 * H).resolution is ClockState.pending
    assert domain.clock_states(complaint, T0 + 122 * H + US).resolution is ClockState.breached


def test_the_first_response_clock_never_pauses() -> None:
    complaint = opened()
    assert domain.clock_states(complaint, T0).first_response is ClockState.pending
    assert domain.clock_states(complaint, T0 + 25 * H).first_response is ClockState.breached


# --- reopen -------------------------------------------------------------------------------------


@pytest.mark.parametrize("closed_before_reopen", [False, True])
def test_time_resolved_or_closed_before_a_reopen_does_not_count(closed_before_reopen: bool) -> None:
    complaint = resolve(investigating(), T0 + 50 * H)
    if closed_before_reopen:
        complaint = domain.close(
            complaint, at=T0 + 60 * H, satisfaction=2, feedback="meh"
        ).complaint
    complaint = domain.reopen(complaint, at=T0 + 80 * H).complaint
    due = T0 + 150 * H
    assert domain.clock_states(complaint, T0 + 90 * H) == (ClockState.met, ClockState.pending, due)
    assert domain.clock_states(complaint, due + US).resolution is ClockState.breached
    complaint = domain.investigate(complaint, at=T0 + 90 * H).complaint
    assert domain.clock_states(resolve(complaint, due), due + H).resolution is ClockState.met


def test_a_late_resolution_stays_breached_after_reopen() -> None:
    complaint = resolve(investigating(), T0 + 121 * H)
    complaint = domain.reopen(complaint, at=T0 + 200 * H).complaint
    clocks = domain.clock_states(complaint, T0 + 201 * H)
    assert clocks == (ClockState.met, ClockState.breached, T0 + 120 * H)


# --- escalation ---------------------------------------------------------------------------------


def test_missed_first_response_is_level_one_once() -> None:
    complaint = opened()
    due = complaint.first_response_due
    assert domain.escalations_due(complaint, due, POLICY) == []
    escalated, events = domain.evaluate_sla(complaint, as_of=due + US, policy=POLICY)
    assert levels(escalated.escalations) == [(1, "first_response_breached", due)]
    assert [(e.event_type, e.level, e.occurred_at) for e in escalated_events(events)] == [
        ("crm.complaint.escalated.v1", 1, due)
    ]
    assert domain.evaluate_sla(escalated, as_of=due + US, policy=POLICY) == (escalated, ())
    assert domain.evaluate_sla(escalated, as_of=due + 10 * H, policy=POLICY).events == ()


def test_missed_resolution_is_level_two_at_the_effective_due() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 10 * H).complaint
    complaint = domain.investigate(complaint, at=T0 + 16 * H).complaint
    due = T0 + 126 * H
    assert domain.escalations_due(complaint, due, POLICY) == []
    assert levels(domain.escalations_due(complaint, due + US, POLICY)) == [
        (2, "resolution_breached", due)
    ]


def test_both_clocks_missed_raise_levels_one_and_two_together() -> None:
    complaint = opened(Severity.critical)
    as_of = T0 + 30 * H
    assert levels(domain.escalations_due(complaint, as_of, POLICY)) == [
        (1, "first_response_breached", T0 + H),
        (2, "resolution_breached", T0 + 24 * H),
    ]


def test_level_three_comes_24_hours_after_level_two_if_still_unresolved() -> None:
    complaint = investigating()
    complaint = domain.evaluate_sla(complaint, as_of=T0 + 121 * H, policy=POLICY).complaint
    assert complaint.escalation_level == 2
    level_3_at = T0 + 144 * H
    assert domain.escalations_due(complaint, level_3_at, POLICY) == []
    assert levels(domain.escalations_due(complaint, level_3_at + US, POLICY)) == [
        (3, "unresolved_after_escalation", level_3_at)
    ]


def test_level_three_delay_is_configurable() -> None:
    complaint = domain.evaluate_sla(investigating(), as_of=T0 + 121 * H, policy=POLICY).complaint
    policy = SlaPolicy(level_3_after=6 * H)
    assert levels(domain.escalations_due(complaint, T0 + 126 * H + US, policy)) == [
        (3, "unresolved_after_escalation", T0 + 126 * H)
    ]


@pytest.mark.parametrize("resolved_after", [H, 24 * H])
def test_no_level_three_when_resolved_within_24_hours_of_level_two(
    resolved_after: timedelta,
) -> None:
    complaint = domain.evaluate_sla(investigating(), as_of=T0 + 121 * H, policy=POLICY).complaint
    complaint = resolve(complaint, T0 + 120 * H + resolved_after)
    assert domain.escalations_due(complaint, T0 + 500 * H, POLICY) == []


def level_two_then_resolved_at_130h_and_reopened(at: datetime) -> Complaint:
    complaint = domain.evaluate_sla(investigating(), as_of=T0 + 121 * H, policy=POLICY).complaint
    return domain.reopen(resolve(complaint, T0 + 130 * H), at=at).complaint


def test_reopened_before_the_level_three_deadline_escalates_at_the_deadline() -> None:
    complaint = level_two_then_resolved_at_130h_and_reopened(T0 + 140 * H)
    assert levels(domain.escalations_due(complaint, T0 + 145 * H, POLICY)) == [
        (3, "unresolved_after_escalation", T0 + 144 * H)
    ]


def test_reopened_after_the_level_three_deadline_escalates_from_the_reopen() -> None:
    complaint = level_two_then_resolved_at_130h_and_reopened(T0 + 150 * H)
    assert domain.escalations_due(complaint, T0 + 150 * H, POLICY) == []
    assert levels(domain.escalations_due(complaint, T0 + 150 * H + US, POLICY)) == [
        (3, "unresolved_after_escalation", T0 + 150 * H)
    ]


def test_levels_are_never_repeated_however_often_evaluated() -> None:
    complaint = opened()
    events: list[domain.ComplaintEvent] = []
    as_of = T0
    while as_of <= T0 + 400 * H:  # bounded: 401 hourly evaluations
        complaint, new = domain.evaluate_sla(complaint, as_of=as_of + US, policy=POLICY)
        events.extend(new)
        as_of += H
    expected = [
        (1, "first_response_breached", T0 + 24 * H),
        (2, "resolution_breached", T0 + 120 * H),
        (3, "unresolved_after_escalation", T0 + 144 * H),
    ]
    assert levels(complaint.escalations) == expected
    assert [(e.level, e.occurred_at) for e in escalated_events(events)] == [
        (lv, at) for lv, _, at in expected
    ]
    # the schedule of the checker does not change the outcome
    assert (
        levels(
            domain.evaluate_sla(opened(), as_of=T0 + 400 * H, policy=POLICY).complaint.escalations
        )
        == expected
    )


def test_manual_escalation_then_automatic() -> None:
    complaint = domain.escalate(opened(), at=T0 + H, reason="VIP on the phone").complaint
    assert levels(complaint.escalations) == [(1, "manual", T0 + H)]
    # the missed first response finds level 1 already reached
    assert domain.escalations_due(complaint, T0 + 25 * H, POLICY) == []
    complaint = domain.evaluate_sla(complaint, as_of=T0 + 121 * H, policy=POLICY).complaint
    assert levels(complaint.escalations)[1:] == [(2, "resolution_breached", T0 + 120 * H)]
    complaint = domain.evaluate_sla(complaint, as_of=T0 + 145 * H, policy=POLICY).complaint
    assert [e.level for e in complaint.escalations] == [1, 2, 3]
    assert domain.escalations_due(complaint, T0 + 999 * H, POLICY) == []


def test_manual_level_two_starts_the_level_three_countdown() -> None:
    complaint = domain.evaluate_sla(opened(), as_of=T0 + 25 * H, policy=POLICY).complaint
    complaint = domain.escalate(complaint, at=T0 + 30 * H, reason="Press involved").complaint
    assert complaint.escalation_level == 2
    # resolution breach at 120h finds level 2 already reached; level 3 runs from the manual step
    assert levels(domain.escalations_due(complaint, T0 + 121 * H, POLICY)) == [
        (3, "unresolved_after_escalation", T0 + 54 * H)
    ]


def test_an_automatic_escalation_is_never_dated_before_the_previous_one() -> None:
    complaint = domain.acknowledge(opened(), at=T0 + H, message="hi").complaint
    complaint = domain.investigate(complaint, at=T0 + 2 * H).complaint
    complaint = domain.escalate(complaint, at=T0 + 200 * H, reason="late manual").complaint
    assert levels(domain.escalations_due(complaint, T0 + 201 * H, POLICY)) == [
        (2, "resolution_breached", T0 + 200 * H)
    ]


def test_closed_complaints_are_not_escalated() -> None:
    complaint = resolve(
        domain.investigate(
            domain.acknowledge(opened(), at=T0 + 30 * H, message="late").complaint, at=T0 + 31 * H
        ).complaint,
        T0 + 200 * H,
    )
    assert [e.level for e in domain.escalations_due(complaint, T0 + 300 * H, POLICY)] == [1, 2, 3]
    complaint = domain.close(complaint, at=T0 + 201 * H, satisfaction=1, feedback="bad").complaint
    assert complaint.status is Status.closed
    assert domain.escalations_due(complaint, T0 + 300 * H, POLICY) == []


def test_closing_first_raises_what_the_clocks_called_for_whenever_the_checker_ran() -> None:
    """Resolved late (due T0 + 120h) and closed before the checker's next run: the close raises
    level 2 dated at the breach, as a checker run between resolve and close would have; then
    nothing more is due. Resolved on time, closing raises nothing."""
    late = resolve(investigating(), T0 + 130 * H)
    outcome = domain.close_after_clocks(
        late, at=T0 + 130 * H + 5 * US, satisfaction=2, feedback="slow", policy=POLICY
    )
    assert levels(outcome.complaint.escalations) == [(2, "resolution_breached", T0 + 120 * H)]
    assert [type(e).__name__ for e in outcome.events] == ["ComplaintEscalated", "ComplaintClosed"]
    assert outcome.complaint.status is Status.closed
    assert domain.escalations_due(outcome.complaint, T0 + 1000 * H, POLICY) == []
    # The same complaint with a checker run between resolve and close: the same escalations.
    checked = domain.evaluate_sla(late, as_of=T0 + 130 * H + US, policy=POLICY).complaint
    closed = domain.close_after_clocks(
        checked, at=T0 + 130 * H + 5 * US, satisfaction=2, feedback="slow", policy=POLICY
    )
    assert levels(closed.complaint.escalations) == levels(outcome.complaint.escalations)
    assert [type(e).__name__ for e in closed.events] == ["ComplaintClosed"]

    on_time = resolve(investigating(), T0 + 100 * H)
    outcome = domain.close_after_clocks(
        on_time, at=T0 + 200 * H, satisfaction=5, feedback="ok", policy=POLICY
    )
    assert outcome.complaint.escalations == ()
    assert [type(e).__name__ for e in outcome.events] == ["ComplaintClosed"]


def test_a_paused_complaint_is_not_escalated_for_resolution() -> None:
    complaint = domain.await_customer(investigating(), at=T0 + 100 * H).complaint
    assert domain.escalations_due(complaint, T0 + 1000 * H, POLICY) == []


def test_an_evaluation_as_of_a_past_instant_raises_only_the_breaches_before_it() -> None:
    """Answered late (due T0 + 1h, at T0 + 3h) and resolved late (due T0 + 24h, at T0 + 30h),
    evaluated as of T0 + 2h: only the first response had been missed then."""
    complaint = domain.acknowledge(opened(Severity.critical), at=T0 + 3 * H, message="m").complaint
    complaint = resolve(domain.investigate(complaint, at=T0 + 4 * H).complaint, T0 + 30 * H)
    assert levels(domain.escalations_due(complaint, T0 + 2 * H, POLICY)) == [
        (1, "first_response_breached", T0 + H)
    ]
    assert domain.escalations_due(complaint, T0 + H, POLICY) == []
    assert levels(domain.escalations_due(complaint, T0 + 24 * H + US, POLICY)) == [
        (1, "first_response_breached", T0 + H),
        (2, "resolution_breached", T0 + 24 * H),
    ]


def test_a_manual_escalation_first_raises_what_the_clocks_called_for() -> None:
    """First response missed at T0 + 1h, escalated by hand at T0 + 2h before the checker ran:
    the missed response is level 1 and the manual step level 2, as with a checker run between
    (business time decides, not the checker's schedule)."""
    complaint = opened(Severity.critical)
    outcome = domain.escalate_after_clocks(complaint, at=T0 + 2 * H, reason="VIP", policy=POLICY)
    expected = [(1, "first_response_breached", T0 + H), (2, "manual", T0 + 2 * H)]
    assert levels(outcome.complaint.escalations) == expected
    assert [(e.level, e.occurred_at) for e in escalated_events(outcome.events)] == [
        (1, T0 + H),
        (2, T0 + 2 * H),
    ]
    checked = domain.evaluate_sla(complaint, as_of=T0 + H + US, policy=POLICY).complaint
    after_check = domain.escalate_after_clocks(checked, at=T0 + 2 * H, reason="VIP", policy=POLICY)
    assert levels(after_check.complaint.escalations) == expected
    # level 3 counts from the manual level 2, whichever ran first
    assert levels(domain.escalations_due(outcome.complaint, T0 + 26 * H + US, POLICY)) == [
        (3, "unresolved_after_escalation", T0 + 26 * H)
    ]


def test_a_manual_escalation_when_the_clocks_reached_the_top_is_refused() -> None:
    complaint = opened(Severity.critical)  # levels 1, 2 and 3 due by T0 + 48h
    with pytest.raises(domain.IllegalTransition):
        domain.escalate_after_clocks(complaint, at=T0 + 49 * H, reason="late", policy=POLICY)
