"""The complaint workflow table: every allowed move, every illegal one, and the step fields."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from pydantic import ValidationError

from services.complaints import domain
from services.complaints.domain import (
    TRANSITIONS,
    Action,
    Category,
    Channel,
    Complaint,
    IllegalTransition,
    InvalidField,
    Outcome,
    PauseKind,
    Severity,
    SlaPolicy,
    Status,
)
from shared.events.registry import EVENTS

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)

Step = Callable[[Complaint, datetime], Outcome]

# One valid call per action, with every required field filled in.
STEPS: dict[Action, Step] = {
    Action.acknowledge: lambda c, at: domain.acknowledge(c, at=at, message="We are on it."),
    Action.investigate: lambda c, at: domain.investigate(c, at=at),
    Action.propose: lambda c, at: domain.propose(c, at=at, proposed_resolution="A replacement."),
    Action.await_customer: lambda c, at: domain.await_customer(c, at=at),
    Action.resolve: lambda c, at: domain.resolve(
        c,
        at=at,
        root_cause="product_defect",
        root_cause_detail="Batch 42 seal",
        resolution="Replaced",
    ),
    Action.close: lambda c, at: domain.close(c, at=at, satisfaction=4, feedback="Fine now"),
    Action.reopen: lambda c, at: domain.reopen(c, at=at),
    Action.escalate: lambda c, at: domain.escalate(c, at=at, reason="Customer asked for a manager"),
}

# DOMAIN.md §2 and the brief, written out independently of the table in domain.py.
EXPECTED_MOVES = {
    (Status.received, Action.acknowledge, Status.acknowledged),
    (Status.acknowledged, Action.investigate, Status.investigating),
    (Status.investigating, Action.propose, Status.resolution_proposed),
    (Status.investigating, Action.await_customer, Status.awaiting_customer),
    (Status.investigating, Action.resolve, Status.resolved),
    (Status.resolution_proposed, Action.await_customer, Status.awaiting_customer),
    (Status.resolution_proposed, Action.resolve, Status.resolved),
    (Status.awaiting_customer, Action.investigate, Status.investigating),
    (Status.awaiting_customer, Action.propose, Status.resolution_proposed),
    (Status.awaiting_customer, Action.resolve, Status.resolved),
    (Status.resolved, Action.close, Status.closed),
    (Status.resolved, Action.reopen, Status.reopened),
    (Status.closed, Action.reopen, Status.reopened),
    (Status.reopened, Action.investigate, Status.investigating),
} | {(s, Action.escalate, s) for s in Status if s is not Status.closed}


def new_complaint(received_at: datetime = T0) -> Complaint:
    return domain.open_complaint(
        complaint_id=UUID(int=1),
        customer_id=UUID(int=2),
        channel=Channel.email,
        category=Category.product,
        severity=Severity.medium,
        tier=None,
        received_at=received_at,
        policy=SlaPolicy(),
    ).complaint


def path_to(status: Status) -> list[Action]:
    """Shortest sequence of status-changing actions from `received` to `status`, from the table."""
    paths: dict[Status, list[Action]] = {Status.received: []}
    queue = deque([Status.received])
    while queue:
        current = queue.popleft()
        for action, target in TRANSITIONS[current].items():
            if target not in paths:
                paths[target] = [*paths[current], action]
                queue.append(target)
    return paths[status]


def complaint_in(status: Status) -> tuple[Complaint, datetime]:
    complaint, at = new_complaint(), T0
    for action in path_to(status):
        at += STEP
        complaint = STEPS[action](complaint, at).complaint
    assert complaint.status is status
    return complaint, at + STEP


def test_the_table_is_the_documented_workflow() -> None:
    actual = {(s, a, t) for s, moves in TRANSITIONS.items() for a, t in moves.items()}
    assert actual == EXPECTED_MOVES


def test_every_status_is_reachable_from_received() -> None:
    for status in Status:
        complaint, _ = complaint_in(status)
        assert complaint.status is status


ALLOWED = sorted((s, a) for s in Status for a in Action if a in TRANSITIONS[s])
ILLEGAL = sorted((s, a) for s in Status for a in Action if a not in TRANSITIONS[s])


@pytest.mark.parametrize(("status", "action"), ALLOWED)
def test_allowed_move(status: Status, action: Action) -> None:
    complaint, at = complaint_in(status)
    moved = STEPS[action](complaint, at).complaint
    assert moved.status is TRANSITIONS[status][action]
    assert moved.last_step_at == (at if action is not Action.escalate else complaint.last_step_at)


@pytest.mark.parametrize(("status", "action"), ILLEGAL)
def test_illegal_move_is_refused_with_the_allowed_steps(status: Status, action: Action) -> None:
    complaint, at = complaint_in(status)
    with pytest.raises(IllegalTransition) as refused:
        STEPS[action](complaint, at)
    assert refused.value.current_status is status
    assert refused.value.status == 409
    assert set(refused.value.allowed) == set(TRANSITIONS[status])
    # the problem body names the steps as their HTTP path segments
    assert refused.value.extra["allowed"] == [a.replace("_", "-") for a in TRANSITIONS[status]]
    assert refused.value.extra["current_status"] == status.value
    assert str(status) in refused.value.detail
    # the detail names the steps as the client calls them too, not as Python enum values
    segment = action.value.replace("_", "-")
    assert refused.value.detail.startswith(f"cannot {segment} a complaint")
    listed = refused.value.detail.split("allowed next steps: ", 1)[1]
    assert listed.split(", ") == (refused.value.extra["allowed"] or ["none"])


def test_illegal_move_count_covers_the_whole_grid() -> None:
    assert len(ALLOWED) + len(ILLEGAL) == len(Status) * len(Action)
    assert len(ALLOWED) == len(EXPECTED_MOVES)


def test_escalation_stops_at_level_three_and_leaves_the_allowed_list() -> None:
    complaint, at = complaint_in(Status.investigating)
    for level in (1, 2, 3):
        complaint = STEPS[Action.escalate](complaint, at).complaint
        assert complaint.escalation_level == level
    assert Action.escalate not in domain.allowed_actions(complaint)
    with pytest.raises(IllegalTransition) as refused:
        STEPS[Action.escalate](complaint, at)
    assert refused.value.allowed == domain.allowed_actions(complaint)


# --- required fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["", "   "])
def test_acknowledge_needs_a_message(message: str) -> None:
    complaint = new_complaint()
    with pytest.raises(InvalidField) as refused:
        domain.acknowledge(complaint, at=T0, message=message)
    assert refused.value.field_name == "message"
    assert refused.value.errors == [{"field": "message", "reason": "is required"}]


def test_propose_needs_a_proposed_resolution() -> None:
    complaint, at = complaint_in(Status.investigating)
    with pytest.raises(InvalidField) as refused:
        domain.propose(complaint, at=at, proposed_resolution=" ")
    assert refused.value.field_name == "proposed_resolution"


@pytest.mark.parametrize(
    ("root_cause", "detail", "resolution", "field"),
    [
        ("aliens", "x", "y", "root_cause"),
        ("", "x", "y", "root_cause"),
        ("policy", "", "y", "root_cause_detail"),
        ("policy", "x", "\t", "resolution"),
    ],
)
def test_resolve_needs_a_listed_root_cause_detail_and_resolution(
    root_cause: str, detail: str, resolution: str, field: str
) -> None:
    complaint, at = complaint_in(Status.investigating)
    with pytest.raises(InvalidField) as refused:
        domain.resolve(
            complaint, at=at, root_cause=root_cause, root_cause_detail=detail, resolution=resolution
        )
    assert refused.value.field_name == field


def test_root_cause_list_is_configurable() -> None:
    complaint, at = complaint_in(Status.investigating)
    managed = ("courier_lost_parcel", "other")
    resolved = domain.resolve(
        complaint,
        at=at,
        root_cause="courier_lost_parcel",
        root_cause_detail="Lost at hub",
        resolution="Resent",
        root_causes=managed,
    ).complaint
    assert resolved.root_cause == "courier_lost_parcel"
    with pytest.raises(InvalidField):
        domain.resolve(
            complaint,
            at=at,
            root_cause="product_defect",
            root_cause_detail="x",
            resolution="y",
            root_causes=managed,
        )


@pytest.mark.parametrize("satisfaction", [0, 6, -1, True])
def test_close_needs_satisfaction_from_one_to_five(satisfaction: int) -> None:
    complaint, at = complaint_in(Status.resolved)
    with pytest.raises(InvalidField) as refused:
        domain.close(complaint, at=at, satisfaction=satisfaction, feedback="ok")
    assert refused.value.field_name == "satisfaction"


@pytest.mark.parametrize("satisfaction", [1, 5])
def test_close_records_satisfaction(satisfaction: int) -> None:
    complaint, at = complaint_in(Status.resolved)
    closed, events = domain.close(complaint, at=at, satisfaction=satisfaction, feedback="ok")
    assert (closed.satisfaction, closed.closed_at) == (satisfaction, at)
    assert [(e.event_type, getattr(e, "satisfaction", None)) for e in events] == [
        ("crm.complaint.closed.v1", satisfaction)
    ]


def test_close_needs_feedback() -> None:
    complaint, at = complaint_in(Status.resolved)
    with pytest.raises(InvalidField) as refused:
        domain.close(complaint, at=at, satisfaction=3, feedback="")
    assert refused.value.field_name == "feedback"


def test_manual_escalation_needs_a_reason() -> None:
    with pytest.raises(InvalidField) as refused:
        domain.escalate(new_complaint(), at=T0, reason="")
    assert refused.value.field_name == "reason"


def test_a_step_cannot_go_back_in_time() -> None:
    complaint, at = complaint_in(Status.investigating)
    with pytest.raises(InvalidField) as refused:
        domain.propose(
            complaint,
            at=complaint.last_step_at - timedelta(microseconds=1),
            proposed_resolution="x",
        )
    assert refused.value.field_name == "at"
    # the same instant as the previous step is fine
    assert domain.propose(
        complaint, at=complaint.last_step_at, proposed_resolution="x"
    ).complaint.status is (Status.resolution_proposed)
    del at


def test_naive_times_are_refused() -> None:
    with pytest.raises(InvalidField) as refused:
        domain.acknowledge(new_complaint(), at=datetime(2025, 3, 3, 10), message="hi")
    assert refused.value.field_name == "at"


# --- state and events of each step --------------------------------------------------------------


def test_happy_path_records_times_and_emits_contract_events() -> None:
    complaint = new_complaint()
    emitted: list[domain.ComplaintEvent] = []
    at = T0
    for action in path_to(Status.closed):
        at += STEP
        complaint, events = STEPS[action](complaint, at)
        emitted.extend(events)
    assert complaint.acknowledged_at == T0 + STEP
    assert complaint.resolved_at == T0 + 3 * STEP
    assert complaint.closed_at == T0 + 4 * STEP
    assert complaint.root_cause == "product_defect"
    assert [e.event_type for e in emitted] == [
        "crm.complaint.acknowledged.v1",
        "crm.complaint.resolved.v1",
        "crm.complaint.closed.v1",
    ]
    assert all(e.complaint_id == UUID(int=1) and e.customer_id == UUID(int=2) for e in emitted)


def test_reopen_clears_the_outcome_and_counts() -> None:
    closed, at = complaint_in(Status.closed)
    reopened, events = domain.reopen(closed, at=at)
    assert reopened.status is Status.reopened
    assert (
        reopened.resolved_at,
        reopened.closed_at,
        reopened.satisfaction,
        reopened.root_cause,
    ) == (
        None,
        None,
        None,
        None,
    )
    assert reopened.reopen_count == 1
    assert reopened.pauses[-1] == domain.Pause(PauseKind.resolved, closed.resolved_at or T0, at)
    assert [e.event_type for e in events] == ["crm.complaint.reopened.v1"]


def test_steps_without_contract_events_emit_nothing() -> None:
    complaint, at = complaint_in(Status.acknowledged)
    complaint, events = domain.investigate(complaint, at=at)
    assert events == ()
    complaint, events = domain.await_customer(complaint, at=at + STEP)
    assert events == ()
    assert domain.propose(complaint, at=at + 2 * STEP, proposed_resolution="x").events == ()


def test_every_domain_event_maps_onto_its_contract_payload() -> None:
    """The service maps events by field name onto shared.events.payloads; keep them aligned."""
    complaint = new_complaint()
    emitted: list[domain.ComplaintEvent] = list(
        domain.open_complaint(
            complaint_id=UUID(int=1),
            customer_id=UUID(int=2),
            channel=Channel.web,
            category=Category.billing,
            severity=Severity.high,
            tier=domain.Tier.key,
            received_at=T0,
            policy=SlaPolicy(),
            order_id="SO-1",
        ).events
    )
    at = T0
    for action in [*path_to(Status.closed), Action.reopen, Action.escalate]:
        at += STEP
        complaint, events = STEPS[action](complaint, at)
        emitted.extend(events)
    assert {e.event_type for e in emitted} == {t for t in EVENTS if t.startswith("crm.complaint.")}
    for event in emitted:
        data = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "occurred_at"}
        payload = EVENTS[event.event_type].payload.model_validate(data)
        assert payload.model_dump() == data


@pytest.mark.parametrize("root_causes", [[], ["policy", "policy"], ["Product Defect"], ["x" * 51]])
def test_the_managed_root_cause_list_is_validated(root_causes: list[str]) -> None:
    with pytest.raises(ValidationError):
        domain.ComplaintPolicy.model_validate({"root_causes": root_causes})


def test_the_default_policy_lists_the_default_root_causes() -> None:
    policy = domain.ComplaintPolicy()
    assert policy.root_causes == domain.DEFAULT_ROOT_CAUSES
    assert "other" in policy.root_causes
    assert domain.ComplaintPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_escalation_at_the_top_level_says_why_it_is_refused() -> None:
    complaint, at = complaint_in(Status.investigating)
    for _ in range(3):
        complaint = STEPS[Action.escalate](complaint, at).complaint
    with pytest.raises(IllegalTransition) as refused:
        STEPS[Action.escalate](complaint, at)
    assert "highest escalation level (3)" in refused.value.detail
    # a status that never allows escalation is named as the reason, as for every other step
    closed, at = complaint_in(Status.closed)
    with pytest.raises(IllegalTransition) as refused:
        STEPS[Action.escalate](closed, at)
    assert "highest" not in refused.value.detail
