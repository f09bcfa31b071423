"""The SLA rules of DOMAIN.md §2 written out again, independently of `domain.py`, as a simulation
of the clocks over a complaint's timeline, and compared with the domain's functions on generated
workflow histories (hypothesis).

The reference never looks at the domain's pauses, effective due times or escalation code: it
replays the steps, lets the resolution clock run while the complaint is being worked on
(not while awaiting the customer, nor while resolved or closed), and finds each breach instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st
from unit.complaints.complaint_steps import take_step

from services.complaints import domain
from services.complaints.domain import (
    Action,
    Category,
    Channel,
    ClockState,
    Complaint,
    IllegalTransition,
    Severity,
    SlaPolicy,
    Status,
    Tier,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
US = timedelta(microseconds=1)
POLICY = SlaPolicy()

FIRST_RESPONSE_HOURS = {"critical": 1, "high": 4, "medium": 24, "low": 24}
RESOLUTION_HOURS = {"critical": 24, "high": 72, "medium": 120, "low": 240}
RESPONSE_CAP = 24 * H
LEVEL_3_AFTER = 24 * H
# Statuses in which the resolution clock does not run.
STOPPED = {"awaiting_customer", "resolved", "closed"}


@dataclass
class Timeline:
    """What happened to one complaint: its received time and (status, from) segments."""

    severity: str
    key_tier: bool
    received_at: datetime
    statuses: list[tuple[str, datetime]]  # status entered at the instant
    acknowledged_at: datetime | None
    manual: list[datetime]  # manual escalations, in order

    def factor(self) -> float:
        return 0.5 if self.key_tier else 1.0

    def first_response_due(self) -> datetime:
        target = min(FIRST_RESPONSE_HOURS[self.severity] * H * self.factor(), RESPONSE_CAP)
        return self.received_at + target

    def status_at(self, instant: datetime) -> str:
        """Status in force at `instant` (a step at `instant` has happened)."""
        current = self.statuses[0][0]
        for status, since in self.statuses:
            if since <= instant:
                current = status
        return current

    def resolution_breach(self, until: datetime) -> datetime | None:
        """The instant the resolution clock ran out, if before `until`: the clock runs while
        the complaint is worked on; it is breached once its running time exceeds the target."""
        budget = RESOLUTION_HOURS[self.severity] * H * self.factor()
        used = timedelta(0)
        bounds = [*self.statuses, ("<end>", until)]
        for (status, start), (_, end) in pairwise(bounds):
            end = min(end, until)
            if status in STOPPED or end <= start:
                continue
            if used + (end - start) > budget:
                return start + (budget - used)
            used += end - start
        return None

    def resolved_at_instant(self, instant: datetime) -> bool:
        return self.status_at(instant) in {"resolved", "closed"}


def reference_escalations(t: Timeline, as_of: datetime) -> list[tuple[int, str, datetime]]:
    """Escalations due at `as_of` after what the timeline holds, manual ones interleaved."""
    auto: list[tuple[int, str, datetime]] = []
    fr_due = t.first_response_due()
    if (t.acknowledged_at is None or t.acknowledged_at > fr_due) and as_of > fr_due:
        auto.append((1, "first_response_breached", fr_due))
    breach = t.resolution_breach(as_of)
    if breach is not None and as_of > breach:
        auto.append((2, "resolution_breached", breach))
    # merge with manual escalations in time order: levels only go up, each at most once,
    # never dated before the previous one
    out: list[tuple[int, str, datetime]] = []
    level = 0
    latest: datetime | None = None
    pending = sorted(auto, key=lambda e: (e[2], e[0]))
    manual = list(t.manual)
    while pending or manual:
        take_manual = manual and (not pending or manual[0] <= pending[0][2])
        if take_manual:
            at = manual.pop(0)
            level += 1
            out.append((level, "manual", at))
            latest = at
            continue
        lv, reason, at = pending.pop(0)
        if lv <= level:
            continue
        at = at if latest is None else max(at, latest)
        level = lv
        out.append((lv, reason, at))
        latest = at
    # level 3: still unresolved level_3_after past level 2 (else from the next reopen)
    level_2 = next((at for lv, _, at in out if lv == 2), None)
    if level_2 is not None and level < 3:
        instant: datetime | None = level_2 + LEVEL_3_AFTER
        while instant is not None and t.resolved_at_instant(instant):
            after = instant
            instant = next(
                (s for _, s in t.statuses if s > after and not t.resolved_at_instant(s)), None
            )
        if instant is not None and as_of > instant:
            out.append((3, "unresolved_after_escalation", max(instant, out[-1][2])))
    return out


# --- generated histories -------------------------------------------------------------------------

GAPS = st.sampled_from(
    [timedelta(0), US, 30 * 60 * 1_000_000 * US, H, 5 * H, 11 * H, 23 * H, 50 * H, 130 * H]
)


@st.composite
def histories(
    draw: st.DrawFn, manual: bool = False, checked: bool = True
) -> tuple[Complaint, Timeline, datetime]:
    severity = draw(st.sampled_from(list(Severity)))
    key = draw(st.booleans())
    complaint = domain.open_complaint(
        complaint_id=UUID(int=1),
        customer_id=UUID(int=2),
        channel=Channel.web,
        category=Category.other,
        severity=severity,
        tier=Tier.key if key else draw(st.sampled_from([None, Tier.major])),
        received_at=T0,
        policy=POLICY,
    ).complaint
    timeline = Timeline(severity.value, key, T0, [("received", T0)], None, [])
    at = T0
    for _ in range(draw(st.integers(0, 10))):
        at += draw(GAPS)
        if checked and draw(st.integers(0, 3)) == 0:
            complaint = domain.evaluate_sla(complaint, as_of=at, policy=POLICY).complaint
            continue
        actions = [
            a for a in domain.allowed_actions(complaint) if manual or a is not Action.escalate
        ]
        if not actions:
            break
        action = draw(st.sampled_from(actions))
        before = complaint.status
        try:
            complaint = take_step(complaint, action, at, clocks_first=POLICY)
        except IllegalTransition:
            assert action is Action.escalate  # the clocks had already reached the top level
            continue
        if action is Action.escalate:
            timeline.manual.append(at)
        elif complaint.status is not before:
            timeline.statuses.append((complaint.status.value, at))
        if action is Action.acknowledge:
            timeline.acknowledged_at = at
    as_of = at + draw(GAPS) + draw(st.sampled_from([timedelta(0), US, 100 * H, 400 * H]))
    return complaint, timeline, as_of


def escalations(complaint: Complaint) -> list[tuple[int, str, datetime]]:
    return [(e.level, e.reason.value, e.at) for e in complaint.escalations]


@settings(max_examples=1500, deadline=None)
@given(histories())
def test_escalations_match_the_reference(case: tuple[Complaint, Timeline, datetime]) -> None:
    complaint, timeline, as_of = case
    if complaint.status is Status.closed:
        as_of = complaint.last_step_at  # closed: raised at the close, nothing after
    evaluated = domain.evaluate_sla(complaint, as_of=as_of, policy=POLICY).complaint
    assert escalations(evaluated) == reference_escalations(timeline, as_of)
    # evaluating again at the same instant adds nothing
    assert domain.evaluate_sla(evaluated, as_of=as_of, policy=POLICY).events == ()


@settings(max_examples=1500, deadline=None)
@given(histories(manual=True))
def test_escalations_with_manual_steps_match_the_reference(
    case: tuple[Complaint, Timeline, datetime],
) -> None:
    complaint, timeline, as_of = case
    if complaint.status is Status.closed:
        as_of = complaint.last_step_at
    evaluated = domain.evaluate_sla(complaint, as_of=as_of, policy=POLICY).complaint
    assert escalations(evaluated) == reference_escalations(timeline, as_of)


@settings(max_examples=1500, deadline=None)
@given(histories())
def test_clock_states_match_the_reference(case: tuple[Complaint, Timeline, datetime]) -> None:
    complaint, timeline, as_of = case
    clocks = domain.clock_states(complaint, as_of)
    fr_due = timeline.first_response_due()
    ack = timeline.acknowledged_at
    if ack is not None:
        expected_fr = ClockState.met if ack <= fr_due else ClockState.breached
    else:
        expected_fr = ClockState.breached if as_of > fr_due else ClockState.pending
    assert clocks.first_response is expected_fr
    breach = timeline.resolution_breach(as_of)
    status = timeline.status_at(as_of)
    if breach is not None and as_of > breach:
        expected_res = ClockState.breached
    elif status in {"resolved", "closed"}:
        expected_res = ClockState.met
    elif status == "awaiting_customer":
        expected_res = ClockState.paused
    else:
        expected_res = ClockState.pending
    assert clocks.resolution is expected_res, (timeline, as_of, clocks)


def known_at(t: Timeline, instant: datetime) -> Timeline:
    """The timeline as it stood at `instant`: the steps after it had not happened yet."""
    return Timeline(
        t.severity,
        t.key_tier,
        t.received_at,
        [(status, since) for status, since in t.statuses if since <= instant],
        t.acknowledged_at if t.acknowledged_at and t.acknowledged_at <= instant else None,
        [m for m in t.manual if m <= instant],
    )


@settings(max_examples=1500, deadline=None)
@given(histories(checked=False), st.floats(0, 1))
def test_an_evaluation_as_of_a_past_instant_raises_what_was_due_then(
    case: tuple[Complaint, Timeline, datetime], fraction: float
) -> None:
    """Evaluated as of an instant before later steps (a replay, a checker run late), only the
    breaches that had happened by then are raised, as the steps known then call for."""
    complaint, timeline, _ = case
    as_of = T0 + (complaint.last_step_at - T0) * fraction
    if any(e.at > as_of for e in complaint.escalations):
        return  # raised by a later step (manual, close): it holds its level, not comparable
    evaluated = domain.evaluate_sla(complaint, as_of=as_of, policy=POLICY).complaint
    assert escalations(evaluated) == reference_escalations(known_at(timeline, as_of), as_of)
