"""Use cases of the complaints service: one transaction each, events through the outbox.

Every writer locks the customer (`lock_customers`) before it locks a complaint row, so HTTP steps,
the SLA checker and the consumers never deadlock and one customer's events keep their order.
Free text is never logged: log lines carry ids only.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, null, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.complaints import domain
from services.complaints.domain import Action, ComplaintPolicy, InvalidField, Pause, PauseKind
from services.complaints.models import (
    MESSAGING,
    Complaint,
    ComplaintEscalation,
    ComplaintStep,
    KnownCustomer,
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
from shared.db import SessionFactory, transaction
from shared.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from shared.events import CloudEvent, new_event
from shared.events.registry import EVENTS
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


async def load_policy(session: AsyncSession) -> tuple[ComplaintPolicy, int]:
    """The current policy and its version (0: the defaults, never changed)."""
    row = await session.get(PolicyDocument, POLICY_ID)
    if row is None:
        return ComplaintPolicy(), 0
    return ComplaintPolicy.model_validate(row.document), row.version


async def replace_policy(
    session: AsyncSession,
    *,
    policy: ComplaintPolicy,
    if_match: int | None,
    actor: str,
    now: datetime,
) -> int:
    """Store a new policy (targets apply to complaints received from now on); returns its version."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('complaints:policy'))"))
    current, version = await load_policy(session)
    if if_match is not None and if_match != version:
        raise PreconditionFailed(f"The policy is at version {version}, not {if_match}")
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


def to_domain(row: Complaint, escalations: Sequence[ComplaintEscalation]) -> domain.Complaint:
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


def _store(row: Complaint, complaint: domain.Complaint, policy: ComplaintPolicy) -> None:
    """Copy the rules' state onto the row (and what SQL needs to find breaches)."""
    row.status = complaint.status.value
    row.acknowledged_at = complaint.acknowledged_at
    row.resolved_at = complaint.resolved_at
    row.closed_at = complaint.closed_at
    row.root_cause = complaint.root_cause
    row.satisfaction = complaint.satisfaction
    row.reopen_count = complaint.reopen_count
    row.pauses = _pauses_to_json(complaint.pauses)
    row.paused_since = complaint.paused_since
    row.resolution_due_effective = domain.settled_resolution_due(complaint)
    row.escalation_level = complaint.escalation_level
    row.next_sla_check_at = domain.next_sla_check(complaint, policy.sla)
    row.last_step_at = complaint.last_step_at


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


async def open_complaint(
    session: AsyncSession, *, data: ComplaintCreate, actor: str, now: datetime
) -> ComplaintRecord:
    received_at = data.received_at or now
    if received_at > now:
        raise InvalidInput.field("body.received_at", "must not be in the future")
    await lock_customers(session, [data.customer_id])
    customer = await session.get(KnownCustomer, data.customer_id)
    if customer is None or not customer.known or customer.erased_at is not None:
        raise InvalidInput.field("body.customer_id", "unknown customer")
    policy, _ = await load_policy(session)
    tier = domain.Tier(customer.tier) if customer.tier else None
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
    row = Complaint(
        id=complaint.complaint_id,
        customer_id=data.customer_id,
        channel=data.channel.value,
        category=data.category.value,
        severity=data.severity.value,
        tier_at_intake=tier.value if tier else None,
        order_id=data.order_id,
        subject=data.subject,
        description=data.description,
        received_at=received_at,
        first_response_due=complaint.first_response_due,
        resolution_due=complaint.resolution_due,
        opened_by=actor,
        version=1,
    )
    _store(row, complaint, policy)
    session.add(row)
    session.add(
        ComplaintStep(
            complaint_id=row.id,
            action="open",
            from_status=None,
            to_status=complaint.status.value,
            actor=actor,
            at=received_at,
            facts={"severity": data.severity.value, "tier": row.tier_at_intake},
        )
    )
    await session.flush()
    await add_events(session, MESSAGING, [to_cloud_event(e) for e in events])
    log.info("complaint.opened", complaint_id=str(row.id), severity=row.severity)
    return ComplaintRecord(row, escalations=[])


# --- reading -----------------------------------------------------------------------------------


async def _escalations_of(
    session: AsyncSession, complaint_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ComplaintEscalation]]:
    found: dict[uuid.UUID, list[ComplaintEscalation]] = defaultdict(list)
    if complaint_ids:
        rows = await session.scalars(
            select(ComplaintEscalation).where(ComplaintEscalation.complaint_id.in_(complaint_ids))
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
            after = (datetime.fromisoformat(cursor["r"]), uuid.UUID(cursor["i"]))
        except (KeyError, TypeError, ValueError) as exc:
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
            return domain.close(
                complaint, at=at, satisfaction=body.satisfaction, feedback=body.feedback
            )
        case ReopenBody():
            return domain.reopen(complaint, at=at)
        case EscalateBody():
            return domain.escalate(complaint, at=at, reason=body.reason)
    raise TypeError(f"no workflow step for {type(body).__name__}")


async def take_step(
    session: AsyncSession,
    *,
    complaint_id: uuid.UUID,
    body: StepBody,
    actor: str,
    now: datetime,
    if_match: int | None = None,
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
    if if_match is not None and if_match != row.version:
        raise PreconditionFailed(f"The complaint is at version {row.version}, not {if_match}")
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
    for escalation in new_escalations:
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


async def _escalate_batch(
    session: AsyncSession,
    *,
    complaint_ids: list[uuid.UUID],
    customer_ids: list[uuid.UUID | None],
    as_of: datetime,
) -> list[int]:
    await lock_customers(session, [c for c in customer_ids if c is not None])
    rows = list(
        await session.scalars(
            select(Complaint)
            .where(Complaint.id.in_(complaint_ids))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    policy, _ = await load_policy(session)
    escalations = await _escalations_of(session, complaint_ids)
    raised: list[int] = []
    events: list[CloudEvent[Any]] = []
    for row in rows:
        if row.customer_id is None:
            row.next_sla_check_at = None  # anonymised: nobody left to escalate for
            continue
        before = to_domain(row, escalations[row.id])
        after, new_events = domain.evaluate_sla(before, as_of=as_of, policy=policy.sla)
        row.next_sla_check_at = domain.next_sla_check(after, policy.sla)
        new = after.escalations[len(before.escalations) :]
        if not new:
            continue
        row.escalation_level = after.escalation_level
        row.version += 1
        for escalation in new:
            session.add(
                ComplaintEscalation(
                    complaint_id=row.id,
                    level=escalation.level,
                    reason=escalation.reason.value,
                    at=escalation.at,
                    actor=None,
                )
            )
            session.add(
                ComplaintStep(
                    complaint_id=row.id,
                    action=Action.escalate.value,
                    from_status=row.status,
                    to_status=row.status,
                    actor=SLA_CHECKER,
                    at=escalation.at,
                    facts={"level": escalation.level, "reason": escalation.reason.value},
                )
            )
            raised.append(escalation.level)
            if escalation.level in (1, 2):
                clock = "first_response" if escalation.level == 1 else "resolution"
                metrics.SLA_BREACHES.labels(SERVICE, clock).inc()
        events.extend(to_cloud_event(e) for e in new_events)
    await session.flush()
    await add_events(session, MESSAGING, events)
    return raised


# --- analytics (computed in SQL) ---------------------------------------------------------------

_PERIOD = """
WITH period AS (
  SELECT c.*,
    CASE WHEN acknowledged_at IS NOT NULL THEN acknowledged_at <= first_response_due
         WHEN first_response_due < :as_of THEN false END AS first_response_met,
    CASE WHEN resolved_at IS NOT NULL THEN resolved_at <= resolution_due_effective
         WHEN paused_since IS NOT NULL AND paused_since > resolution_due_effective THEN false
         WHEN paused_since IS NULL AND resolution_due_effective < :as_of THEN false
    END AS resolution_met
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


async def remember_customer(session: AsyncSession, *, customer_id: uuid.UUID) -> None:
    """A crm.customer.* event: the customer exists (unless erased, which is final)."""
    await session.execute(
        pg_insert(KnownCustomer)
        .values(customer_id=customer_id, known=True)
        .on_conflict_do_update(
            index_elements=[KnownCustomer.customer_id],
            set_={"known": True},
            where=KnownCustomer.erased_at.is_(None),
        )
    )


async def record_tier(
    session: AsyncSession, *, customer_id: uuid.UUID, tier: domain.Tier | None, as_of: datetime
) -> None:
    """The customer's value tier; an older event never overwrites a newer one."""
    value = tier.value if tier else None
    table = KnownCustomer.__table__
    await session.execute(
        pg_insert(KnownCustomer)
        .values(customer_id=customer_id, tier=value, tier_as_of=as_of)
        .on_conflict_do_update(
            index_elements=[KnownCustomer.customer_id],
            set_={"tier": value, "tier_as_of": as_of},
            where=and_(
                table.c.erased_at.is_(None),
                or_(table.c.tier_as_of.is_(None), table.c.tier_as_of <= as_of),
            ),
        )
    )


async def erase_customer(session: AsyncSession, *, customer_id: uuid.UUID, at: datetime) -> int:
    """Right to be forgotten: free text deleted, the complaints kept as anonymous records."""
    await session.execute(
        pg_insert(KnownCustomer)
        .values(customer_id=customer_id, known=False, erased_at=at)
        .on_conflict_do_update(
            index_elements=[KnownCustomer.customer_id],
            set_={"known": False, "tier": None, "erased_at": at},
        )
    )
    ids = list(
        await session.scalars(
            select(Complaint.id).where(Complaint.customer_id == customer_id).with_for_update()
        )
    )
    if not ids:
        return 0
    await session.execute(
        update(ComplaintStep)
        .where(ComplaintStep.complaint_id.in_(ids))
        .values(note=None, texts=null())
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Complaint)
        .where(Complaint.id.in_(ids))
        .values(
            customer_id=None,
            subject=None,
            description=None,
            order_id=None,
            next_sla_check_at=None,
            anonymised_at=at,
            version=Complaint.version + 1,
        )
        .execution_options(synchronize_session=False)
    )
    log.info("complaints.anonymised", complaints=len(ids))
    return len(ids)
