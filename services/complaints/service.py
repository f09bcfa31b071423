"""Use cases of the complaints service: one transaction each, events through the outbox.

Every writer locks the customer (`lock_customers`) before it locks a complaint row, so HTTP steps,
the SLA checker and the consumers never deadlock and one customer's events keep their order.
Free text is never logged: log lines carry ids only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.complaints import domain
from services.complaints.domain import Action, ComplaintPolicy, InvalidField, Pause, PauseKind
from services.complaints.models import (
    MESSAGING,
    Complaint,
    ComplaintEscalation,
    ComplaintStep,
    PolicyDocument,
)
from services.complaints.schemas import (
    MASK,
    AcknowledgeBody,
    Analytics,
    AwaitCustomerBody,
    CloseBody,
    ComplaintCreate,
    ComplaintDetail,
    ComplaintRead,
    Durations,
    EscalateBody,
    EscalationRead,
    FirstResponseClock,
    InvestigateBody,
    ProposeBody,
    ReopenBody,
    ResolutionClock,
    ResolveBody,
    RootCauseShare,
    Share,
    SlaRead,
    SlaRun,
    StepBody,
    StepRead,
)
from shared.clock import future_time_problem
from shared.db import SessionFactory, driver_connection, transaction
from shared.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from shared.events import CloudEvent, new_event
from shared.events.registry import EVENTS
from shared.http.preconditions import IfMatch
from shared.messaging.outbox import add_events, lock_customers
from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger(__name__)

SOURCE = "/crm/complaints"
SERVICE = "complaints"
SLA_CHECKER = "sla-checker"
POLICY_ID = 1
# Domain rules need a customer id; an anonymised complaint is only ever read, never stepped.
ANONYMOUS = uuid.UUID(int=0)


# --- policy ------------------------------------------------------------------------------------


_POLICY = text("SELECT document::text AS document, version FROM complaint_policy WHERE id = :id")


@lru_cache(maxsize=16)
def _parsed_policy(document: str | None) -> ComplaintPolicy:
    """Validated once per distinct stored document (the text of a jsonb value is canonical), so
    that every intake and checker batch reads the policy row but does not re-validate it."""
    return ComplaintPolicy() if document is None else ComplaintPolicy.model_validate_json(document)


async def load_policy(session: AsyncSession) -> tuple[ComplaintPolicy, int]:
    """The current policy and its version (0: the defaults, never changed)."""
    row = (await session.execute(_POLICY, {"id": POLICY_ID})).first()
    if row is None:
        return _parsed_policy(None), 0
    return _parsed_policy(row.document), row.version


async def replace_policy(
    session: AsyncSession,
    *,
    policy: ComplaintPolicy,
    if_match: IfMatch | None,
    actor: str,
    now: datetime,
) -> int:
    """Store a new policy (targets apply to complaints received from now on); returns its version."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('complaints:policy'))"))
    current, version = await load_policy(session)
    if if_match is not None and not if_match.admits(version):
        raise PreconditionFailed(
            f"The policy is at version {version}, not {if_match.describe()}: reload and retry"
        )
    document = policy.model_dump(mode="json")
    await session.execute(
        pg_insert(PolicyDocument)
        .values(
            id=POLICY_ID, document=document, version=version + 1, updated_at=now, updated_by=actor
        )
        .on_conflict_do_update(
            index_elements=[PolicyDocument.id],
            set_={
                "document": document,
                "version": version + 1,
                "updated_at": now,
                "updated_by": actor,
            },
        )
    )
    if policy.sla.level_3_after != current.sla.level_3_after:
        await _reschedule_level_3(session, level_3_after=policy.sla.level_3_after)
    log.info("complaints.policy_replaced", version=version + 1, actor=actor)
    return version + 1


async def _reschedule_level_3(session: AsyncSession, *, level_3_after: timedelta) -> None:
    """A shorter level-3 delay must not wait for a check planned with the old one (early is harmless)."""
    level_2 = ComplaintEscalation
    await session.execute(
        update(Complaint)
        .where(
            Complaint.id == level_2.complaint_id,
            level_2.level == 2,
            Complaint.escalation_level == 2,
            Complaint.status != domain.Status.closed.value,
            Complaint.customer_id.is_not(None),
        )
        .values(
            next_sla_check_at=func.least(
                func.coalesce(Complaint.next_sla_check_at, level_2.at + level_3_after),
                level_2.at + level_3_after,
            )
        )
        .execution_options(synchronize_session=False)
    )


# --- mapping between rows, rules, events and views ---------------------------------------------


@dataclass
class ComplaintRecord:
    row: Complaint
    escalations: list[ComplaintEscalation]
    history: list[ComplaintStep] = field(default_factory=list)


def _pauses_to_json(pauses: Sequence[Pause]) -> list[dict[str, Any]]:
    return [
        {
            "kind": p.kind.value,
            "start": p.start.isoformat(),
            "end": p.end.isoformat() if p.end else None,
        }
        for p in pauses
    ]


def _pauses_from_json(document: Sequence[dict[str, Any]]) -> tuple[Pause, ...]:
    return tuple(
        Pause(
            PauseKind(p["kind"]),
            datetime.fromisoformat(p["start"]),
            datetime.fromisoformat(p["end"]) if p["end"] else None,
        )
        for p in document
    )


def to_domain(
    row: Complaint | Row[Any], escalations: Sequence[ComplaintEscalation | Row[Any]]
) -> domain.Complaint:
    """Rules' view of a complaint, from its ORM object or a plain row of its columns."""
    return domain.Complaint(
        complaint_id=row.id,
        customer_id=row.customer_id or ANONYMOUS,
        channel=domain.Channel(row.channel),
        category=domain.Category(row.category),
        severity=domain.Severity(row.severity),
        tier=domain.Tier(row.tier_at_intake) if row.tier_at_intake else None,
        received_at=row.received_at,
        first_response_due=row.first_response_due,
        resolution_due=row.resolution_due,
        last_step_at=row.last_step_at,
        status=domain.Status(row.status),
        acknowledged_at=row.acknowledged_at,
        resolved_at=row.resolved_at,
        closed_at=row.closed_at,
        root_cause=row.root_cause,
        satisfaction=row.satisfaction,
        reopen_count=row.reopen_count,
        pauses=_pauses_from_json(row.pauses),
        escalations=tuple(
            domain.Escalation(e.level, domain.EscalationReason(e.reason), e.at)
            for e in sorted(escalations, key=lambda e: e.level)
        ),
    )


def _state(complaint: domain.Complaint, policy: ComplaintPolicy) -> dict[str, Any]:
    """The rules' state as column values (and what SQL needs to find breaches)."""
    return {
        "status": complaint.status.value,
        "acknowledged_at": complaint.acknowledged_at,
        "resolved_at": complaint.resolved_at,
        "closed_at": complaint.closed_at,
        "root_cause": complaint.root_cause,
        "satisfaction": complaint.satisfaction,
        "reopen_count": complaint.reopen_count,
        "pauses": _pauses_to_json(complaint.pauses),
        "paused_since": complaint.paused_since,
        "resolution_due_effective": domain.settled_resolution_due(complaint),
        "escalation_level": complaint.escalation_level,
        "next_sla_check_at": domain.next_sla_check(complaint, policy.sla),
        "last_step_at": complaint.last_step_at,
    }


def _store(row: Complaint, complaint: domain.Complaint, policy: ComplaintPolicy) -> None:
    """Copy the rules' state onto the row."""
    for column, value in _state(complaint, policy).items():
        setattr(row, column, value)


def to_cloud_event(event: domain.ComplaintEvent) -> CloudEvent[Any]:
    """Domain event -> CloudEvent with the contract payload (fields map by name)."""
    data = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "occurred_at"}
    payload = EVENTS[event.event_type].payload.model_validate(data)
    return new_event(
        type=event.event_type,
        source=SOURCE,
        subject=event.customer_id,
        time=event.occurred_at,
        data=payload,
    )


def _path(action: Action) -> str:
    return action.value.replace("_", "-")


def complaint_read(record: ComplaintRecord, *, as_of: datetime, pii: bool) -> ComplaintRead:
    row = record.row
    complaint = to_domain(row, record.escalations)
    clocks = domain.clock_states(complaint, as_of)
    anonymised = row.customer_id is None

    def shown(value: str | None) -> str | None:
        return value if pii or value is None else MASK

    return ComplaintRead(
        id=row.id,
        customer_id=row.customer_id,
        channel=complaint.channel,
        category=complaint.category,
        severity=complaint.severity,
        tier_at_intake=complaint.tier,
        subject=shown(row.subject),
        description=shown(row.description),
        order_id=row.order_id,
        status=complaint.status,
        received_at=row.received_at,
        acknowledged_at=row.acknowledged_at,
        resolved_at=row.resolved_at,
        closed_at=row.closed_at,
        root_cause=row.root_cause,
        satisfaction=row.satisfaction,
        reopen_count=row.reopen_count,
        sla=SlaRead(
            as_of=as_of,
            first_response=FirstResponseClock(
                due=row.first_response_due,
                state=clocks.first_response,
                responded_at=row.acknowledged_at,
            ),
            resolution=ResolutionClock(
                due=clocks.effective_resolution_due,
                target_due=row.resolution_due,
                state=clocks.resolution,
                paused_since=complaint.paused_since,
                resolved_at=row.resolved_at,
            ),
        ),
        escalation_level=complaint.escalation_level,
        escalations=[
            EscalationRead(level=e.level, reason=e.reason, at=e.at, actor=e.actor)
            for e in sorted(record.escalations, key=lambda e: e.level)
        ],
        allowed_actions=[] if anonymised else [_path(a) for a in domain.allowed_actions(complaint)],
        version=row.version,
        pii_masked=not pii,
        anonymised=anonymised,
    )


def complaint_detail(record: ComplaintRecord, *, as_of: datetime, pii: bool) -> ComplaintDetail:
    summary = complaint_read(record, as_of=as_of, pii=pii)
    history = [
        StepRead(
            action=step.action,
            from_status=domain.Status(step.from_status) if step.from_status else None,
            to_status=domain.Status(step.to_status),
            actor=step.actor,
            at=step.at,
            note=step.note if pii or step.note is None else MASK,
            facts=step.facts,
            texts=step.texts if pii or step.texts is None else dict.fromkeys(step.texts, MASK),
        )
        for step in record.history
    ]
    return ComplaintDetail(**summary.model_dump(), history=history)


# --- intake ------------------------------------------------------------------------------------


# Read after the customer's lock, in a statement of its own: its snapshot then sees an erasure
# that committed while this intake waited for the lock.
_INTAKE_CONTEXT = """
SELECT kc.known, kc.tier, kc.erased_at, p.document::text AS policy
FROM (VALUES (1)) AS one (x)
LEFT JOIN known_customers kc ON kc.customer_id = $1
LEFT JOIN complaint_policy p ON p.id = $2
"""
_INTAKE_COLUMNS = (
    "id",
    "customer_id",
    "channel",
    "category",
    "severity",
    "tier_at_intake",
    "order_id",
    "subject",
    "description",
    "received_at",
    "first_response_due",
    "resolution_due",
    "opened_by",
    "version",
    "status",
    "acknowledged_at",
    "resolved_at",
    "closed_at",
    "root_cause",
    "satisfaction",
    "reopen_count",
    "pauses",
    "paused_since",
    "resolution_due_effective",
    "escalation_level",
    "next_sla_check_at",
    "last_step_at",
)
# The complaint and its first history row in one round trip (the step's facts: last parameter).
_INTAKE_INSERT = f"""
WITH opened AS (
  INSERT INTO complaints ({", ".join(_INTAKE_COLUMNS)})
  VALUES ({", ".join(f"${i}" for i in range(1, len(_INTAKE_COLUMNS) + 1))})
  RETURNING id, status, received_at, opened_by
)
INSERT INTO complaint_steps (complaint_id, action, from_status, to_status, actor, at, facts)
SELECT id, 'open', NULL, status, opened_by, received_at, ${len(_INTAKE_COLUMNS) + 1}::jsonb
FROM opened
"""


async def open_complaint(
    session: AsyncSession,
    *,
    data: ComplaintCreate,
    actor: str,
    now: datetime,
    max_clock_skew: timedelta,
) -> ComplaintRecord:
    """Intake: four statements (customer lock, customer and policy, complaint with its first
    step, outbox), the complaint row built for the response rather than read back.

    A `received_at` ahead of the service's clock by at most `max_clock_skew` is the sender's
    clock drifting: the complaint is recorded as received now, so that its SLA clocks never
    start in the future (and a step taken at once does not predate its intake)."""
    received_at = data.received_at or now
    if problem := future_time_problem(received_at, now=now, max_ahead=max_clock_skew):
        raise InvalidInput.field("body.received_at", problem)
    received_at = min(received_at, now)
    await lock_customers(session, [data.customer_id])
    # The hot path goes straight to the driver, in the session's transaction (begun by the lock).
    connection = await driver_connection(session)
    context = await connection.fetchrow(_INTAKE_CONTEXT, data.customer_id, POLICY_ID)
    assert context is not None  # one row, whether the customer is known or not
    if not context["known"] or context["erased_at"] is not None:
        raise InvalidInput.field("body.customer_id", "unknown customer")
    policy = _parsed_policy(context["policy"])
    tier = domain.Tier(context["tier"]) if context["tier"] else None
    complaint, events = domain.open_complaint(
        complaint_id=uuid.uuid4(),
        customer_id=data.customer_id,
        channel=data.channel,
        category=data.category,
        severity=data.severity,
        tier=tier,
        received_at=received_at,
        policy=policy.sla,
        order_id=data.order_id,
    )
    values: dict[str, Any] = {
        "id": complaint.complaint_id,
        "customer_id": data.customer_id,
        "channel": data.channel.value,
        "category": data.category.value,
        "severity": data.severity.value,
        "tier_at_intake": tier.value if tier else None,
        "order_id": data.order_id,
        "subject": data.subject,
        "description": data.description,
        "received_at": received_at,
        "first_response_due": complaint.first_response_due,
        "resolution_due": complaint.resolution_due,
        "opened_by": actor,
        "version": 1,
        **_state(complaint, policy),
    }
    facts = {"severity": data.severity.value, "tier": values["tier_at_intake"]}
    await connection.execute(
        _INTAKE_INSERT,
        *(json.dumps(values[c]) if c == "pauses" else values[c] for c in _INTAKE_COLUMNS),
        json.dumps(facts),
    )
    await add_events(session, MESSAGING, [to_cloud_event(e) for e in events])
    log.info(
        "complaint.opened", complaint_id=str(complaint.complaint_id), severity=data.severity.value
    )
    # Not added to the session: the row is written above; this copy only answers the request.
    return ComplaintRecord(Complaint(**values), escalations=[])


# --- reading -----------------------------------------------------------------------------------


async def _escalations_of(
    session: AsyncSession, complaint_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ComplaintEscalation]]:
    found: dict[uuid.UUID, list[ComplaintEscalation]] = defaultdict(list)
    if complaint_ids:
        rows = await session.scalars(
            select(ComplaintEscalation).where(
                ComplaintEscalation.complaint_id == any_(_uuids(complaint_ids))
            )
        )
        for escalation in rows:
            found[escalation.complaint_id].append(escalation)
    return found


def _uuids(values: Sequence[uuid.UUID]) -> BindParameter[Sequence[Any]]:
    """One array parameter (`= ANY`), not one per value: the statement text, and so its
    prepared statement, stays the same whatever the batch's size."""
    return bindparam("ids", list(values), type_=ARRAY(UUID(as_uuid=True)), unique=True)


async def _escalation_rows(
    session: AsyncSession, complaint_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Row[Any]]]:
    """`_escalations_of` as plain rows (no ORM identity map: the checker reads thousands)."""
    found: dict[uuid.UUID, list[Row[Any]]] = defaultdict(list)
    if complaint_ids:
        rows = await session.execute(
            select(*ComplaintEscalation.__table__.c).where(
                ComplaintEscalation.complaint_id == any_(_uuids(complaint_ids))
            )
        )
        for escalation in rows:
            found[escalation.complaint_id].append(escalation)
    return found


async def get_complaint(
    session: AsyncSession, *, complaint_id: uuid.UUID, with_history: bool = False
) -> ComplaintRecord:
    row = await session.get(Complaint, complaint_id)
    if row is None:
        raise NotFound(f"No complaint {complaint_id}")
    escalations = (await _escalations_of(session, [row.id]))[row.id]
    history: list[ComplaintStep] = []
    if with_history:
        history = list(
            await session.scalars(
                select(ComplaintStep)
                .where(ComplaintStep.complaint_id == row.id)
                .order_by(ComplaintStep.id)
            )
        )
    return ComplaintRecord(row, escalations, history)


def breached(as_of: datetime) -> ColumnElement[bool]:
    """SQL twin of domain.clock_states: either clock breached at `as_of` (tested against it)."""
    c = Complaint
    # every branch is NOT NULL-safe, so that `NOT breached` keeps the rows that are in time
    first_response = or_(
        and_(c.acknowledged_at.is_(None), c.first_response_due < as_of),
        and_(c.acknowledged_at.is_not(None), c.acknowledged_at > c.first_response_due),
    )
    resolution = or_(
        and_(c.resolved_at.is_not(None), c.resolved_at > c.resolution_due_effective),
        and_(c.resolved_at.is_(None), c.paused_since.is_(None), c.resolution_due_effective < as_of),
        and_(
            c.resolved_at.is_(None),
            c.paused_since.is_not(None),
            c.paused_since > c.resolution_due_effective,
        ),
    )
    return or_(first_response, resolution)


async def list_complaints(
    session: AsyncSession,
    *,
    customer_id: uuid.UUID | None,
    status: domain.Status | None,
    severity: domain.Severity | None,
    breached_now: bool | None,
    limit: int,
    cursor: dict[str, Any] | None,
    as_of: datetime,
) -> tuple[list[ComplaintRecord], dict[str, Any] | None]:
    """Newest first; returns the page and the key of its last row when more may follow."""
    query = select(Complaint)
    if customer_id is not None:
        query = query.where(Complaint.customer_id == customer_id)
    if status is not None:
        query = query.where(Complaint.status == status.value)
    if severity is not None:
        query = query.where(Complaint.severity == severity.value)
    if breached_now is not None:
        clause = breached(as_of)
        query = query.where(clause if breached_now else ~clause)
    if cursor is not None:
        try:
            # in UTC here: a time without a UTC datetime (year 1 at +01:00) would fail in the driver
            after = (datetime.fromisoformat(cursor["r"]).astimezone(UTC), uuid.UUID(cursor["i"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput.field("query.cursor", "not a cursor returned by this API") from exc
        query = query.where(tuple_(Complaint.received_at, Complaint.id) < after)
    rows = list(
        await session.scalars(
            query.order_by(Complaint.received_at.desc(), Complaint.id.desc()).limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    escalations = await _escalations_of(session, [r.id for r in rows])
    records = [ComplaintRecord(r, escalations[r.id]) for r in rows]
    next_key = {"r": rows[-1].received_at.isoformat(), "i": str(rows[-1].id)} if more else None
    return records, next_key


# --- workflow steps ----------------------------------------------------------------------------

ACTION_OF: dict[type[StepBody], Action] = {
    AcknowledgeBody: Action.acknowledge,
    InvestigateBody: Action.investigate,
    ProposeBody: Action.propose,
    AwaitCustomerBody: Action.await_customer,
    ResolveBody: Action.resolve,
    CloseBody: Action.close,
    ReopenBody: Action.reopen,
    EscalateBody: Action.escalate,
}
# Recorded on the step as facts (kept after erasure); every other body field is free text.
FACT_FIELDS = frozenset({"root_cause", "satisfaction"})


def _apply(
    complaint: domain.Complaint, body: StepBody, at: datetime, policy: ComplaintPolicy
) -> domain.Outcome:
    match body:
        case AcknowledgeBody():
            return domain.acknowledge(complaint, at=at, message=body.message)
        case InvestigateBody():
            return domain.investigate(complaint, at=at)
        case ProposeBody():
            return domain.propose(complaint, at=at, proposed_resolution=body.proposed_resolution)
        case AwaitCustomerBody():
            return domain.await_customer(complaint, at=at)
        case ResolveBody():
            return domain.resolve(
                complaint,
                at=at,
                root_cause=body.root_cause,
                root_cause_detail=body.root_cause_detail,
                resolution=body.resolution,
                root_causes=policy.root_causes,
            )
        case CloseBody():
            return domain.close_after_clocks(
                complaint,
                at=at,
                satisfaction=body.satisfaction,
                feedback=body.feedback,
                policy=policy.sla,
            )
        case ReopenBody():
            return domain.reopen(complaint, at=at)
        case EscalateBody():
            return domain.escalate_after_clocks(
                complaint, at=at, reason=body.reason, policy=policy.sla
            )
    raise TypeError(f"no workflow step for {type(body).__name__}")


async def take_step(
    session: AsyncSession,
    *,
    complaint_id: uuid.UUID,
    body: StepBody,
    actor: str,
    now: datetime,
    if_match: IfMatch | None = None,
) -> None:
    """One workflow step: validated by the rules, recorded with actor, time and note."""
    owner = (
        await session.execute(select(Complaint.customer_id).where(Complaint.id == complaint_id))
    ).first()
    if owner is None:
        raise NotFound(f"No complaint {complaint_id}")
    if owner.customer_id is not None:
        await lock_customers(session, [owner.customer_id])
    row = await session.get(Complaint, complaint_id, with_for_update=True, populate_existing=True)
    assert row is not None  # complaints are never deleted
    if row.customer_id is None:
        raise Conflict("The customer was erased: the complaint is an anonymous record now")
    if if_match is not None and not if_match.admits(row.version):
        raise PreconditionFailed(
            f"The complaint is at version {row.version}, not {if_match.describe()}: "
            "read it again and re-apply your step"
        )
    escalations = (await _escalations_of(session, [row.id]))[row.id]
    before = to_domain(row, escalations)
    policy, _ = await load_policy(session)
    # A step never predates the previous one (clock skew between replicas, back-dated intake).
    at = max(now, before.last_step_at)
    try:
        after, events = _apply(before, body, at, policy)
    except InvalidField as exc:
        raise InvalidInput.field(f"body.{exc.field_name}", exc.reason) from exc
    _store(row, after, policy)
    row.version += 1
    action = ACTION_OF[type(body)]
    step_fields = body.model_dump(exclude={"note"}, exclude_none=True)
    facts = {k: v for k, v in step_fields.items() if k in FACT_FIELDS}
    texts = {k: v for k, v in step_fields.items() if k not in FACT_FIELDS}
    new_escalations = after.escalations[len(before.escalations) :]
    manual = [e for e in new_escalations if e.reason is domain.EscalationReason.manual]
    clocks = [e for e in new_escalations if e.reason is not domain.EscalationReason.manual]
    if clocks:  # the clocks' (see `domain.close_after_clocks`), as the checker writes them
        await _record_clock_escalations(
            session, complaint_id=row.id, status=before.status.value, escalations=clocks
        )
    for escalation in manual:
        facts |= {"level": escalation.level}
        session.add(
            ComplaintEscalation(
                complaint_id=row.id,
                level=escalation.level,
                reason=escalation.reason.value,
                at=escalation.at,
                actor=actor,
            )
        )
    session.add(
        ComplaintStep(
            complaint_id=row.id,
            action=action.value,
            from_status=before.status.value,
            to_status=after.status.value,
            actor=actor,
            at=at,
            note=body.note,
            facts=facts,
            texts=texts or None,
        )
    )
    await session.flush()
    await add_events(session, MESSAGING, [to_cloud_event(e) for e in events])
    log.info("complaint.step", complaint_id=str(row.id), action=action.value, actor=actor)


# --- SLA checker -------------------------------------------------------------------------------


async def evaluate_sla(
    sessions: SessionFactory, *, as_of: datetime, batch_size: int = 500
) -> SlaRun:
    """Raise every escalation due at `as_of`: candidates come from one indexed range scan on
    `next_sla_check_at`; each batch of them is one transaction (customer locks, then rows)."""
    started = time.perf_counter()
    candidates = 0
    by_level: dict[int, int] = defaultdict(int)
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with transaction(sessions) as session:
            query = select(Complaint.id, Complaint.customer_id, Complaint.next_sla_check_at).where(
                Complaint.next_sla_check_at < as_of
            )
            if after is not None:
                # keyset: each complaint once per run, even if its check stays due
                query = query.where(tuple_(Complaint.next_sla_check_at, Complaint.id) > after)
            keys = (
                await session.execute(
                    query.order_by(Complaint.next_sla_check_at, Complaint.id).limit(batch_size)
                )
            ).all()
            if not keys:
                break
            after = (keys[-1].next_sla_check_at, keys[-1].id)
            candidates += len(keys)
            raised = await _escalate_batch(
                session,
                complaint_ids=[k.id for k in keys],
                customer_ids=[k.customer_id for k in keys],
                as_of=as_of,
            )
            for level in raised:
                by_level[level] += 1
        if len(keys) < batch_size:
            break
    run = SlaRun(
        as_of=as_of,
        candidates=candidates,
        escalations=sum(by_level.values()),
        by_level=dict(sorted(by_level.items())),
        duration_seconds=round(time.perf_counter() - started, 6),
    )
    log.info("complaints.sla_evaluated", candidates=candidates, escalations=run.escalations)
    return run


_RAISE_LEVELS = text(
    """
UPDATE complaints AS c
SET next_sla_check_at = u.next_check, escalation_level = u.level, version = c.version + u.bump
FROM unnest(CAST(:ids AS uuid[]), CAST(:next_checks AS timestamptz[]),
            CAST(:levels AS smallint[]), CAST(:bumps AS integer[])) AS u (id, next_check, level, bump)
WHERE c.id = u.id
"""
)
_ADD_ESCALATIONS = text(
    """
INSERT INTO complaint_escalations (complaint_id, level, reason, at, actor)
SELECT complaint_id, level, reason, at, NULL
FROM unnest(CAST(:ids AS uuid[]), CAST(:levels AS smallint[]), CAST(:reasons AS text[]),
            CAST(:ats AS timestamptz[])) AS u (complaint_id, level, reason, at)
"""
)
# History rows in the order given (per complaint: level by level), as the row-by-row code wrote them.
_ADD_ESCALATION_STEPS = text(
    """
INSERT INTO complaint_steps (complaint_id, action, from_status, to_status, actor, at, facts)
SELECT complaint_id, :action, status, status, :actor, at,
       jsonb_build_object('level', level, 'reason', reason)
FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:levels AS integer[]),
            CAST(:reasons AS text[]), CAST(:ats AS timestamptz[]))
     WITH ORDINALITY AS u (complaint_id, status, level, reason, at, n)
ORDER BY n
"""
)


async def _record_clock_escalations(
    session: AsyncSession,
    *,
    complaint_id: uuid.UUID,
    status: str,
    escalations: Sequence[domain.Escalation],
) -> None:
    """One complaint's escalations raised by its clocks, written as `_escalate_batch` writes them."""
    columns = {
        "ids": [complaint_id] * len(escalations),
        "levels": [e.level for e in escalations],
        "reasons": [e.reason.value for e in escalations],
        "ats": [e.at for e in escalations],
    }
    await session.execute(_ADD_ESCALATIONS, columns)
    await session.execute(
        _ADD_ESCALATION_STEPS,
        {
            **columns,
            "statuses": [status] * len(escalations),
            "action": Action.escalate.value,
            "actor": SLA_CHECKER,
        },
    )
    _count_breaches([e.level for e in escalations])


def _count_breaches(levels: list[int]) -> None:
    for clock, level in (("first_response", 1), ("resolution", 2)):
        breaches = levels.count(level)
        if breaches:
            metrics.SLA_BREACHES.labels(SERVICE, clock).inc(breaches)


@dataclass
class _Raised:
    """What one checker batch writes, column by column (bound as arrays: one statement each)."""

    ids: list[uuid.UUID] = field(default_factory=list)
    next_checks: list[datetime | None] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    bumps: list[int] = field(default_factory=list)
    escalated: list[uuid.UUID] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    escalation_levels: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    ats: list[datetime] = field(default_factory=list)
    events: list[CloudEvent[Any]] = field(default_factory=list)


async def _escalate_batch(
    session: AsyncSession,
    *,
    complaint_ids: list[uuid.UUID],
    customer_ids: list[uuid.UUID | None],
    as_of: datetime,
) -> list[int]:
    """The rules run per complaint in Python; their results are written set-based: one UPDATE
    of the complaints, one INSERT of the escalations, one of the history rows, the outbox."""
    await lock_customers(session, [c for c in customer_ids if c is not None])
    rows = (
        await session.execute(
            select(*Complaint.__table__.c)
            .where(Complaint.id == any_(_uuids(complaint_ids)))
            .with_for_update()
        )
    ).all()
    policy, _ = await load_policy(session)
    escalations = await _escalation_rows(session, complaint_ids)
    out = _Raised()
    for row in rows:
        new: tuple[domain.Escalation, ...] = ()
        events: tuple[domain.ComplaintEvent, ...] = ()
        if row.customer_id is None:  # anonymised: nobody left to escalate for
            next_check, level = None, row.escalation_level
        else:
            before = to_domain(row, escalations[row.id])
            after, events = domain.evaluate_sla(before, as_of=as_of, policy=policy.sla)
            next_check = domain.next_sla_check(after, policy.sla)
            new = after.escalations[len(before.escalations) :]
            level = after.escalation_level
        if not new and next_check == row.next_sla_check_at:
            continue
        out.ids.append(row.id)
        out.next_checks.append(next_check)
        out.levels.append(level)
        out.bumps.append(1 if new else 0)
        for escalation in new:
            out.escalated.append(row.id)
            out.statuses.append(row.status)
            out.escalation_levels.append(escalation.level)
            out.reasons.append(escalation.reason.value)
            out.ats.append(escalation.at)
        out.events.extend(to_cloud_event(e) for e in events)
    if out.ids:
        await session.execute(
            _RAISE_LEVELS,
            {
                "ids": out.ids,
                "next_checks": out.next_checks,
                "levels": out.levels,
                "bumps": out.bumps,
            },
        )
    if out.escalated:
        columns = {
            "ids": out.escalated,
            "levels": out.escalation_levels,
            "reasons": out.reasons,
            "ats": out.ats,
        }
        await session.execute(_ADD_ESCALATIONS, columns)
        await session.execute(
            _ADD_ESCALATION_STEPS,
            {
                **columns,
                "statuses": out.statuses,
                "action": Action.escalate.value,
                "actor": SLA_CHECKER,
            },
        )
        _count_breaches(out.escalation_levels)
    await add_events(session, MESSAGING, out.events)
    return out.escalation_levels


# --- analytics (computed in SQL) ---------------------------------------------------------------

_PERIOD = """
WITH period AS (
  SELECT c.*,
    CASE WHEN acknowledged_at IS NOT NULL THEN acknowledged_at <= first_response_due
         WHEN first_response_due < :as_of THEN false END AS first_response_met,
    CASE WHEN resolved_at IS NOT NULL THEN resolved_at <= resolution_due_effective
         WHEN paused_since IS NOT NULL AND paused_since > resolution_due_effective THEN false
         WHEN paused_since IS NULL AND resolution_due_effective < :as_of THEN false
    END AS resolution_met,
    -- Receipt to resolution less the pauses in between (awaiting the customer; resolved before
    -- a reopening): the time the resolution clock counted.
    extract(epoch FROM resolved_at - received_at) - (
      SELECT coalesce(sum(greatest(0, extract(epoch FROM
               least(coalesce((p->>'end')::timestamptz, resolved_at), resolved_at)
               - greatest((p->>'start')::timestamptz, received_at)))), 0)
        FROM jsonb_array_elements(c.pauses) AS p
    ) AS resolution_net_s
  FROM complaints c
  WHERE received_at >= :start AND received_at < :end
)
"""

_TOTALS = text(
    _PERIOD
    + """
SELECT count(*) AS complaints,
  count(*) FILTER (WHERE first_response_met) AS fr_met,
  count(*) FILTER (WHERE NOT first_response_met) AS fr_breached,
  count(*) FILTER (WHERE resolution_met) AS res_met,
  count(*) FILTER (WHERE NOT resolution_met) AS res_breached,
  count(*) FILTER (WHERE first_response_met AND resolution_met) AS all_met,
  count(*) FILTER (WHERE NOT first_response_met OR NOT resolution_met) AS any_breached,
  count(acknowledged_at) AS responded,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM acknowledged_at - received_at))
    FILTER (WHERE acknowledged_at IS NOT NULL) / 3600 AS fr_median_h,
  percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM acknowledged_at - received_at))
    FILTER (WHERE acknowledged_at IS NOT NULL) / 3600 AS fr_p90_h,
  count(resolved_at) AS resolved,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM resolved_at - received_at))
    FILTER (WHERE resolved_at IS NOT NULL) / 3600 AS res_median_h,
  percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM resolved_at - received_at))
    FILTER (WHERE resolved_at IS NOT NULL) / 3600 AS res_p90_h,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_net_s)
    FILTER (WHERE resolved_at IS NOT NULL) / 3600 AS res_net_median_h,
  percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution_net_s)
    FILTER (WHERE resolved_at IS NOT NULL) / 3600 AS res_net_p90_h,
  count(*) FILTER (WHERE reopen_count > 0) AS reopened,
  count(*) FILTER (WHERE resolved_at IS NOT NULL OR reopen_count > 0) AS ever_resolved,
  avg(satisfaction) AS csat_mean,
  count(satisfaction) AS csat_responses
FROM period
"""
)

_COUNTS = text(
    _PERIOD
    + """
SELECT grouping(category) = 0 AS by_category, grouping(channel) = 0 AS by_channel,
  grouping(severity) = 0 AS by_severity, coalesce(category, channel, severity, satisfaction::text) AS value,
  count(*) AS n
FROM period
GROUP BY GROUPING SETS ((category), (channel), (severity), (satisfaction))
"""
)

_PARETO = text(
    _PERIOD
    + """
SELECT root_cause, n,
  100.0 * n / sum(n) OVER () AS share_pct,
  100.0 * sum(n) OVER (ORDER BY n DESC, root_cause ROWS UNBOUNDED PRECEDING) / sum(n) OVER ()
    AS cumulative_pct
FROM (SELECT root_cause, count(*) AS n FROM period WHERE root_cause IS NOT NULL GROUP BY root_cause) t
ORDER BY n DESC, root_cause
"""
)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _hours(value: float | None) -> float | None:
    return round(float(value), 4) if value is not None else None


async def analytics(
    session: AsyncSession, *, start: datetime, end: datetime, as_of: datetime
) -> Analytics:
    """Complaints received in [start, end), their clocks judged at `as_of`."""
    if start >= end:
        raise InvalidInput.field("query.from", "must be before `to`")
    params = {"start": start, "end": end, "as_of": as_of}
    t = (await session.execute(_TOTALS, params)).one()
    by: dict[str, dict[str, int]] = {
        "category": {c.value: 0 for c in domain.Category},
        "channel": {c.value: 0 for c in domain.Channel},
        "severity": {s.value: 0 for s in domain.Severity},
    }
    csat = dict.fromkeys(range(1, 6), 0)
    for r in await session.execute(_COUNTS, params):
        if r.value is None:
            continue
        if r.by_category:
            by["category"][r.value] = r.n
        elif r.by_channel:
            by["channel"][r.value] = r.n
        elif r.by_severity:
            by["severity"][r.value] = r.n
        else:
            csat[int(r.value)] = r.n
    pareto = [
        RootCauseShare(
            root_cause=r.root_cause,
            count=r.n,
            share_pct=round(float(r.share_pct), 2),
            cumulative_pct=round(float(r.cumulative_pct), 2),
        )
        for r in await session.execute(_PARETO, params)
    ]
    return Analytics(
        period_from=start,
        period_to=end,
        as_of=as_of,
        complaints=t.complaints,
        sla_compliance={
            "first_response": Share(
                met=t.fr_met,
                breached=t.fr_breached,
                compliance_pct=_pct(t.fr_met, t.fr_met + t.fr_breached),
            ),
            "resolution": Share(
                met=t.res_met,
                breached=t.res_breached,
                compliance_pct=_pct(t.res_met, t.res_met + t.res_breached),
            ),
            "overall": Share(
                met=t.all_met,
                breached=t.any_breached,
                compliance_pct=_pct(t.all_met, t.all_met + t.any_breached),
            ),
        },
        time_to_first_response=Durations(
            count=t.responded, median_hours=_hours(t.fr_median_h), p90_hours=_hours(t.fr_p90_h)
        ),
        time_to_resolution=Durations(
            count=t.resolved, median_hours=_hours(t.res_median_h), p90_hours=_hours(t.res_p90_h)
        ),
        time_to_resolution_net=Durations(
            count=t.resolved,
            median_hours=_hours(t.res_net_median_h),
            p90_hours=_hours(t.res_net_p90_h),
        ),
        reopen_rate_pct=_pct(t.reopened, t.ever_resolved),
        csat_mean=round(float(t.csat_mean), 3) if t.csat_mean is not None else None,
        csat_responses=t.csat_responses,
        csat_distribution=csat,
        by_category=by["category"],
        by_channel=by["channel"],
        by_severity=by["severity"],
        root_cause_pareto=pareto,
    )


# --- projections fed by events -----------------------------------------------------------------


class CustomerChange(NamedTuple):
    """One consumed event about a customer: seen (crm.customer.*), a value tier, or erased."""

    customer_id: uuid.UUID
    kind: Literal["seen", "tier", "erased"]
    at: datetime
    tier: domain.Tier | None = None


@dataclass
class CustomerNet:
    """What a batch of changes leaves of one customer, applied in order: the newest tier by
    business time (ties: the later event), nothing after an erasure (which is final)."""

    seen: bool = False
    tier: domain.Tier | None = None
    tier_as_of: datetime | None = None
    erased_at: datetime | None = None


def net_changes(changes: Sequence[CustomerChange]) -> dict[uuid.UUID, CustomerNet]:
    net: dict[uuid.UUID, CustomerNet] = {}
    for change in changes:
        customer = net.setdefault(change.customer_id, CustomerNet())
        if change.kind == "erased":
            customer.erased_at = change.at
        elif customer.erased_at is not None:
            continue
        elif change.kind == "seen":
            customer.seen = True
        elif customer.tier_as_of is None or customer.tier_as_of <= change.at:
            customer.tier, customer.tier_as_of = change.tier, change.at
    return net


# One statement for a whole consumer batch: the projection upserted (the stored row's rules as
# in `net_changes`: erasure final, an older tier never over a newer one), and the erased
# customers' complaints anonymised with their steps' free text.
_APPLY_CUSTOMERS = text(
    """
WITH projected AS (
  INSERT INTO known_customers AS kc (customer_id, known, tier, tier_as_of, erased_at)
  SELECT customer_id, seen AND erased_at IS NULL, CASE WHEN erased_at IS NULL THEN tier END,
         tier_as_of, erased_at
  FROM unnest(CAST(:ids AS uuid[]), CAST(:seen AS boolean[]), CAST(:tiers AS text[]),
              CAST(:tier_as_ofs AS timestamptz[]), CAST(:erased_ats AS timestamptz[]))
       AS u (customer_id, seen, tier, tier_as_of, erased_at)
  ON CONFLICT (customer_id) DO UPDATE SET
    known = CASE WHEN excluded.erased_at IS NOT NULL OR kc.erased_at IS NOT NULL THEN false
                 ELSE kc.known OR excluded.known END,
    tier = CASE WHEN excluded.erased_at IS NOT NULL THEN NULL
                WHEN kc.erased_at IS NULL AND excluded.tier_as_of IS NOT NULL
                     AND (kc.tier_as_of IS NULL OR kc.tier_as_of <= excluded.tier_as_of)
                  THEN excluded.tier
                ELSE kc.tier END,
    tier_as_of = CASE WHEN kc.erased_at IS NULL AND excluded.tier_as_of IS NOT NULL
                           AND (kc.tier_as_of IS NULL OR kc.tier_as_of <= excluded.tier_as_of)
                        THEN excluded.tier_as_of
                      ELSE kc.tier_as_of END,
    erased_at = coalesce(excluded.erased_at, kc.erased_at)
),
anonymised AS (
  UPDATE complaints AS c
  SET customer_id = NULL, subject = NULL, description = NULL, order_id = NULL,
      next_sla_check_at = NULL, anonymised_at = e.erased_at, version = c.version + 1
  FROM unnest(CAST(:erased_ids AS uuid[]), CAST(:erased_at AS timestamptz[]))
       AS e (customer_id, erased_at)
  WHERE c.customer_id = e.customer_id
  RETURNING c.id
),
scrubbed AS (
  UPDATE complaint_steps SET note = NULL, texts = NULL
  WHERE complaint_id IN (SELECT id FROM anonymised)
)
SELECT count(*) FROM anonymised
"""
)


async def apply_customer_changes(
    session: AsyncSession, *, changes: Sequence[CustomerChange]
) -> int:
    """Customers the service may take complaints for, their value tier (SLA targets by tier), and
    the right to be forgotten: free text deleted, the complaints kept as anonymous records.
    Returns how many complaints were anonymised."""
    net = net_changes(changes)
    if not net:
        return 0
    erased = [(c, n.erased_at) for c, n in net.items() if n.erased_at is not None]
    anonymised: int = (
        await session.execute(
            _APPLY_CUSTOMERS,
            {
                "ids": list(net),
                "seen": [n.seen for n in net.values()],
                "tiers": [n.tier.value if n.tier else None for n in net.values()],
                "tier_as_ofs": [n.tier_as_of for n in net.values()],
                "erased_ats": [n.erased_at for n in net.values()],
                "erased_ids": [c for c, _ in erased],
                "erased_at": [at for _, at in erased],
            },
        )
    ).scalar_one()
    if anonymised:
        log.info("complaints.anonymised", complaints=anonymised, customers=len(erased))
    return anonymised
