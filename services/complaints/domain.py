"""Complaint workflow and SLA arithmetic (DOMAIN.md §2): pure rules, no I/O, no wall clock.

Time convention: a clock is *met* when its event happens at or before the due time, and
*breached* only when `as_of` is strictly after the due time without the event having happened.
Every function takes the business time it needs (`at`, `as_of`); none reads a clock.

The resolution clock stops while the complaint is `awaiting_customer` and while it is
resolved or closed before a reopen; each stop is kept as a `Pause` interval, so the
effective resolution due time is exact to the microsecond.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from types import MappingProxyType
from typing import Annotated, ClassVar, NamedTuple
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticKnownError

from shared.errors import Conflict, InvalidInput
from shared.events import payloads

# The contract's enums are the domain's enums: one home for the values events carry.
Severity = payloads.Severity
Channel = payloads.ComplaintChannel
Category = payloads.ComplaintCategory
Tier = payloads.Tier
EscalationReason = payloads.EscalationReason


class Status(StrEnum):
    received = "received"
    acknowledged = "acknowledged"
    investigating = "investigating"
    resolution_proposed = "resolution_proposed"
    awaiting_customer = "awaiting_customer"
    resolved = "resolved"
    closed = "closed"
    reopened = "reopened"


class Action(StrEnum):
    """Workflow steps; the HTTP path segment is the value with `_` spelled `-`."""

    acknowledge = "acknowledge"
    investigate = "investigate"
    propose = "propose"
    await_customer = "await_customer"
    resolve = "resolve"
    close = "close"
    reopen = "reopen"
    escalate = "escalate"


class ClockState(StrEnum):
    pending = "pending"
    met = "met"
    breached = "breached"
    paused = "paused"


class PauseKind(StrEnum):
    awaiting_customer = "awaiting_customer"
    resolved = "resolved"


MAX_ESCALATION_LEVEL = 3

# The workflow as data: status -> {action: next status}. Escalation keeps the status.
_MOVES: Mapping[Status, Mapping[Action, Status]] = {
    Status.received: {Action.acknowledge: Status.acknowledged},
    Status.acknowledged: {Action.investigate: Status.investigating},
    Status.investigating: {
        Action.propose: Status.resolution_proposed,
        Action.await_customer: Status.awaiting_customer,
        Action.resolve: Status.resolved,
    },
    Status.resolution_proposed: {
        Action.await_customer: Status.awaiting_customer,
        Action.resolve: Status.resolved,
    },
    Status.awaiting_customer: {
        Action.investigate: Status.investigating,
        Action.propose: Status.resolution_proposed,
        Action.resolve: Status.resolved,
    },
    Status.resolved: {Action.close: Status.closed, Action.reopen: Status.reopened},
    Status.closed: {Action.reopen: Status.reopened},
    Status.reopened: {Action.investigate: Status.investigating},
}
ESCALATABLE: frozenset[Status] = frozenset(Status) - {Status.closed}

TRANSITIONS: Mapping[Status, Mapping[Action, Status]] = MappingProxyType(
    {
        status: MappingProxyType(
            {**_MOVES[status], **({Action.escalate: status} if status in ESCALATABLE else {})}
        )
        for status in Status
    }
)

DEFAULT_ROOT_CAUSES: tuple[str, ...] = (
    "product_defect",
    "delivery_delay",
    "billing_error",
    "staff_behaviour",
    "policy",
    "communication",
    "other",
)


# --- errors ------------------------------------------------------------------------------------


class IllegalTransition(Conflict):
    """The step is not allowed from the complaint's status (HTTP 409 with the allowed steps)."""

    def __init__(self, *, status: Status, action: Action, allowed: tuple[Action, ...]) -> None:
        # Steps named as the client calls them (their path segments: `await-customer`), in the
        # detail as in `allowed`.
        segments = [a.value.replace("_", "-") for a in allowed]
        listed = ", ".join(segments) or "none"
        # Escalation is refused in an escalatable status only at the top: say so, not the status.
        at_top = action is Action.escalate and status in ESCALATABLE
        state = f"{status} at the highest escalation level ({MAX_ESCALATION_LEVEL})"
        super().__init__(
            f"cannot {action.value.replace('_', '-')} a complaint that is "
            f"{state if at_top else status}; allowed next steps: {listed}",
            current_status=str(status),
            allowed=segments,
        )
        self.current_status = status
        self.action = action
        self.allowed = allowed


class InvalidField(InvalidInput):
    """A step's field is missing or wrong (HTTP 422 naming the field)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])
        self.field_name = field
        self.reason = reason


# --- policy ------------------------------------------------------------------------------------


def _hours(**targets: float) -> dict[Severity, timedelta]:
    return {Severity(name): timedelta(hours=hours) for name, hours in targets.items()}


# A target of a year or more is a typo (hours as days, seconds as hours), never a promise: refused
# with the field named, before it reaches the SLA arithmetic and the scheduled checks.
MAX_SLA_DURATION = timedelta(days=365)


def _not_a_bool(duration: object) -> object:
    # Lax mode reads a number as seconds and JSON `true` as the number 1 (one second); a strict
    # timedelta would refuse ISO 8601 text (PT4H) too, so only booleans are refused here.
    if isinstance(duration, bool):
        raise PydanticKnownError("time_delta_type")
    return duration


# Listed after the bounds, the bool check still runs before them (listed before them, it would
# add non-standard `gt`/`lt` keys to the JSON schema).
SlaDuration = Annotated[
    timedelta, Field(gt=timedelta(0), lt=MAX_SLA_DURATION), BeforeValidator(_not_a_bool)
]
# Most urgent first: a more severe complaint never gets a longer target than a less severe one.
URGENCY = (Severity.critical, Severity.high, Severity.medium, Severity.low)


_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def _iso(duration: timedelta) -> str:
    """ISO 8601, as the API reads and writes durations (PT4H, P5D)."""
    return str(_DURATION.dump_python(duration, mode="json"))


def _in_urgency_order(targets: Mapping[Severity, timedelta]) -> dict[Severity, timedelta]:
    missing = [s.value for s in URGENCY if s not in targets]
    if missing:
        raise ValueError(f"a target is needed for every severity; missing {missing}")
    for more, less in pairwise(URGENCY):
        if targets[more] > targets[less]:
            raise ValueError(
                f"{more.value} ({_iso(targets[more])}) must not be longer than {less.value} "
                f"({_iso(targets[less])}): more severe complaints get shorter or equal targets"
            )
    return dict(targets)


class SlaPolicy(BaseModel):
    """SLA targets by severity, shortened by tier factor; fixed on a complaint at intake.

    Every duration is positive and under a year; targets shrink with severity, and each
    severity's first-response target is no longer than its resolution target.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_response: dict[Severity, SlaDuration] = Field(
        default_factory=lambda: _hours(critical=1, high=4, medium=24, low=24)
    )
    resolution: dict[Severity, SlaDuration] = Field(
        default_factory=lambda: _hours(critical=24, high=72, medium=120, low=240),
        validate_default=True,  # checked against a changed first_response even when omitted
    )
    first_response_cap: SlaDuration = Field(
        timedelta(hours=24), description="No complaint waits longer for a first response"
    )
    tier_factors: dict[Tier, StrictFloat] = Field(
        default_factory=lambda: {Tier.key: 0.5},
        description="Multiplier of every target per tier; tiers not listed keep 1.0",
    )
    level_3_after: SlaDuration = Field(
        timedelta(hours=24), description="Level 3 when still unresolved this long after level 2"
    )

    @field_validator("first_response")
    @classmethod
    def _first_response_in_order(
        cls, targets: dict[Severity, timedelta]
    ) -> dict[Severity, timedelta]:
        return _in_urgency_order(targets)

    @field_validator("resolution")
    @classmethod
    def _resolution_in_order(
        cls, targets: dict[Severity, timedelta], info: ValidationInfo
    ) -> dict[Severity, timedelta]:
        targets = _in_urgency_order(targets)
        first_response: dict[Severity, timedelta] | None = info.data.get("first_response")
        if first_response is None:
            return targets  # first_response was refused: its own error says why
        for severity in URGENCY:
            if first_response[severity] > targets[severity]:
                raise ValueError(
                    f"{severity.value} ({_iso(targets[severity])}) must not be shorter than its "
                    f"first-response target ({_iso(first_response[severity])}): "
                    "the response comes first"
                )
        return targets

    @field_validator("tier_factors")
    @classmethod
    def _factors_shorten(cls, factors: dict[Tier, float]) -> dict[Tier, float]:
        if any(not 0 < factor <= 1 for factor in factors.values()):
            raise ValueError("tier factors must be in (0, 1]")
        return factors


def sla_targets(
    severity: Severity, tier: Tier | None, received_at: datetime, policy: SlaPolicy
) -> tuple[datetime, datetime]:
    """(first_response_due, resolution_due) for a complaint received at `received_at`."""
    _require_aware("received_at", received_at)
    factor = policy.tier_factors.get(tier, 1.0) if tier is not None else 1.0
    first_response = min(policy.first_response[severity] * factor, policy.first_response_cap)
    return received_at + first_response, received_at + policy.resolution[severity] * factor


ROOT_CAUSE_PATTERN = r"^[a-z][a-z0-9_]{0,49}$"


class ComplaintPolicy(BaseModel):
    """Everything configurable about complaints: SLA targets and the managed root-cause list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sla: SlaPolicy = Field(default_factory=SlaPolicy)
    root_causes: tuple[Annotated[str, Field(pattern=ROOT_CAUSE_PATTERN)], ...] = Field(
        DEFAULT_ROOT_CAUSES, min_length=1, max_length=200
    )

    @field_validator("root_causes")
    @classmethod
    def _unique(cls, root_causes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(root_causes)) != len(root_causes):
            raise ValueError("root causes must be unique")
        return root_causes


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    """An interval in which the resolution clock does not run; `end` is None while ongoing."""

    kind: PauseKind
    start: datetime
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Escalation:
    level: int
    reason: EscalationReason
    at: datetime


@dataclass(frozen=True, slots=True)
class Complaint:
    """What the rules need to know about one complaint (texts live with the service)."""

    complaint_id: UUID
    customer_id: UUID
    channel: Channel
    category: Category
    severity: Severity
    tier: Tier | None
    received_at: datetime
    first_response_due: datetime
    resolution_due: datetime
    last_step_at: datetime
    status: Status = Status.received
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    root_cause: str | None = None
    satisfaction: int | None = None
    reopen_count: int = 0
    pauses: tuple[Pause, ...] = ()
    escalations: tuple[Escalation, ...] = ()

    @property
    def escalation_level(self) -> int:
        return max((e.level for e in self.escalations), default=0)

    @property
    def paused_since(self) -> datetime | None:
        """Start of the ongoing `awaiting_customer` pause, if any."""
        if self.pauses and self.pauses[-1].end is None:
            return self.pauses[-1].start
        return None


class Clocks(NamedTuple):
    first_response: ClockState
    resolution: ClockState
    effective_resolution_due: datetime


# --- events (the service maps them onto shared.events.payloads) --------------------------------


@dataclass(frozen=True, slots=True)
class ComplaintOpened:
    event_type: ClassVar[str] = "crm.complaint.opened.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime
    channel: Channel
    category: Category
    order_id: str | None
    first_response_due: datetime
    resolution_due: datetime
    tier_at_intake: Tier | None


@dataclass(frozen=True, slots=True)
class ComplaintAcknowledged:
    event_type: ClassVar[str] = "crm.complaint.acknowledged.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime
    first_response_met: bool


@dataclass(frozen=True, slots=True)
class ComplaintResolved:
    event_type: ClassVar[str] = "crm.complaint.resolved.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime
    root_cause: str
    resolution_met: bool


@dataclass(frozen=True, slots=True)
class ComplaintClosed:
    event_type: ClassVar[str] = "crm.complaint.closed.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime
    satisfaction: int


@dataclass(frozen=True, slots=True)
class ComplaintReopened:
    event_type: ClassVar[str] = "crm.complaint.reopened.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ComplaintEscalated:
    event_type: ClassVar[str] = "crm.complaint.escalated.v1"
    complaint_id: UUID
    customer_id: UUID
    severity: Severity
    occurred_at: datetime
    level: int
    reason: EscalationReason


ComplaintEvent = (
    ComplaintOpened
    | ComplaintAcknowledged
    | ComplaintResolved
    | ComplaintClosed
    | ComplaintReopened
    | ComplaintEscalated
)


class Outcome(NamedTuple):
    complaint: Complaint
    events: tuple[ComplaintEvent, ...]


# --- intake ------------------------------------------------------------------------------------


def open_complaint(
    *,
    complaint_id: UUID,
    customer_id: UUID,
    channel: Channel,
    category: Category,
    severity: Severity,
    tier: Tier | None,
    received_at: datetime,
    policy: SlaPolicy,
    order_id: str | None = None,
) -> Outcome:
    first_response_due, resolution_due = sla_targets(severity, tier, received_at, policy)
    complaint = Complaint(
        complaint_id=complaint_id,
        customer_id=customer_id,
        channel=channel,
        category=category,
        severity=severity,
        tier=tier,
        received_at=received_at,
        first_response_due=first_response_due,
        resolution_due=resolution_due,
        last_step_at=received_at,
    )
    opened = ComplaintOpened(
        complaint_id=complaint_id,
        customer_id=customer_id,
        severity=severity,
        occurred_at=received_at,
        channel=channel,
        category=category,
        order_id=order_id,
        first_response_due=first_response_due,
        resolution_due=resolution_due,
        tier_at_intake=tier,
    )
    return Outcome(complaint, (opened,))


# --- workflow ----------------------------------------------------------------------------------


def allowed_actions(complaint: Complaint) -> tuple[Action, ...]:
    """The next steps the workflow allows, in table order (escalation only below the top level)."""
    return tuple(
        action
        for action in TRANSITIONS[complaint.status]
        if action is not Action.escalate or complaint.escalation_level < MAX_ESCALATION_LEVEL
    )


def acknowledge(complaint: Complaint, *, at: datetime, message: str) -> Outcome:
    """First response to the customer: stops the first-response clock."""
    status = _next_status(complaint, Action.acknowledge, at)
    _required_text("message", message)
    acknowledged = replace(complaint, status=status, acknowledged_at=at, last_step_at=at)
    event = ComplaintAcknowledged(
        complaint_id=complaint.complaint_id,
        customer_id=complaint.customer_id,
        severity=complaint.severity,
        occurred_at=at,
        first_response_met=at <= complaint.first_response_due,
    )
    return Outcome(acknowledged, (event,))


def investigate(complaint: Complaint, *, at: datetime) -> Outcome:
    status = _next_status(complaint, Action.investigate, at)
    return Outcome(_moved(complaint, status, at), ())


def propose(complaint: Complaint, *, at: datetime, proposed_resolution: str) -> Outcome:
    status = _next_status(complaint, Action.propose, at)
    _required_text("proposed_resolution", proposed_resolution)
    return Outcome(_moved(complaint, status, at), ())


def await_customer(complaint: Complaint, *, at: datetime) -> Outcome:
    """Wait for the customer: the resolution clock pauses until the next step."""
    status = _next_status(complaint, Action.await_customer, at)
    pause = Pause(PauseKind.awaiting_customer, start=at)
    return Outcome(
        replace(complaint, status=status, last_step_at=at, pauses=(*complaint.pauses, pause)), ()
    )


def resolve(
    complaint: Complaint,
    *,
    at: datetime,
    root_cause: str,
    root_cause_detail: str,
    resolution: str,
    root_causes: Collection[str] = DEFAULT_ROOT_CAUSES,
) -> Outcome:
    status = _next_status(complaint, Action.resolve, at)
    if root_cause not in root_causes:
        raise InvalidField("root_cause", f"must be one of {', '.join(sorted(root_causes))}")
    _required_text("root_cause_detail", root_cause_detail)
    _required_text("resolution", resolution)
    running = _moved(complaint, status, at)
    resolved = replace(running, resolved_at=at, root_cause=root_cause)
    event = ComplaintResolved(
        complaint_id=complaint.complaint_id,
        customer_id=complaint.customer_id,
        severity=complaint.severity,
        occurred_at=at,
        root_cause=root_cause,
        resolution_met=at <= _resolution_deadline(running, at),
    )
    return Outcome(resolved, (event,))


def close(complaint: Complaint, *, at: datetime, satisfaction: int, feedback: str) -> Outcome:
    status = _next_status(complaint, Action.close, at)
    if (
        isinstance(satisfaction, bool)
        or not isinstance(satisfaction, int)
        or not 1 <= satisfaction <= 5
    ):
        raise InvalidField("satisfaction", "must be an integer from 1 to 5")
    _required_text("feedback", feedback)
    closed = replace(
        complaint, status=status, last_step_at=at, closed_at=at, satisfaction=satisfaction
    )
    event = ComplaintClosed(
        complaint_id=complaint.complaint_id,
        customer_id=complaint.customer_id,
        severity=complaint.severity,
        occurred_at=at,
        satisfaction=satisfaction,
    )
    return Outcome(closed, (event,))


def close_after_clocks(
    complaint: Complaint, *, at: datetime, satisfaction: int, feedback: str, policy: SlaPolicy
) -> Outcome:
    """Close, with first the escalations the clocks called for up to `at` (dated at their
    breaches): closed complaints are not escalated, so without them a complaint resolved late
    and closed before the checker's next run (every minute) would never get the escalation that
    one resolved late and closed a minute later gets. Business time decides, not the checker."""
    due = evaluate_sla(complaint, as_of=at, policy=policy)
    closed = close(due.complaint, at=at, satisfaction=satisfaction, feedback=feedback)
    return Outcome(closed.complaint, due.events + closed.events)


def reopen(complaint: Complaint, *, at: datetime) -> Outcome:
    """Back to work: the time spent resolved or closed does not count against the clock."""
    status = _next_status(complaint, Action.reopen, at)
    assert complaint.resolved_at is not None  # resolved and closed complaints carry it
    idle = Pause(PauseKind.resolved, start=complaint.resolved_at, end=at)
    reopened = replace(
        complaint,
        status=status,
        last_step_at=at,
        resolved_at=None,
        closed_at=None,
        root_cause=None,
        satisfaction=None,
        reopen_count=complaint.reopen_count + 1,
        pauses=(*complaint.pauses, idle),
    )
    event = ComplaintReopened(
        complaint_id=complaint.complaint_id,
        customer_id=complaint.customer_id,
        severity=complaint.severity,
        occurred_at=at,
    )
    return Outcome(reopened, (event,))


def escalate(complaint: Complaint, *, at: datetime, reason: str) -> Outcome:
    """Manual escalation: one level up, the status unchanged."""
    _next_status(complaint, Action.escalate, at)
    _required_text("reason", reason)
    escalation = Escalation(complaint.escalation_level + 1, EscalationReason.manual, at)
    return _escalated(complaint, (escalation,))


def escalate_after_clocks(
    complaint: Complaint, *, at: datetime, reason: str, policy: SlaPolicy
) -> Outcome:
    """Manual escalation, with first the escalations the clocks called for up to `at` (dated at
    their breaches), as for a close: "one level up" is from the level business time reached,
    whether or not the checker ran since the breach (a first response missed an hour ago makes
    a manual escalation level 2, and the missed response is still level 1)."""
    _next_status(complaint, Action.escalate, at)
    due = evaluate_sla(complaint, as_of=at, policy=policy)
    escalated = escalate(due.complaint, at=at, reason=reason)
    return Outcome(escalated.complaint, due.events + escalated.events)


def _next_status(complaint: Complaint, action: Action, at: datetime) -> Status:
    _require_aware("at", at)
    allowed = allowed_actions(complaint)
    if action not in allowed:
        raise IllegalTransition(status=complaint.status, action=action, allowed=allowed)
    if at < complaint.last_step_at:
        raise InvalidField(
            "at", f"is before the previous step ({complaint.last_step_at.isoformat()})"
        )
    return TRANSITIONS[complaint.status][action]


def _moved(complaint: Complaint, status: Status, at: datetime) -> Complaint:
    """Change status, ending an ongoing `awaiting_customer` pause at `at`."""
    pauses = complaint.pauses
    if complaint.paused_since is not None:
        pauses = (*pauses[:-1], replace(pauses[-1], end=at))
    return replace(complaint, status=status, last_step_at=at, pauses=pauses)


def _required_text(field: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "is required")


def _require_aware(field: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidField(field, "must be timezone-aware")


# --- clocks ------------------------------------------------------------------------------------


def _resolution_deadline(complaint: Complaint, as_of: datetime) -> datetime:
    """Resolution due time pushed back by every pause that began before the clock ran out."""
    due = complaint.resolution_due
    for pause in complaint.pauses:
        if pause.start > due:
            break  # the clock had already run out: later pauses cannot save it
        end = pause.end if pause.end is not None else max(as_of, pause.start)
        due += end - pause.start
    return due


def settled_resolution_due(complaint: Complaint) -> datetime:
    """Resolution due time counting the finished pauses only (an ongoing pause adds nothing yet)."""
    paused_since = complaint.paused_since
    return _resolution_deadline(complaint, paused_since or complaint.resolution_due)


def clock_states(complaint: Complaint, as_of: datetime) -> Clocks:
    """First-response and resolution clock states at `as_of`, and the effective resolution due."""
    _require_aware("as_of", as_of)
    if complaint.acknowledged_at is not None:
        met = complaint.acknowledged_at <= complaint.first_response_due
        first_response = ClockState.met if met else ClockState.breached
    elif as_of > complaint.first_response_due:
        first_response = ClockState.breached
    else:
        first_response = ClockState.pending

    due = _resolution_deadline(complaint, as_of)
    paused_since = complaint.paused_since
    if complaint.resolved_at is not None:
        resolution = ClockState.met if complaint.resolved_at <= due else ClockState.breached
    elif as_of > due:
        resolution = ClockState.breached
    elif paused_since is not None and paused_since <= as_of:
        resolution = ClockState.paused
    else:
        resolution = ClockState.pending
    return Clocks(first_response, resolution, due)


# --- escalation --------------------------------------------------------------------------------


def escalations_due(complaint: Complaint, as_of: datetime, policy: SlaPolicy) -> list[Escalation]:
    """Escalations the clocks call for at `as_of` that the complaint has not had yet.

    Levels only go up and each is raised once; `at` is the business time of the breach
    (never before the previous escalation). Closed complaints are not escalated.
    """
    if complaint.status is Status.closed:
        return []
    clocks = clock_states(complaint, as_of)
    level = complaint.escalation_level
    latest = max((e.at for e in complaint.escalations), default=None)
    level_2_at = next((e.at for e in complaint.escalations if e.level == 2), None)
    due: list[Escalation] = []

    def raise_to(new_level: int, reason: EscalationReason, breach_at: datetime) -> datetime:
        nonlocal level, latest
        at = breach_at if latest is None else max(breach_at, latest)
        due.append(Escalation(new_level, reason, at))
        level, latest = new_level, at
        return at

    # Only breaches before `as_of`: evaluated as of a past instant, a complaint answered or
    # resolved late since then was not yet late at that instant.
    if (
        level < 1
        and clocks.first_response is ClockState.breached
        and as_of > complaint.first_response_due
    ):
        raise_to(1, EscalationReason.first_response_breached, complaint.first_response_due)
    if (
        level < 2
        and clocks.resolution is ClockState.breached
        and as_of > clocks.effective_resolution_due
    ):
        level_2_at = raise_to(
            2, EscalationReason.resolution_breached, clocks.effective_resolution_due
        )
    if level < 3 and level_2_at is not None:
        unresolved_at = _unresolved_from(complaint, level_2_at + policy.level_3_after)
        if unresolved_at is not None and as_of > unresolved_at:
            raise_to(3, EscalationReason.unresolved_after_escalation, unresolved_at)
    return due


def evaluate_sla(complaint: Complaint, *, as_of: datetime, policy: SlaPolicy) -> Outcome:
    """Record the escalations due at `as_of`; evaluating again at the same `as_of` adds nothing."""
    return _escalated(complaint, tuple(escalations_due(complaint, as_of, policy)))


def next_sla_check(complaint: Complaint, policy: SlaPolicy) -> datetime | None:
    """The instant after which `escalations_due` may find something new (None: nothing can come
    until another workflow step). Lets the checker select candidates with one indexed range scan:
    for any `as_of` at or after the last step, escalations are due exactly when `as_of` is after it.
    """
    if complaint.status is Status.closed:
        return None
    level = complaint.escalation_level
    checks: list[datetime] = []
    acknowledged_at = complaint.acknowledged_at
    if level < 1 and (acknowledged_at is None or acknowledged_at > complaint.first_response_due):
        checks.append(complaint.first_response_due)
    if level < 2:
        due = settled_resolution_due(complaint)
        paused_since = complaint.paused_since
        if complaint.resolved_at is not None:
            if complaint.resolved_at > due:
                checks.append(due)
        elif paused_since is None or paused_since > due:
            checks.append(due)
    level_2_at = next((e.at for e in complaint.escalations if e.level == 2), None)
    if level == 2 and level_2_at is not None:
        unresolved_at = _unresolved_from(complaint, level_2_at + policy.level_3_after)
        if unresolved_at is not None:
            checks.append(unresolved_at)
    return min(checks, default=None)


def _unresolved_from(complaint: Complaint, instant: datetime) -> datetime | None:
    """First moment at or after `instant` when the complaint is not resolved (None: resolved since)."""
    for pause in complaint.pauses:
        if (
            pause.kind is PauseKind.resolved
            and pause.end is not None
            and pause.start <= instant < pause.end
        ):
            instant = pause.end  # resolved then, unresolved again from the reopen
    if complaint.resolved_at is not None and complaint.resolved_at <= instant:
        return None
    return instant


def _escalated(complaint: Complaint, escalations: tuple[Escalation, ...]) -> Outcome:
    if not escalations:
        return Outcome(complaint, ())
    events = tuple(
        ComplaintEscalated(
            complaint_id=complaint.complaint_id,
            customer_id=complaint.customer_id,
            severity=complaint.severity,
            occurred_at=escalation.at,
            level=escalation.level,
            reason=escalation.reason,
        )
        for escalation in escalations
    )
    return Outcome(replace(complaint, escalations=(*complaint.escalations, *escalations)), events)
