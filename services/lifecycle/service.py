"""Use cases of the lifecycle service: one transaction each, stage changes through the outbox.

Who writes a customer's row and how they stay out of each other's way:
- the consumer batch (``apply_events``) locks the batch's rows ``FOR UPDATE`` in customer-id
  order, after the runner's per-customer advisory locks;
- the sweep (``evaluate``) is set-based SQL that locks each chunk's rows in customer-id order
  too, so the two never deadlock and a customer's outbox events keep their commit order. It
  skips the rows a batch holds rather than wait behind the batch with its chunk's locks held
  (every batch behind it would wait too), and takes them in a last pass;
- a policy change holds the policy lock exclusively while it recomputes the due columns;
  batches and sweeps hold it shared, so none of them works with a policy being replaced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson
from sqlalchemy import delete, literal, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.lifecycle import domain
from services.lifecycle.domain import (
    Complaint,
    CustomerLifecycle,
    Decision,
    IncompleteOrdersError,
    LifecyclePolicy,
    LowScore,
    Order,
    OrderFacts,
    Reason,
    Severity,
    SomeOrders,
    Stage,
    StageChange,
)
from services.lifecycle.models import (
    CustomerLifecycleRow,
    EarlyLowScore,
    ErasedCustomer,
    EvaluationRun,
    LifecycleOrder,
    PolicyVersion,
    StageTransition,
)
from services.lifecycle.schemas import (
    DistributionRead,
    EvaluationRead,
    EvaluationRunRead,
    EvaluationStatus,
    EvaluationTrigger,
    LifecycleRead,
    MovedCount,
    PolicyRead,
    StageCount,
    TransitionRead,
)
from shared.clock import Clock
from shared.db import (
    SessionFactory,
    driver_connection,
    held_while_running,
    nobody_holds,
    transaction,
)
from shared.errors import NotFound, PreconditionFailed
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.envelope import new_id
from shared.http.preconditions import IfMatch
from shared.messaging.consumer import is_transient
from shared.messaging.outbox import advisory_key, outbox_arrays, outbox_insert
from shared.observability.logging import get_logger

log = get_logger(__name__)

SOURCE = "/crm/lifecycle"
# Held shared by whatever reads the policy to apply it, exclusively by a policy change.
POLICY_LOCK = "lifecycle:policy"
_POLICY_LOCK = f"SELECT pg_advisory_xact_lock{{mode}}(hashtext('{POLICY_LOCK}'))"


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInForce:
    policy: LifecyclePolicy
    version: int  # 0: the DOMAIN.md defaults, never changed
    changed_at: datetime | None = None
    changed_by: str | None = None


async def policy_in_force(session: AsyncSession, *, shared_lock: bool = True) -> PolicyInForce:
    """The current policy; with ``shared_lock`` a concurrent change waits for this transaction."""
    if shared_lock:
        await session.execute(text(_POLICY_LOCK.format(mode="_shared")))
    row = (
        await session.execute(select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1))
    ).scalar_one_or_none()
    if row is None:
        return PolicyInForce(LifecyclePolicy(), 0)
    return PolicyInForce(
        LifecyclePolicy.model_validate(row.policy), row.version, row.changed_at, row.changed_by
    )


def policy_read(current: PolicyInForce) -> PolicyRead:
    return PolicyRead(
        version=current.version,
        changed_at=current.changed_at,
        changed_by=current.changed_by,
        policy=current.policy,
    )


async def replace_policy(
    sessions: SessionFactory,
    *,
    policy: LifecyclePolicy,
    if_match: IfMatch | None,
    changed_by: str,
    now: datetime,
) -> PolicyRead:
    """Record a new policy version and re-plan every customer's time rules with it.

    Applies to evaluations from now on: stages already reached stay; the due columns of
    growth, mature and declining customers are recomputed in the same transaction.
    """
    async with transaction(sessions) as session:
        await session.execute(text(_POLICY_LOCK.format(mode="")))
        current = await policy_in_force(session, shared_lock=False)
        if if_match is not None and not if_match.admits(current.version):
            raise PreconditionFailed(
                f"The policy is at version {current.version}, not {if_match.describe()}: "
                "reload and retry"
            )
        version = current.version + 1
        session.add(
            PolicyVersion(
                version=version,
                policy=policy.model_dump(mode="json"),
                changed_at=now,
                changed_by=changed_by,
            )
        )
        replanned = await _replan_due_times(session, policy)
    log.info("lifecycle.policy_replaced", version=version, replanned=replanned, by=changed_by)
    return policy_read(PolicyInForce(policy, version, now, changed_by))


async def _replan_due_times(session: AsyncSession, policy: LifecyclePolicy) -> int:
    """Recompute the due columns with ``domain.due_times_for``, keyset-paged by customer id."""
    after = uuid.UUID(int=0)
    replanned = 0
    while True:
        rows = (
            await session.execute(
                text(
                    "SELECT customer_id, stage, since, idle_since, gap_days, "
                    "cardinality(purchase_days) AS purchase_days "
                    "FROM customer_lifecycles WHERE stage IN ('growth', 'mature', 'decline') "
                    "AND customer_id > :after ORDER BY customer_id LIMIT 10000"
                ),
                {"after": after},
            )
        ).all()
        if not rows:
            return replanned
        ids, gaps, declines, churns = [], [], [], []
        for row in rows:
            decline_due, churn_due = domain.due_times_for(
                stage=Stage(row.stage),
                since=row.since,
                idle_from=row.idle_since,
                # Under two purchase days g is the policy's default, which may have changed.
                gap_days=row.gap_days if row.purchase_days >= 2 else policy.default_gap_days,
                policy=policy,
            )
            ids.append(row.customer_id)
            gaps.append(row.gap_days if row.purchase_days >= 2 else policy.default_gap_days)
            declines.append(decline_due)
            churns.append(churn_due)
        await session.execute(
            text(
                "UPDATE customer_lifecycles c SET gap_days = u.gap_days, "
                "decline_due_at = u.decline_due, churn_due_at = u.churn_due FROM unnest("
                "CAST(:ids AS uuid[]), CAST(:gaps AS float8[]), "
                "CAST(:declines AS timestamptz[]), CAST(:churns AS timestamptz[])) "
                "AS u(customer_id, gap_days, decline_due, churn_due) "
                "WHERE c.customer_id = u.customer_id"
            ),
            {"ids": ids, "gaps": gaps, "declines": declines, "churns": churns},
        )
        replanned += len(rows)
        after = rows[-1].customer_id


async def policy_versions(
    session: AsyncSession, *, limit: int, before: int | None
) -> list[PolicyRead]:
    query = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit)
    if before is not None:
        query = query.where(PolicyVersion.version < before)
    rows = (await session.execute(query)).scalars().all()
    return [
        policy_read(
            PolicyInForce(
                LifecyclePolicy.model_validate(r.policy), r.version, r.changed_at, r.changed_by
            )
        )
        for r in rows
    ]


# --- state <-> row -----------------------------------------------------------------------------


class _Row(Protocol):
    """A row read by column name: an asyncpg Record, a SQLAlchemy RowMapping or a dict."""

    def __getitem__(self, column: str, /) -> Any: ...


def _to_state(
    row: _Row,
    orders: Mapping[str, Order],
    *,
    policy: LifecyclePolicy | None = None,
) -> CustomerLifecycle:
    """The domain state of a ``customer_lifecycles`` row (``facts`` as JSON text or decoded)
    with its orders: all of them (a dict), or some (``SomeOrders``) and the row's order facts,
    the relationship start with ``policy`` when the row's was computed under it."""
    facts = row["facts"]
    if isinstance(facts, str | bytes):
        facts = orjson.loads(facts)
    before = row["stage_before_decline"]
    state = CustomerLifecycle(
        stage=Stage(row["stage"]),
        since=row["since"],
        reason=Reason(row["reason"]),
        registered_at=row["registered_at"],
        stage_before_decline=Stage(before) if before else None,
        orders=orders,
        pending_refunds={k: Decimal(v) for k, v in facts.get("pending_refunds", {}).items()},
        complaints={
            complaint_id: Complaint(
                Severity(severity) if severity else None,
                datetime.fromisoformat(opened_at),
                is_open,
                satisfaction,
            )
            for complaint_id, (severity, opened_at, is_open, satisfaction) in facts.get(
                "complaints", {}
            ).items()
        },
        decline_causes=frozenset(row["decline_causes"] or ()),
        low_scores=tuple(
            LowScore(datetime.fromisoformat(at), p_alive)
            for at, p_alive in facts.get("low_scores", ())
        ),
    )
    if not isinstance(orders, SomeOrders):
        return state
    return domain.with_order_facts(state, _order_facts_of(row), policy)


def _order_facts_of(row: _Row) -> OrderFacts:
    """The order facts stored in a ``customer_lifecycles`` row."""
    return OrderFacts(
        purchase_days=tuple(row["purchase_days"]),
        first_purchase_at=row["first_purchase_at"],
        last_purchase_at=row["last_purchase_at"],
        latest_order_at=row["latest_order_at"],
        # gap_days is g: the median when there are two purchase days or more.
        median_gap=row["gap_days"] if len(row["purchase_days"]) >= 2 else None,
        relationship_start=row["relationship_start"],
    )


def _to_row(
    customer_id: uuid.UUID,
    state: CustomerLifecycle,
    order_facts: OrderFacts,
    policy: LifecyclePolicy,
    policy_version: int,
    stored_days: Sequence[date] | None = None,
) -> dict[str, Any]:
    """The ``customer_lifecycles`` columns of a state (``facts`` as JSON text) with its order
    facts under ``policy``; its orders are rows of ``lifecycle_orders`` (:func:`_order_rows`).

    The purchase days as the change from ``stored_days`` (the row's, None for a new row): kept,
    one day appended (a purchase in order on a new day), or else written whole.
    """
    idle_from = domain.idle_since(state)
    gap_days = domain.median_gap_days(state, policy)
    decline_due, churn_due = domain.due_times_for(
        stage=state.stage, since=state.since, idle_from=idle_from, gap_days=gap_days, policy=policy
    )
    facts: dict[str, Any] = {
        "pending_refunds": {k: str(v) for k, v in state.pending_refunds.items()},
        "complaints": {
            complaint_id: [
                c.severity.value if c.severity else None,
                c.opened_at.isoformat(),
                c.is_open,
                c.satisfaction,
            ]
            for complaint_id, c in state.complaints.items()
        },
    }
    if state.low_scores:  # rare (only scores below the threshold), so only when there are some
        facts["low_scores"] = [[s.at.isoformat(), s.p_alive] for s in state.low_scores]
    return {
        "customer_id": customer_id,
        "stage": state.stage.value,
        "since": state.since,
        "reason": state.reason.value,
        "registered_at": state.registered_at,
        "stage_before_decline": state.stage_before_decline.value
        if state.stage_before_decline
        else None,
        # Array literals: a ragged list of lists cannot be bound as a two-dimensional array.
        "decline_causes": _text_array(sorted(state.decline_causes)),
        "idle_since": idle_from,
        "gap_days": gap_days,
        "decline_due_at": decline_due,
        "churn_due_at": churn_due,
        "facts": orjson.dumps(facts).decode(),
        **_purchase_days_change(stored_days, order_facts.purchase_days),
        "first_purchase_at": order_facts.first_purchase_at,
        "last_purchase_at": order_facts.last_purchase_at,
        "latest_order_at": order_facts.latest_order_at,
        "relationship_start": order_facts.relationship_start,
        "relationship_policy_version": policy_version,
    }


def _purchase_days_change(stored: Sequence[date] | None, days: tuple[date, ...]) -> dict[str, Any]:
    """``purchase_days`` (an array literal, or None to keep the stored days) and
    ``purchase_day_appended`` (one day after the stored ones, or None)."""
    if stored is not None:
        if len(days) == len(stored) and days == tuple(stored):
            return {"purchase_days": None, "purchase_day_appended": None}
        if len(days) == len(stored) + 1 and days[:-1] == tuple(stored):
            return {"purchase_days": None, "purchase_day_appended": days[-1]}
    literal = "{" + ",".join(d.isoformat() for d in days) + "}"
    return {"purchase_days": literal, "purchase_day_appended": None}


def _held(orders: Mapping[str, Order]) -> Mapping[str, Order]:
    return orders.held() if isinstance(orders, SomeOrders) else orders


def _order_rows(
    customer_id: uuid.UUID, state: CustomerLifecycle, stored: Mapping[str, Order]
) -> list[tuple[uuid.UUID, str, Order]]:
    """The orders of a state that are new or changed since ``stored`` was read."""
    return [
        (customer_id, order_id, order)
        for order_id, order in _held(state.orders).items()
        if stored.get(order_id) != order
    ]


# --- reacting to events ------------------------------------------------------------------------

State = CustomerLifecycle | None
Decide = Callable[[State, LifecyclePolicy, CloudEvent[Any]], Decision | None]


def _registered(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    return domain.on_registered(state, at=e.time)


def _purchased(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    data: p.PurchaseRecorded = e.data
    return domain.on_purchase(state, policy, order_id=data.order_id, amount=data.amount, at=e.time)


def _refunded(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    data: p.PurchaseRefunded = e.data
    return domain.on_refund(
        state, policy, order_id=data.order_id, refunded_total=data.refunded_total, at=e.time
    )


def _complaint_opened(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    data: p.ComplaintOpened = e.data
    return domain.on_complaint_opened(
        state,
        policy,
        complaint_id=str(data.complaint_id),
        severity=Severity(data.severity),
        at=e.time,
    )


def _complaint_reopened(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    data: p.ComplaintReopened = e.data
    return domain.on_complaint_reopened(
        state,
        policy,
        complaint_id=str(data.complaint_id),
        severity=Severity(data.severity),
        at=e.time,
    )


def _complaint_closed(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision:
    data: p.ComplaintClosed = e.data
    return domain.on_complaint_closed(
        state,
        policy,
        complaint_id=str(data.complaint_id),
        satisfaction=data.satisfaction,
        at=e.time,
    )


def _value_scored(state: State, policy: LifecyclePolicy, e: CloudEvent[Any]) -> Decision | None:
    data: p.ValueScored = e.data
    if state is None or data.p_alive is None:
        return None  # a score carries no fact we keep: nothing to remember without a customer
    return domain.on_value_scored(state, policy, p_alive=data.p_alive, at=e.time)


DECIDERS: Mapping[str, Decide] = {
    ev.CUSTOMER_REGISTERED: _registered,
    ev.PURCHASE_RECORDED: _purchased,
    ev.PURCHASE_REFUNDED: _refunded,
    ev.COMPLAINT_OPENED: _complaint_opened,
    ev.COMPLAINT_REOPENED: _complaint_reopened,
    ev.COMPLAINT_CLOSED: _complaint_closed,
    ev.VALUE_SCORED: _value_scored,
}


@dataclass(frozen=True)
class _Recorded:
    customer_id: uuid.UUID
    change: StageChange
    causing_event_id: uuid.UUID | None = None
    evaluation_run_id: uuid.UUID | None = None


async def apply_events(
    session: AsyncSession, events: Sequence[CloudEvent[Any]], *, policy_locked: bool = False
) -> list[CloudEvent[Any]]:
    """Apply a batch of consumed events; returns the stage-changed events, which it wrote to the
    outbox with the changes that caused them.

    Each customer's events are applied in business-time order (stable for equal times),
    which puts the two topics a batch may mix (purchases, complaints) back in order.

    A fixed number of statements whatever the batch size, each bound to arrays on the driver
    connection (no per-row statements, no SQLAlchemy compilation): the policy, the tombstones
    and the low scores waiting for a first event, the rows (locked), the orders the batch needs,
    one write of the changed rows, their new orders and their history; and, only for a batch
    with a low score of a customer without state or such a customer's first event, one write
    of ``early_low_scores``. A score at or above the threshold adds nothing: read without facts
    when it cannot move its customer, and never remembered.

    The orders: a purchase in business-time order is decided with the order facts stored in
    the row and only those of the batch's orders that may be stored (``SomeOrders``), so its
    cost does not grow with the customer's history. A refund, a purchase older than the latest one or a policy
    change since the row was written needs every order: those customers get them all, and a
    customer whose decision turns out to need them (``IncompleteOrdersError``) is decided again
    with them all.
    """
    by_customer: dict[uuid.UUID, list[CloudEvent[Any]]] = defaultdict(list)
    for event in events:
        by_customer[event.data.customer_id].append(event)
    ids = sorted(by_customer)
    db = await driver_connection(session)
    # Those whose first lifecycle event may be in the batch: the low scores that came before it
    # (early_low_scores) are read with the policy, for them only.
    may_start = [cid for cid in ids if any(e.type != ev.VALUE_SCORED for e in by_customer[cid])]
    # A statement of its own (or, `policy_locked`, the consumer's inbox statement): the next one
    # reads under the lock, with a snapshot taken after it.
    if not policy_locked:
        await db.execute(_SHARED_POLICY_LOCK_SQL)
    context = await db.fetchrow(_BATCH_CONTEXT_SQL, ids, may_start)
    assert context is not None
    policy, version = _policy_of(context["policy"]), context["version"]
    erased = set(context["erased"])
    early: dict[uuid.UUID, list[LowScore]] = defaultdict(list)
    for customer_id, scored_at, p_alive in context["early"]:
        early[customer_id].append(LowScore(scored_at, p_alive))
    streams = {
        customer_id: sorted(stream, key=lambda e: e.time)
        for customer_id, stream in by_customer.items()
        if customer_id not in erased
    }
    # A customer with only scores in the batch is read without facts when no score can move
    # them (see _LOCK_ROWS_SQL): one score per purchase, nearly all of them for customers
    # neither in decline nor due to lapse; they would cost a parse of their facts to do nothing.
    # A score below the threshold (rare) is remembered, so its customer is read whole.
    scores_only = {
        customer_id: stream[-1].time
        for customer_id, stream in streams.items()
        if all(e.type == ev.VALUE_SCORED and _low_score(policy, e) is None for e in stream)
    }
    locked = await db.fetch(_LOCK_ROWS_SQL, ids, list(scores_only), list(scores_only.values()))
    rows = {r["customer_id"]: r for r in locked if r["facts"] is not None}
    every = {
        customer_id
        for customer_id, row in rows.items()
        if customer_id in streams and _needs_every_order(row, streams[customer_id], version)
    }
    named = [
        (customer_id, order_id)
        for customer_id in rows.keys() - every
        if customer_id in streams
        for order_id in _known_order_candidates(streams[customer_id], rows[customer_id])
    ]
    stored = await _stored_orders(db, every, named)

    to_erase: dict[uuid.UUID, datetime] = {}
    changed: dict[uuid.UUID, CustomerLifecycle] = {}
    recorded: list[_Recorded] = []
    again: list[uuid.UUID] = []
    facts: dict[uuid.UUID, OrderFacts] = {}  # of the changed states
    waiting: dict[tuple[uuid.UUID, datetime], float] = {}  # low scores of customers without state

    def decide(customer_id: uuid.UUID, state: CustomerLifecycle | None) -> None:
        """Decide a customer's events and keep what changed (nothing kept if it raises)."""
        before = early.get(customer_id, []) if state is None else []
        decided, still_waiting = _decide(customer_id, state, streams[customer_id], policy, before)
        for score in still_waiting:
            key = (customer_id, score.at)
            waiting[key] = min(waiting.get(key, score.p_alive), score.p_alive)
        if decided is not None:
            order_facts = domain.order_facts(decided[0], policy)
            facts[customer_id], (changed[customer_id], moves) = order_facts, decided
            recorded.extend(moves)

    for customer_id in ids:
        if customer_id in erased:
            continue
        stream = streams[customer_id]
        erasure = next((e for e in stream if e.type == ev.CUSTOMER_ERASED), None)
        if erasure is not None:
            to_erase[customer_id] = erasure.time
            continue
        row = rows.get(customer_id)
        state = None
        if row is not None:
            orders = stored[customer_id]
            state = _to_state(
                row, orders if customer_id in every else SomeOrders(orders), policy=policy
            )
        try:
            decide(customer_id, state)
        except IncompleteOrdersError:
            again.append(customer_id)
    if again:
        log.debug("lifecycle.deciding_with_every_order", customers=len(again))
        stored.update(await _stored_orders(db, set(again), []))
        for customer_id in again:
            decide(customer_id, _to_state(rows[customer_id], stored[customer_id]))

    if to_erase:
        await _erase(session, to_erase)
    # Rare: a low score for a customer without state, or the customer's first event took them.
    taken = [customer_id for customer_id in early if customer_id in changed]
    if waiting or taken:
        await db.execute(
            _EARLY_SCORES_SQL,
            taken,
            [customer_id for customer_id, _ in waiting],
            [at for _, at in waiting],
            list(waiting.values()),
        )
    history, events_out = _history(recorded)
    if changed or history:
        state_rows = [
            _to_row(
                cid,
                state,
                facts[cid],
                policy,
                version,
                rows[cid]["purchase_days"] if cid in rows else None,
            )
            for cid, state in changed.items()
        ]
        upsert = [[row[c] for row in state_rows] for c in _ROW_COLUMNS]
        new_orders = [
            order_row
            for cid, state in changed.items()
            for order_row in _order_rows(cid, state, stored.get(cid, {}))
        ]
        order_arrays: list[list[Any]] = [
            [cid for cid, _, _ in new_orders],
            [order_id for _, order_id, _ in new_orders],
            [o.placed_at for _, _, o in new_orders],
            [o.amount for _, _, o in new_orders],
            [o.refunded for _, _, o in new_orders],
        ]
        # The rows, their new orders, their history and its events in one round trip.
        await db.execute(
            _WRITE_SQL,
            *upsert,
            *order_arrays,
            *(history or _NO_HISTORY),
            *outbox_arrays(events_out),
        )
    return events_out


def _decide(
    customer_id: uuid.UUID,
    state: CustomerLifecycle | None,
    stream: Sequence[CloudEvent[Any]],
    policy: LifecyclePolicy,
    early: Sequence[LowScore] = (),
) -> tuple[tuple[CustomerLifecycle, list[_Recorded]] | None, list[LowScore]]:
    """One customer's events applied in order: the new state and its changes, or None when
    nothing moved (scores of a customer not in decline, redeliveries); and the batch's low
    scores that still wait for the customer's first event (none once they have a state).

    ``early``: the low scores that came before the customer had a state; the first decision
    that gives them one takes those and the batch's (``domain.with_low_scores``), the changes
    they make counted as the changes of that event.
    """
    recorded: list[_Recorded] = []
    moved = False
    before, arrived = list(early), list[LowScore]()
    for event in stream:
        if state is None and event.type == ev.VALUE_SCORED:
            score = _low_score(policy, event)
            if score is not None:  # no customer to churn yet: kept for their first event
                before.append(score)
                arrived.append(score)
            continue
        decision = DECIDERS[event.type](state, policy, event)
        if decision is None or (decision.state is state and not decision.changes):
            continue
        if state is None and before:
            joined = domain.with_low_scores(decision.state, policy, before)
            decision = Decision(joined.state, decision.changes + joined.changes)
            before, arrived = [], []
        state, moved = decision.state, True
        recorded += [_Recorded(customer_id, c, causing_event_id=event.id) for c in decision.changes]
    if not moved or state is None:
        return None, arrived
    return (state, recorded), arrived


def _low_score(policy: LifecyclePolicy, event: CloudEvent[Any]) -> LowScore | None:
    """The score of a ``value.scored`` event to remember: below the policy's threshold."""
    return domain.low_score(policy, p_alive=event.data.p_alive, at=event.time)


def _needs_every_order(row: _Row, stream: Sequence[CloudEvent[Any]], version: int) -> bool:
    """Whether a customer's events are decided with every order rather than the row's facts:
    a refund, a purchase older than the latest, or facts from before a policy change."""
    if row["relationship_policy_version"] != version:
        return True
    last = row["last_purchase_at"]
    return any(
        e.type == ev.PURCHASE_REFUNDED
        or (e.type == ev.PURCHASE_RECORDED and last is not None and e.time < last)
        for e in stream
    )


def _known_order_candidates(stream: Sequence[CloudEvent[Any]], row: _Row) -> set[str]:
    """The orders of the batch's purchases that may be stored already (a redelivery): those
    not after the customer's latest order. Profile records an order id once, with its time, so
    a purchase after every stored order is a new order, and most batches read no order."""
    latest = row["latest_order_at"]
    if latest is None:
        return set()
    return {e.data.order_id for e in stream if e.type == ev.PURCHASE_RECORDED and e.time <= latest}


async def _stored_orders(
    db: Any, every: set[uuid.UUID], named: Sequence[tuple[uuid.UUID, str]]
) -> dict[uuid.UUID, dict[str, Order]]:
    """Every order of the customers in ``every``, and of the others those ``named`` that are
    stored (a customer without any gets an empty dict)."""
    stored: dict[uuid.UUID, dict[str, Order]] = defaultdict(dict)
    if every or named:
        for r in await db.fetch(
            _STORED_ORDERS_SQL,
            sorted(every),
            [customer_id for customer_id, _ in named],
            [order_id for _, order_id in named],
        ):
            stored[r["customer_id"]][r["order_id"]] = Order(
                r["placed_at"], r["amount"], r["refunded"]
            )
    return stored


_SHARED_POLICY_LOCK_SQL = _POLICY_LOCK.format(mode="_shared")
# The policy (read under the shared policy lock, which a policy change holds exclusively while
# it re-plans), which of the batch's customers are erased, and the low scores waiting for those
# of $2 (customers with an event other than a score: their first may be in the batch; the table
# holds only customers without a lifecycle, so it is small), in one round trip.
_BATCH_CONTEXT_SQL = """
SELECT p.policy::text AS policy, coalesce(p.version, 0) AS version,
    ARRAY(SELECT customer_id FROM erased_customers WHERE customer_id = ANY($1::uuid[])) AS erased,
    ARRAY(SELECT (customer_id, scored_at, p_alive) FROM early_low_scores
        WHERE customer_id = ANY($2::uuid[])) AS early
FROM (SELECT 1) AS one
LEFT JOIN (SELECT policy, version FROM lifecycle_policies ORDER BY version DESC LIMIT 1) AS p
    ON true
"""
# The rows, locked; `facts` left out (NULL) for a customer whose events in the batch are all
# scores ($2, with the latest score's time $3) when none of them can move the stage: a score
# moves only a customer in decline (model churn) or, through the time rules it runs first, one
# whose lapse or churn fell due before it. Without its state such a customer's scores are
# skipped, as an ordinary score of an unknown customer is (a low score, remembered, is not in $2).
_LOCK_ROWS_SQL = """
SELECT c.customer_id, c.stage, c.since, c.reason, c.registered_at, c.stage_before_decline,
    c.decline_causes, c.gap_days, c.purchase_days, c.first_purchase_at, c.last_purchase_at,
    c.latest_order_at, c.relationship_start, c.relationship_policy_version,
    CASE WHEN s.at IS NULL OR c.stage = 'decline' OR c.decline_due_at < s.at
        OR c.churn_due_at < s.at THEN c.facts::text END AS facts
FROM customer_lifecycles AS c
LEFT JOIN unnest($2::uuid[], $3::timestamptz[]) AS s(customer_id, at)
    ON s.customer_id = c.customer_id
WHERE c.customer_id = ANY($1::uuid[])
ORDER BY c.customer_id
FOR UPDATE OF c
"""
# The low scores the customers of $1 had before their first event, taken into their state; and
# those ($2-$4) that now wait for a customer's first event (an instant's lowest score is kept).
_EARLY_SCORES_SQL = """
WITH taken AS (
    DELETE FROM early_low_scores WHERE customer_id = ANY($1::uuid[])
)
INSERT INTO early_low_scores AS e (customer_id, scored_at, p_alive)
SELECT * FROM unnest($2::uuid[], $3::timestamptz[], $4::float8[])
ON CONFLICT (customer_id, scored_at) DO UPDATE SET p_alive = least(e.p_alive, EXCLUDED.p_alive)
"""
# The orders of the customers in $1 (all of them), and those of $2/$3 that are stored.
_STORED_ORDERS_SQL = """
SELECT o.customer_id, o.order_id, o.placed_at, o.amount, o.refunded
FROM lifecycle_orders AS o WHERE o.customer_id = ANY($1::uuid[])
UNION ALL
SELECT o.customer_id, o.order_id, o.placed_at, o.amount, o.refunded
FROM unnest($2::uuid[], $3::text[]) AS n(customer_id, order_id)
JOIN lifecycle_orders AS o ON o.customer_id = n.customer_id AND o.order_id = n.order_id
"""
# The columns _to_row gives, in the order of the upsert's arrays.
_ROW_COLUMNS = (
    "customer_id",
    "stage",
    "since",
    "reason",
    "registered_at",
    "stage_before_decline",
    "decline_causes",
    "idle_since",
    "gap_days",
    "decline_due_at",
    "churn_due_at",
    "facts",
    "purchase_days",
    "purchase_day_appended",
    "first_purchase_at",
    "last_purchase_at",
    "latest_order_at",
    "relationship_start",
    "relationship_policy_version",
)
# The changed rows ($1-$19), their new or refunded orders ($20-$24), their stage changes
# ($25-$33, WITH ORDINALITY: identities follow the order of the changes, and the history reads
# by (at, id)) and their events ($34-$38, to the outbox) in one statement. A stored row's
# purchase days are written whole ($13), kept, or extended by one day ($14); a new row's are
# written whole.
_WRITE_SQL = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[],
        $5::timestamptz[], $6::text[], $7::text[], $8::timestamptz[], $9::float8[],
        $10::timestamptz[], $11::timestamptz[], $12::text[], $13::text[], $14::date[],
        $15::timestamptz[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[],
        $19::int[])
        AS u(customer_id, stage, since, reason, registered_at, stage_before_decline,
            decline_causes, idle_since, gap_days, decline_due_at, churn_due_at, facts,
            purchase_days, purchase_day_appended, first_purchase_at, last_purchase_at,
            latest_order_at, relationship_start, relationship_policy_version)
), orders AS (
    INSERT INTO lifecycle_orders AS o (customer_id, order_id, placed_at, amount, refunded)
    SELECT * FROM unnest($20::uuid[], $21::text[], $22::timestamptz[], $23::numeric[],
        $24::numeric[])
    ON CONFLICT (customer_id, order_id) DO UPDATE SET refunded = EXCLUDED.refunded
), history AS (
    INSERT INTO stage_transitions (customer_id, from_stage, to_stage, reason, trigger, at,
        causing_event_id, evaluation_run_id, event_id)
    SELECT customer_id, from_stage, to_stage, reason, trigger, at, causing_event_id,
        evaluation_run_id, event_id
    FROM unnest($25::uuid[], $26::text[], $27::text[], $28::text[], $29::text[],
        $30::timestamptz[], $31::uuid[], $32::uuid[], $33::uuid[]) WITH ORDINALITY
        AS t(customer_id, from_stage, to_stage, reason, trigger, at, causing_event_id,
            evaluation_run_id, event_id, n)
    ORDER BY n
), published AS (
    {outbox}
), updated AS (
    UPDATE customer_lifecycles AS c SET
        stage = u.stage, since = u.since, reason = u.reason, registered_at = u.registered_at,
        stage_before_decline = u.stage_before_decline,
        decline_causes = CAST(u.decline_causes AS varchar(100)[]), idle_since = u.idle_since,
        gap_days = u.gap_days, decline_due_at = u.decline_due_at,
        churn_due_at = u.churn_due_at, facts = CAST(u.facts AS jsonb),
        purchase_days = CASE
            WHEN u.purchase_days IS NOT NULL THEN CAST(u.purchase_days AS date[])
            WHEN u.purchase_day_appended IS NOT NULL
                THEN c.purchase_days || u.purchase_day_appended
            ELSE c.purchase_days END,
        first_purchase_at = u.first_purchase_at, last_purchase_at = u.last_purchase_at,
        latest_order_at = u.latest_order_at, relationship_start = u.relationship_start,
        relationship_policy_version = u.relationship_policy_version, updated_at = now()
    FROM u WHERE c.customer_id = u.customer_id
    RETURNING c.customer_id
)
INSERT INTO customer_lifecycles (customer_id, stage, since, reason, registered_at,
    stage_before_decline, decline_causes, idle_since, gap_days, decline_due_at, churn_due_at,
    facts, purchase_days, first_purchase_at, last_purchase_at, latest_order_at,
    relationship_start, relationship_policy_version)
SELECT customer_id, stage, since, reason, registered_at, stage_before_decline,
    CAST(decline_causes AS varchar(100)[]), idle_since, gap_days, decline_due_at, churn_due_at,
    CAST(facts AS jsonb), CAST(purchase_days AS date[]), first_purchase_at, last_purchase_at,
    latest_order_at, relationship_start, relationship_policy_version
FROM u WHERE customer_id NOT IN (SELECT customer_id FROM updated)
""".replace("{outbox}", outbox_insert("outbox", 34))
_NO_HISTORY: list[list[Any]] = [[] for _ in range(9)]


def _policy_of(stored: str | None) -> LifecyclePolicy:
    return LifecyclePolicy() if stored is None else LifecyclePolicy.model_validate_json(stored)


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal (a ragged list of lists cannot be bound as an array)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


async def _erase(session: AsyncSession, erased: Mapping[uuid.UUID, datetime]) -> None:
    """Right to be forgotten: the state (with its remembered scores), orders, history and scores
    waiting for a first event go; a tombstone keeps late events out."""
    ids = list(erased)
    await session.execute(
        delete(CustomerLifecycleRow).where(CustomerLifecycleRow.customer_id.in_(ids))
    )
    await session.execute(delete(StageTransition).where(StageTransition.customer_id.in_(ids)))
    await session.execute(delete(LifecycleOrder).where(LifecycleOrder.customer_id.in_(ids)))
    await session.execute(delete(EarlyLowScore).where(EarlyLowScore.customer_id.in_(ids)))
    await session.execute(
        pg_insert(ErasedCustomer)
        .values([{"customer_id": cid, "erased_at": at} for cid, at in erased.items()])
        .on_conflict_do_nothing()
    )
    log.info("lifecycle.erased", customers=len(ids))


# Parametrised once: shared.events.new_event parametrises the generic on every call (~0.5 ms).
_StageChangedEvent = CloudEvent[p.StageChanged]


def _stage_changed(r: _Recorded, event_id: uuid.UUID) -> CloudEvent[p.StageChanged]:
    change = r.change
    return _StageChangedEvent(
        id=event_id,
        source=SOURCE,
        type=ev.STAGE_CHANGED,
        subject=str(r.customer_id),
        time=change.at,
        data=p.StageChanged(
            customer_id=r.customer_id,
            from_stage=p.Stage(change.from_stage) if change.from_stage else None,
            to_stage=p.Stage(change.to_stage),
            reason=change.reason.value,
            causing_event_id=r.causing_event_id,
            evaluation_run_id=r.evaluation_run_id,
        ),
    )


def _history(recorded: Sequence[_Recorded]) -> tuple[list[list[Any]], list[CloudEvent[Any]]]:
    """The history arrays of _WRITE_SQL for these changes (none without changes) and each change's
    ``stage_changed`` event."""
    if not recorded:
        return [], []
    event_ids = [new_id() for _ in recorded]
    arrays: list[list[Any]] = [
        [r.customer_id for r in recorded],
        [r.change.from_stage.value if r.change.from_stage else None for r in recorded],
        [r.change.to_stage.value for r in recorded],
        [r.change.reason.value for r in recorded],
        [r.change.trigger.value for r in recorded],
        [r.change.at for r in recorded],
        [r.causing_event_id for r in recorded],
        [r.evaluation_run_id for r in recorded],
        event_ids,
    ]
    return arrays, [_stage_changed(r, e) for r, e in zip(recorded, event_ids, strict=True)]


# --- the time rules, set-based ------------------------------------------------------------------

# Each statement moves one chunk of due customers (ids sorted, joined as a table: a large
# `= ANY(array)` parameter is not hashed in a generic plan): it locks them in customer-id
# order (the consumers' order), re-checks under the lock, moves them and writes the history
# and the outbox. `{lock}` is SKIP LOCKED in the first pass, waits in the last. The payload
# is the CloudEvent JSON of crm.lifecycle.stage_changed.v1; every value in it is a uuid, a stage, a reason or a timestamp, so no JSON escaping is needed.
_SWEEP_SQL = """
WITH chunk AS (
    SELECT unnest(CAST(:ids AS uuid[])) AS customer_id
), locked AS (
    SELECT c.customer_id FROM customer_lifecycles c JOIN chunk USING (customer_id)
    WHERE c.{due_column} < :as_of AND c.stage IN ({from_stages})
    ORDER BY c.customer_id FOR UPDATE OF c {lock}
), moved AS (
    UPDATE customer_lifecycles c
    SET stage = CAST(:to_stage AS text), reason = CAST(:reason AS text),
        since = c.{due_column}, stage_before_decline = {stage_before}, decline_causes = '{{}}',
        decline_due_at = NULL, {churn_due_update} updated_at = now()
    FROM locked
    WHERE c.customer_id = locked.customer_id
      AND c.{due_column} < :as_of AND c.stage IN ({from_stages})
    RETURNING c.customer_id, {from_stage_returned} AS from_stage, c.since AS at
), changes AS (
    SELECT customer_id, from_stage, at, gen_random_uuid() AS event_id FROM moved
), history AS (
    INSERT INTO stage_transitions
        (customer_id, from_stage, to_stage, reason, trigger, at, evaluation_run_id, event_id)
    SELECT customer_id, from_stage, CAST(:to_stage AS text), CAST(:reason AS text), 'time', at,
        CAST(:run_id AS uuid), event_id
    FROM changes
), published AS (
    INSERT INTO outbox (event_id, event_type, topic, key, payload)
    SELECT event_id, CAST(:event_type AS text), CAST(:topic AS text), customer_id::text,
        convert_to(format(
            '{{"specversion":"1.0","id":"%s","source":"%s","type":"%s","subject":"%s",'
            '"time":"%s","datacontenttype":"application/json","data":{{"customer_id":"%s",'
            '"from_stage":"%s","to_stage":"%s","reason":"%s","evaluation_run_id":"%s"}}}}',
            event_id, CAST(:source AS text), CAST(:event_type AS text), customer_id,
            to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), customer_id,
            from_stage, CAST(:to_stage AS text), CAST(:reason AS text), CAST(:run_id AS uuid)
        ), 'UTF8')
    FROM changes
)
SELECT from_stage, count(*) AS customers FROM changes GROUP BY from_stage
"""
_DUE_SQL = """
SELECT customer_id FROM customer_lifecycles
WHERE {due_column} < :as_of AND stage IN ({from_stages}) ORDER BY customer_id
"""


@dataclass(frozen=True)
class _TimeRule:
    due: Any  # the sorted ids of the customers due
    move: Any  # one chunk of them, skipping those a consumer batch holds
    move_waiting: Any  # the same, waiting for them
    to_stage: Stage
    reason: Reason


def _time_rule(
    due_column: str,
    from_stages: str,
    to_stage: Stage,
    reason: Reason,
    *,
    stage_before: str,
    churn_due_update: str,
    from_stage_returned: str,
) -> _TimeRule:
    def move(lock: str) -> Any:
        return text(
            _SWEEP_SQL.format(
                due_column=due_column,
                from_stages=from_stages,
                stage_before=stage_before,
                churn_due_update=churn_due_update,
                from_stage_returned=from_stage_returned,
                lock=lock,
            )
        )

    return _TimeRule(
        due=text(_DUE_SQL.format(due_column=due_column, from_stages=from_stages)),
        move=move("SKIP LOCKED"),
        move_waiting=move(""),
        to_stage=to_stage,
        reason=reason,
    )


# Lapsing first, so one run takes an idle customer through decline to churned.
_TIME_RULES = (
    _time_rule(
        "decline_due_at",
        "'growth', 'mature'",
        Stage.DECLINE,
        Reason.LAPSING,
        stage_before="c.stage",
        churn_due_update="",
        from_stage_returned="c.stage_before_decline",
    ),
    _time_rule(
        "churn_due_at",
        "'decline'",
        Stage.CHURNED,
        Reason.INACTIVE,
        stage_before="NULL",
        churn_due_update="churn_due_at = NULL,",
        from_stage_returned="'decline'",
    ),
)


def run_lock_key(run_id: uuid.UUID) -> int:
    """The lock the process running this evaluation run holds (`held_while_running`): a run
    marked running whose lock is free was cut short (`run_requested_evaluations`)."""
    return advisory_key(f"lifecycle:evaluation:{run_id}")


def _moved_reads(moved: Mapping[tuple[str, Stage, Reason], int]) -> list[MovedCount]:
    return [
        MovedCount(from_stage=Stage(frm), to_stage=to, reason=reason, customers=n)
        for (frm, to, reason), n in sorted(moved.items())
    ]


def _moved_json(moved: Mapping[tuple[str, Stage, Reason], int]) -> str:
    return orjson.dumps([m.model_dump(mode="json") for m in _moved_reads(moved)]).decode()


_RUN_PROGRESS_SQL = text("""
UPDATE evaluation_runs
SET moved = CAST(:moved AS jsonb), chunks = :chunks, last_pass = :last_pass,
    policy_version = :policy_version, updated_at = :at
WHERE run_id = :run_id
""")


@dataclass
class _RunProgress:
    """What a run has committed: its counts, chunks and customers moved in the last pass."""

    moved: dict[tuple[str, Stage, Reason], int]
    chunks: int = 0
    last_pass: int = 0
    policy_version: int = 0

    @classmethod
    def of(cls, run: EvaluationRun) -> _RunProgress:
        moved = {
            (m["from_stage"], Stage(m["to_stage"]), Reason(m["reason"])): int(m["customers"])
            for m in run.moved
        }
        return cls(moved, run.chunks, run.last_pass, run.policy_version or 0)


async def evaluate(
    sessions: SessionFactory,
    *,
    as_of: datetime,
    requested_by: str,
    now: datetime,
    trigger: EvaluationTrigger = EvaluationTrigger.REQUEST,
    chunk_size: int = 1_000,
    pause_ratio: float = 1.0,
) -> EvaluationRead:
    """Apply the lapsing and inactivity rules to every customer due before ``as_of``, as a
    run recorded in ``evaluation_runs`` from its start (see ``_sweep``).

    A run that fails is marked failed with the error; one cut short (the process stopped) is
    marked failed by the worker's next look at the runs (``run_requested_evaluations``). The
    customers it moved stay moved, and the next run moves the rest.
    """
    run_id = uuid.uuid4()
    async with held_while_running(sessions, run_lock_key(run_id)):
        async with transaction(sessions) as session:
            session.add(
                EvaluationRun(
                    run_id=run_id,
                    status=EvaluationStatus.RUNNING,
                    trigger=trigger,
                    as_of=as_of,
                    requested_at=now,
                    requested_by=requested_by,
                    started_at=now,
                    updated_at=now,
                    moved=[],
                    chunks=0,
                    last_pass=0,
                )
            )
        try:
            return await _sweep(
                sessions,
                run_id=run_id,
                as_of=as_of,
                now=now,
                progress=_RunProgress({}),
                chunk_size=chunk_size,
                pause_ratio=pause_ratio,
            )
        except Exception as exc:
            await _fail_run(sessions, run_id, error=f"{type(exc).__name__}: {exc}", at=now)
            raise


async def _fail_run(
    sessions: SessionFactory, run_id: uuid.UUID, *, error: str, at: datetime
) -> None:
    try:
        async with transaction(sessions) as session:
            await session.execute(
                update(EvaluationRun)
                .where(EvaluationRun.run_id == run_id)
                .values(status=EvaluationStatus.FAILED, error=error[:2000], finished_at=at)
            )
    except Exception:  # the database is away: the next look at the runs marks it
        log.warning("lifecycle.evaluation_not_marked_failed", run_id=str(run_id), exc_info=True)


async def _sweep(
    sessions: SessionFactory,
    *,
    run_id: uuid.UUID,
    as_of: datetime,
    now: datetime,
    progress: _RunProgress,
    chunk_size: int,
    pause_ratio: float,
) -> EvaluationRead:
    """The time rules for one run (``progress``: what it committed before, when resumed).

    The due columns were computed by ``domain.due_times`` (a rule fires iff its due time is
    strictly before ``as_of``, the change is dated at the due time), so this is the pure
    ``domain.evaluate`` done set-based. One transaction per chunk, which also writes the run's
    counts; after each chunk the sweep pauses ``pause_ratio`` times the chunk's own time, so
    that the consumers' batches (which wait for the rows a chunk holds) and the relay (which
    publishes the chunk's events before theirs) keep going while a large sweep runs. Customers
    a batch held during their chunk are moved in a last pass, which waits for them: the run
    moves everyone due.
    """
    started = time.perf_counter()
    moved = progress.moved
    chunk_seconds, chunks_before = 0.0, progress.chunks

    def at() -> datetime:  # business-clock time: the caller's now plus the time spent
        return now + timedelta(seconds=time.perf_counter() - started)

    async def move(rule: _TimeRule, statement: Any, ids: list[uuid.UUID], *, last: bool) -> int:
        async with transaction(sessions) as session:
            progress.policy_version = (await policy_in_force(session)).version  # a change waits
            counts = (
                await session.execute(
                    statement,
                    {
                        "ids": ids,
                        "as_of": as_of,
                        "to_stage": rule.to_stage.value,
                        "reason": rule.reason.value,
                        "run_id": run_id,
                        "event_type": ev.STAGE_CHANGED,
                        "topic": ev.topic_for(ev.STAGE_CHANGED),
                        "source": SOURCE,
                    },
                )
            ).all()
            after = dict(moved)
            for row in counts:
                key = (row.from_stage, rule.to_stage, rule.reason)
                after[key] = after.get(key, 0) + row.customers
            n = int(sum(row.customers for row in counts))
            await session.execute(
                _RUN_PROGRESS_SQL,
                {
                    "moved": _moved_json(after),
                    "chunks": progress.chunks + 1,
                    "last_pass": progress.last_pass + (n if last else 0),
                    "policy_version": progress.policy_version,
                    "at": at(),
                    "run_id": run_id,
                },
            )
        moved.clear()
        moved.update(after)  # committed
        progress.chunks += 1
        progress.last_pass += n if last else 0
        return n

    async def still_due(rule: _TimeRule) -> list[uuid.UUID]:
        async with transaction(sessions) as session:
            progress.policy_version = (await policy_in_force(session)).version
            return list((await session.execute(rule.due, {"as_of": as_of})).scalars())

    for rule in _TIME_RULES:
        due = await still_due(rule)
        moved_now = 0
        for start in range(0, len(due), chunk_size):
            if progress.chunks > chunks_before and pause_ratio:
                await asyncio.sleep(chunk_seconds * pause_ratio)
            chunk_started = time.perf_counter()
            moved_now += await move(rule, rule.move, due[start : start + chunk_size], last=False)
            chunk_seconds = time.perf_counter() - chunk_started
        # All moved: none skipped, no second look. Otherwise some were skipped, or a batch
        # moved them first (the statement re-checks), and the second look tells which.
        if moved_now < len(due) and (skipped := await still_due(rule)):
            for start in range(0, len(skipped), chunk_size):
                await move(rule, rule.move_waiting, skipped[start : start + chunk_size], last=True)
    seconds = round(time.perf_counter() - started, 3)
    async with transaction(sessions) as session:
        await session.execute(
            update(EvaluationRun)
            .where(EvaluationRun.run_id == run_id)
            .values(
                status=EvaluationStatus.SUCCEEDED,
                policy_version=progress.policy_version,
                finished_at=now + timedelta(seconds=seconds),
                updated_at=now + timedelta(seconds=seconds),
            )
        )
    result = EvaluationRead(
        run_id=run_id,
        as_of=as_of,
        policy_version=progress.policy_version,
        moved=_moved_reads(moved),
        total_moved=sum(moved.values()),
        seconds=seconds,
    )
    log.info(
        "lifecycle.evaluated",
        run_id=str(run_id),
        moved=result.total_moved,
        as_of=as_of.isoformat(),
        seconds=seconds,
        chunks=progress.chunks,
        last_pass=progress.last_pass,
    )
    return result


# --- evaluations asked for with `Prefer: respond-async`, run by the worker ----------------------

_ABANDONED = (
    "abandoned: the process running it stopped before it finished; the customers it moved "
    "stay moved, and the next run moves the rest"
)


async def request_evaluation(
    session: AsyncSession, *, as_of: datetime, requested_by: str, now: datetime
) -> EvaluationRunRead:
    """Record a run for the worker to do (`run_requested_evaluations`)."""
    run = EvaluationRun(
        run_id=uuid.uuid4(),
        status=EvaluationStatus.PENDING,
        trigger=EvaluationTrigger.ASYNC_REQUEST,
        as_of=as_of,
        requested_at=now,
        requested_by=requested_by,
        moved=[],
        chunks=0,
        last_pass=0,
    )
    session.add(run)
    await session.flush()
    log.info("lifecycle.evaluation_requested", run_id=str(run.run_id), as_of=as_of.isoformat())
    return _run_read(run)


async def _claim_run(sessions: SessionFactory, *, now: datetime) -> EvaluationRun | None:
    """The next run to do (pending, or asked for asynchronously and cut short); marks a
    waited-on or scheduled run that was cut short as failed on the way (its caller is gone)."""
    async with transaction(sessions) as session:
        runs = (
            await session.execute(
                select(EvaluationRun)
                .where(
                    EvaluationRun.status.in_([EvaluationStatus.RUNNING, EvaluationStatus.PENDING])
                )
                .order_by(EvaluationRun.requested_at, EvaluationRun.run_id)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        for run in runs:
            if run.status == EvaluationStatus.PENDING:
                run.status, run.started_at, run.updated_at = EvaluationStatus.RUNNING, now, now
                return run
            if not await nobody_holds(session, run_lock_key(run.run_id)):
                continue  # its process is at it
            if run.trigger == EvaluationTrigger.ASYNC_REQUEST:
                log.warning("lifecycle.evaluation_resumed", run_id=str(run.run_id))
                return run
            run.status, run.error, run.finished_at = EvaluationStatus.FAILED, _ABANDONED, now
            log.warning("lifecycle.evaluation_abandoned", run_id=str(run.run_id))
    return None


async def run_requested_evaluations(
    sessions: SessionFactory,
    *,
    clock: Clock,
    chunk_size: int,
    pause_ratio: float = 1.0,
    limit: int = 10,
) -> int:
    """Worker job (one replica at a time): the runs asked for, oldest first, each resumed where
    it stood if a process running it stopped. Returns how many finished."""
    done = 0
    for _ in range(limit):  # bounded per tick; more wait for the next tick
        run = await _claim_run(sessions, now=clock.now())
        if run is None:
            break
        async with held_while_running(sessions, run_lock_key(run.run_id)):
            try:
                await _sweep(
                    sessions,
                    run_id=run.run_id,
                    as_of=run.as_of,
                    now=clock.now(),
                    progress=_RunProgress.of(run),
                    chunk_size=chunk_size,
                    pause_ratio=pause_ratio,
                )
            except Exception as exc:
                if is_transient(exc):
                    raise  # left running: resumed once the database is back
                log.exception("lifecycle.evaluation_failed", run_id=str(run.run_id))
                await _fail_run(
                    sessions, run.run_id, error=f"{type(exc).__name__}: {exc}", at=clock.now()
                )
                continue
        done += 1
    return done


def _run_read(run: EvaluationRun) -> EvaluationRunRead:
    moved = _RunProgress.of(run).moved
    return EvaluationRunRead(
        run_id=run.run_id,
        status=EvaluationStatus(run.status),
        trigger=EvaluationTrigger(run.trigger),
        as_of=run.as_of,
        requested_at=run.requested_at,
        requested_by=run.requested_by,
        started_at=run.started_at,
        updated_at=run.updated_at,
        finished_at=run.finished_at,
        policy_version=run.policy_version,
        moved=_moved_reads(moved),
        total_moved=sum(moved.values()),
        chunks=run.chunks,
        last_pass=run.last_pass,
        seconds=(
            round((run.finished_at - run.started_at).total_seconds(), 3)
            if run.finished_at is not None and run.started_at is not None
            else None
        ),
        error=run.error,
    )


async def evaluation_run(session: AsyncSession, *, run_id: uuid.UUID) -> EvaluationRunRead:
    run = await session.get(EvaluationRun, run_id)
    if run is None:
        raise NotFound(f"No evaluation run {run_id}")
    return _run_read(run)


async def evaluation_runs(
    session: AsyncSession,
    *,
    limit: int,
    status: EvaluationStatus | None = None,
    moved_customers: bool | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[EvaluationRunRead]:
    """Runs, newest first (`before`: the last one of the previous page); `moved_customers`:
    only those that moved somebody (True) or nobody (False)."""
    query = select(EvaluationRun)
    if status is not None:
        query = query.where(EvaluationRun.status == status)
    if moved_customers is not None:
        nobody = EvaluationRun.moved == text("'[]'::jsonb")
        query = query.where(~nobody if moved_customers else nobody)
    if before is not None:
        query = query.where(
            tuple_(EvaluationRun.requested_at, EvaluationRun.run_id)
            < tuple_(literal(before[0]), literal(before[1]))
        )
    query = query.order_by(EvaluationRun.requested_at.desc(), EvaluationRun.run_id.desc())
    return [_run_read(run) for run in (await session.execute(query.limit(limit))).scalars()]


#: Rows deleted per statement by `prune_empty_sweeps` and `prune_early_low_scores` (sweeps, one a
#: minute, accumulate; a first prune of a long-running database goes over several sweeps).
PRUNE_ROWS_PER_STATEMENT = 10_000


async def prune_early_low_scores(sessions: SessionFactory, *, before: datetime) -> int:
    """Delete the low scores remembered before `before` whose customer has had no lifecycle event
    since (those of a customer with one were taken into their state, and are gone): scores of
    customers lifecycle never hears of, which would otherwise wait for good."""
    async with transaction(sessions) as session:
        doomed = (
            select(EarlyLowScore.customer_id, EarlyLowScore.scored_at)
            .where(EarlyLowScore.remembered_at < before)
            .order_by(EarlyLowScore.remembered_at)
            .limit(PRUNE_ROWS_PER_STATEMENT)
            .with_for_update(skip_locked=True)
        )
        result = await session.execute(
            delete(EarlyLowScore).where(
                tuple_(EarlyLowScore.customer_id, EarlyLowScore.scored_at).in_(doomed)
            )
        )
    pruned = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if pruned:
        log.info("lifecycle.early_low_scores_pruned", scores=pruned, before=before.isoformat())
    return pruned


async def prune_empty_sweeps(sessions: SessionFactory, *, before: datetime) -> int:
    """Delete the scheduled sweeps requested before `before` that succeeded and moved nobody:
    one a minute, they would outnumber every other run within days. Runs that moved customers
    stay (their stage changes name them), and so do requested and failed ones."""
    async with transaction(sessions) as session:
        doomed = (
            select(EvaluationRun.run_id)
            .where(
                EvaluationRun.status == EvaluationStatus.SUCCEEDED,
                EvaluationRun.requested_at < before,
                EvaluationRun.trigger == EvaluationTrigger.SCHEDULE,
                EvaluationRun.moved == text("'[]'::jsonb"),
            )
            .order_by(EvaluationRun.requested_at)
            .limit(PRUNE_ROWS_PER_STATEMENT)
            .with_for_update(skip_locked=True)
        )
        result = await session.execute(
            delete(EvaluationRun).where(EvaluationRun.run_id.in_(doomed.scalar_subquery()))
        )
    pruned = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if pruned:
        log.info("lifecycle.empty_sweeps_pruned", runs=pruned, before=before.isoformat())
    return pruned


# --- queries ------------------------------------------------------------------------------------


async def customer_lifecycle(
    session: AsyncSession, *, customer_id: uuid.UUID, as_of: datetime
) -> LifecycleRead:
    row = (
        await session.execute(
            select(CustomerLifecycleRow.__table__).where(
                CustomerLifecycleRow.customer_id == customer_id
            )
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"No lifecycle for customer {customer_id}")
    state = _to_state(row._mapping, SomeOrders())  # the order facts are in the row
    # Under two purchase days g is the default of the policy in force: a policy change
    # re-plans only growth, mature and declining customers' columns.
    policy = (await policy_in_force(session, shared_lock=False)).policy
    history = (
        await session.execute(
            select(StageTransition)
            .where(StageTransition.customer_id == customer_id)
            .order_by(StageTransition.at, StageTransition.id)
        )
    ).scalars()
    return LifecycleRead(
        customer_id=customer_id,
        stage=state.stage,
        since=state.since,
        reason=state.reason,
        days_in_stage=max(0.0, (as_of - state.since).total_seconds() / 86_400),
        stage_before_decline=state.stage_before_decline,
        decline_causes=sorted(state.decline_causes),
        open_complaints=sorted(state.open_complaints),
        purchase_days=len(state.purchase_days),
        first_purchase_at=state.first_purchase_at,
        last_purchase_at=state.last_purchase_at,
        median_gap_days=domain.median_gap_days(state, policy),
        decline_due_at=row.decline_due_at,
        churn_due_at=row.churn_due_at,
        history=[
            TransitionRead(
                from_stage=Stage(t.from_stage) if t.from_stage else None,
                to_stage=Stage(t.to_stage),
                reason=Reason(t.reason),
                trigger=t.trigger,
                at=t.at,
                causing_event_id=t.causing_event_id,
                evaluation_run_id=t.evaluation_run_id,
            )
            for t in history
        ],
    )


async def distribution(
    session: AsyncSession, *, as_of: datetime | None, now: datetime
) -> DistributionRead:
    """Customers per stage with the median days in it: now, or ``as_of`` from the history."""
    if as_of is None:
        rows = (
            await session.execute(
                text(
                    "SELECT stage, count(*) AS customers, percentile_cont(0.5) WITHIN GROUP "
                    "(ORDER BY extract(epoch FROM CAST(:at AS timestamptz) - since)) / 86400 AS median_days "
                    "FROM customer_lifecycles GROUP BY stage"
                ),
                {"at": now},
            )
        ).all()
    else:
        rows = (
            await session.execute(
                text(
                    "SELECT stage, count(*) AS customers, percentile_cont(0.5) WITHIN GROUP "
                    "(ORDER BY extract(epoch FROM CAST(:at AS timestamptz) - since)) / 86400 AS median_days "
                    "FROM (SELECT DISTINCT ON (customer_id) to_stage AS stage, at AS since "
                    "      FROM stage_transitions WHERE at <= :at "
                    "      ORDER BY customer_id, at DESC, id DESC) AS last_change "
                    "GROUP BY stage"
                ),
                {"at": as_of},
            )
        ).all()
    counts = {Stage(r.stage): r for r in rows}
    total = sum(r.customers for r in rows)
    return DistributionRead(
        as_of=as_of or now,
        from_history=as_of is not None,
        total=total,
        stages=[
            StageCount(
                stage=stage,
                customers=counts[stage].customers if stage in counts else 0,
                share=round(counts[stage].customers / total, 6) if stage in counts else 0.0,
                median_days_in_stage=round(float(counts[stage].median_days), 3)
                if stage in counts and counts[stage].median_days is not None
                else None,
            )
            for stage in Stage
        ],
    )
