"""The customer life cycle as a pure state machine (DOMAIN.md §1).

No I/O and no wall clock: every decision takes the business time it needs (the event's
``time`` or an explicit ``as_of``) and returns a :class:`Decision` — the new state plus the
stage changes it caused, in order (none, one, or a short chain, see below).

The transition table :data:`TRANSITIONS` is data and the single source of truth: every stage
change goes through :func:`_move`, which refuses (raises :class:`ForbiddenTransitionError`)
any (from, to, reason, trigger) that is not a row of the table. ``trigger`` names the rule
that fired, which is usually but not always the kind of event being processed (see the
time rules and complaints in force below).

Decisions recorded here (made with the lead; the tests pin every one of them):

* **Business time.** A change triggered by an event happens at ``max(event time,
  state.since)``: a late event never creates a change in the past of the current stage.
  Time rules happen at their deterministic due time (:func:`due_times`), fire only when the
  due time is strictly before ``as_of``, and :func:`evaluate` runs them to a fixed point.
* **Time rules run up to every event first.** Each decision applies :func:`evaluate` up to
  the event's time before the event itself, so results do not depend on the sweep cadence
  (a purchase 130 idle days after the last one is ``lapsing`` at day 120, then
  ``reactivated``, whether a sweep ran in between or not), and a replay in business-time
  order reproduces the live history.
* **Late and out-of-order events** leave the current stage equal to what in-order
  processing would give (property-tested, with one inherent exception below):
  a purchase older than a *lapsing* decline reactivates only if, with that purchase known,
  the lapse had not happened by the decline's date; a purchase older than an *inactivity*
  churn wins back only if the churn had not happened by then, and then goes on to ``mature``
  when the criteria hold (the churn was a mistake); a purchase older than a complaint in
  force does not end that complaint's decline, and a complaint seen before an older
  purchase declines the customer once that purchase arrives (trigger ``complaint_opened``);
  a complaint or a P(alive) score older than the latest order moves nothing, and a score
  older than the current decline neither (in order it found the customer before it), unless
  the facts known now put the customer in decline at the score's time (then the churn is
  dated at the decline's start).
  The exceptions, all because stages only move along the table: a late purchase can
  shorten g so much that an earlier gap becomes churn-long in hindsight; in order that was
  a churn and a winback (growth), while the customer may already be ``mature``: they stay
  mature. Likewise a complaint and a low score both older than the latest order (in order:
  decline, churn, then winback to growth) leave a mature customer mature; a late refund
  that lengthens g enough that a lapse would not have happened leaves the customer in
  decline (refunds move no stage); and a reopened complaint is known by its latest opening
  only, so a decline it causes is dated from then.
* **Purchase days** are the distinct UTC dates of orders that are not fully refunded. A free
  (0.00) order counts as a purchase day (the customer chose to order) and can never be
  "fully refunded"; a partially refunded order still counts. ``g`` is the median gap in
  days between consecutive purchase days, ``default_gap_days`` with fewer than two days.
* **Idle time** is measured from the latest counted purchase, or from registration when no
  purchase counts (every order refunded).
* **Implicit registration.** Events may arrive before the registration (different topics):
  a purchase, refund or complaint event for a customer we have no state for registers them
  at that event's time (change ``(none) -> prospect, registered``) and is then applied.
  A later registration event only moves ``registered_at`` earlier; it changes no stage. So
  does any other late event older than it (not a score): in order, it registered them.
* **Complaints.** A high/critical complaint (per policy) opened or reopened for a growth or
  mature customer declines them (``complaint``), remembering the stage before. While in a
  complaint-caused decline, further such complaints join the causing set; recovery
  (``service_recovery`` back to the stage before) needs *every* causing complaint closed
  with satisfaction >= ``recovery_min_satisfaction``. A closure below it (or without a
  satisfaction) blocks recovery for this decline unless that complaint is reopened and
  closed again satisfied. While in a lapsing decline complaints neither move nor join.
  Low/medium complaints never move the stage. A reopened complaint counts as opened anew.
* **Model churn** (``p_alive < model_churn_p_alive``) moves only ``decline -> churned``.
  A score may arrive before the events that put the customer in decline at its time (the
  value topic ran ahead: before the customer's first lifecycle event, or before an older
  purchase that undoes an inactivity churn), so a low score is remembered in the state
  (``low_scores``) until an order after it makes it stale, and every decision applies the
  remembered scores again at their times (:func:`_settle`); a late purchase does not win back
  a customer whom a remembered score churned in order. A low score for a customer without
  state waits for their first event (the caller keeps it; :func:`with_low_scores`). "Low" is
  judged by the policy in force when the score arrives: scores at or above it are not kept
  (the hot path: nearly every order is scored), so a threshold raised later does not reach
  back to them, while a lowered one stops the remembered scores above it from churning.
* **Winback** always lands in ``growth`` (DOMAIN.md: won-back customers re-enter growth),
  except the late-purchase correction above. Maturity counts purchase days and tenure
  within the current relationship only (:func:`relationship_start`), so a won-back customer
  must re-establish; a late purchase that fills the gap restores the earlier relationship.
* **Refunds** never move the stage (no row of the table is triggered by a refund); they only
  change the purchase facts, and therefore g and the due times of the time rules.
* **Redelivery** of a known order id, an opening of a known complaint id or a reopening of
  an open complaint changes nothing (the service's inbox is the first line; this the second).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.errors import NotRetryable

__all__ = [
    "TRANSITIONS",
    "Complaint",
    "CustomerLifecycle",
    "Decision",
    "ForbiddenTransitionError",
    "IncompleteOrdersError",
    "InvalidLifecycleEventError",
    "LifecyclePolicy",
    "LowScore",
    "Order",
    "OrderFacts",
    "Reason",
    "Severity",
    "SomeOrders",
    "Stage",
    "StageChange",
    "TransitionRule",
    "Trigger",
    "due_times",
    "due_times_for",
    "evaluate",
    "idle_since",
    "is_established",
    "low_score",
    "median_gap_days",
    "on_complaint_closed",
    "on_complaint_opened",
    "on_complaint_reopened",
    "on_purchase",
    "on_refund",
    "on_registered",
    "on_value_scored",
    "order_facts",
    "relationship_start",
    "with_low_scores",
    "with_order_facts",
]


class Stage(StrEnum):
    PROSPECT = "prospect"
    GROWTH = "growth"
    MATURE = "mature"
    DECLINE = "decline"
    CHURNED = "churned"


class Reason(StrEnum):
    REGISTERED = "registered"
    FIRST_PURCHASE = "first_purchase"
    ESTABLISHED = "established"
    LAPSING = "lapsing"
    COMPLAINT = "complaint"
    INACTIVE = "inactive"
    MODEL_CHURN = "model_churn"
    REACTIVATED = "reactivated"
    SERVICE_RECOVERY = "service_recovery"
    WINBACK = "winback"


class Trigger(StrEnum):
    """What kind of input a decision function reacts to."""

    REGISTRATION = "registration"
    PURCHASE = "purchase"
    REFUND = "refund"
    COMPLAINT_OPENED = "complaint_opened"
    COMPLAINT_REOPENED = "complaint_reopened"
    COMPLAINT_CLOSED = "complaint_closed"
    VALUE_SCORED = "value_scored"
    TIME = "time"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ForbiddenTransitionError(RuntimeError):
    """A rule tried a stage change that is not a row of :data:`TRANSITIONS` (a bug)."""


class InvalidLifecycleEventError(NotRetryable, ValueError):
    """An input that no rule can use: naive time, negative amount, out-of-range score."""


@dataclass(frozen=True, slots=True)
class TransitionRule:
    from_stage: Stage | None
    to_stage: Stage
    reason: Reason
    trigger: Trigger


#: DOMAIN.md §1 as data: the only stage changes that can ever happen.
TRANSITIONS: tuple[TransitionRule, ...] = (
    TransitionRule(None, Stage.PROSPECT, Reason.REGISTERED, Trigger.REGISTRATION),
    TransitionRule(Stage.PROSPECT, Stage.GROWTH, Reason.FIRST_PURCHASE, Trigger.PURCHASE),
    TransitionRule(Stage.GROWTH, Stage.MATURE, Reason.ESTABLISHED, Trigger.PURCHASE),
    TransitionRule(Stage.GROWTH, Stage.DECLINE, Reason.LAPSING, Trigger.TIME),
    TransitionRule(Stage.MATURE, Stage.DECLINE, Reason.LAPSING, Trigger.TIME),
    TransitionRule(Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_OPENED),
    TransitionRule(Stage.MATURE, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_OPENED),
    TransitionRule(Stage.GROWTH, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_REOPENED),
    TransitionRule(Stage.MATURE, Stage.DECLINE, Reason.COMPLAINT, Trigger.COMPLAINT_REOPENED),
    TransitionRule(Stage.DECLINE, Stage.CHURNED, Reason.INACTIVE, Trigger.TIME),
    TransitionRule(Stage.DECLINE, Stage.CHURNED, Reason.MODEL_CHURN, Trigger.VALUE_SCORED),
    TransitionRule(Stage.DECLINE, Stage.GROWTH, Reason.REACTIVATED, Trigger.PURCHASE),
    TransitionRule(Stage.DECLINE, Stage.MATURE, Reason.REACTIVATED, Trigger.PURCHASE),
    TransitionRule(Stage.DECLINE, Stage.GROWTH, Reason.SERVICE_RECOVERY, Trigger.COMPLAINT_CLOSED),
    TransitionRule(Stage.DECLINE, Stage.MATURE, Reason.SERVICE_RECOVERY, Trigger.COMPLAINT_CLOSED),
    TransitionRule(Stage.CHURNED, Stage.GROWTH, Reason.WINBACK, Trigger.PURCHASE),
)

_ALLOWED = frozenset(TRANSITIONS)


MAX_POLICY_DAYS = 36_500
MAX_GAP_MULTIPLIER = 1_000
# Idle times are capped here (about 10,000 years), and a due time past the calendar's end is
# the calendar's end: a rule that far out never fires.
_MAX_IDLE_DAYS = 3_660_000
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


def _plus(at: datetime, idle: timedelta) -> datetime:
    try:
        return at + idle
    except OverflowError:
        return _END_OF_TIME


#: The lapse threshold each churn threshold must exceed.
_LAPSE_TWIN = {"churn_min_days": "lapse_min_days", "churn_gap_multiplier": "lapse_gap_multiplier"}


class LifecyclePolicy(BaseModel):
    """Thresholds of the stage rules (DOMAIN.md §1 defaults); immutable and validated."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # Days up to a century and multipliers up to a thousand: beyond, a rule would never fire
    # within the calendar (and a due time could not be written as a date). Numbers are strict:
    # lax mode reads JSON `true` as 1.
    default_gap_days: float = Field(
        60, gt=0, le=MAX_POLICY_DAYS, strict=True, description="g with fewer than two purchase days"
    )
    lapse_min_days: float = Field(60, gt=0, le=MAX_POLICY_DAYS, strict=True)
    lapse_gap_multiplier: float = Field(2, gt=0, le=MAX_GAP_MULTIPLIER, strict=True)
    churn_min_days: float = Field(180, gt=0, le=MAX_POLICY_DAYS, strict=True)
    churn_gap_multiplier: float = Field(4, gt=0, le=MAX_GAP_MULTIPLIER, strict=True)
    mature_min_purchase_days: int = Field(3, ge=1, le=MAX_POLICY_DAYS, strict=True)
    mature_min_tenure_days: int = Field(90, ge=0, le=MAX_POLICY_DAYS, strict=True)
    complaint_severities: frozenset[Severity] = frozenset({Severity.HIGH, Severity.CRITICAL})
    recovery_min_satisfaction: int = Field(4, ge=1, le=5, strict=True)
    model_churn_p_alive: float = Field(0.1, gt=0, lt=1, strict=True)

    @field_validator("churn_min_days", "churn_gap_multiplier")
    @classmethod
    def _churn_comes_after_lapse(cls, churn: float, info: ValidationInfo) -> float:
        # Churn must never be due before the decline it follows, for any g. Checked on the churn
        # field (declared after its lapse twin, so `info.data` holds that) to name it when refused.
        lapse_field = _LAPSE_TWIN[str(info.field_name)]
        lapse = info.data.get(lapse_field)
        if lapse is not None and churn <= lapse:  # None: the lapse field was refused itself
            raise ValueError(f"{info.field_name} ({churn}) must exceed {lapse_field} ({lapse})")
        return churn

    def lapse_after(self, gap_days: float) -> timedelta:
        """Idle time after which a growth/mature customer is lapsing: max(min, mult·g)."""
        days = max(self.lapse_min_days, self.lapse_gap_multiplier * gap_days)
        return timedelta(days=min(days, _MAX_IDLE_DAYS))

    def churn_after(self, gap_days: float) -> timedelta:
        """Idle time after which a declining customer is inactive: max(min, mult·g)."""
        days = max(self.churn_min_days, self.churn_gap_multiplier * gap_days)
        return timedelta(days=min(days, _MAX_IDLE_DAYS))


@dataclass(frozen=True, slots=True)
class Order:
    """One recorded purchase (keyed by order id in the state) and what was refunded of it."""

    placed_at: datetime
    amount: Decimal
    refunded: Decimal = Decimal(0)

    @property
    def day(self) -> date:
        return self.placed_at.astimezone(UTC).date()

    @property
    def counts_as_purchase(self) -> bool:
        # A free order has nothing to refund, so it always counts.
        return not (self.amount > 0 and self.refunded >= self.amount)


class IncompleteOrdersError(LookupError):
    """A rule needed every order of a customer, and the state holds only some of them."""


class SomeOrders(Mapping[str, Order]):
    """Some of a customer's orders (those a batch of events names); the rest are stored.

    A state holding it carries the facts derived from all the orders (:func:`with_order_facts`),
    so a purchase in business-time order costs the same at the hundredth order as at the
    first. Looking an order up is exact for the ids it was made with; whatever needs them all
    (iterating, counting: a late purchase, a refund, a new policy) raises
    :class:`IncompleteOrdersError`, and the caller decides again with every order.
    """

    __slots__ = ("_orders",)

    def __init__(self, orders: Mapping[str, Order] | None = None) -> None:
        self._orders: dict[str, Order] = dict(orders or {})

    def __getitem__(self, order_id: str) -> Order:
        return self._orders[order_id]

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def __iter__(self) -> Any:
        raise IncompleteOrdersError("the state holds only some of the customer's orders")

    def __len__(self) -> int:
        raise IncompleteOrdersError("the state holds only some of the customer's orders")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SomeOrders) and self._orders == other._orders

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SomeOrders({self._orders!r})"

    def held(self) -> Mapping[str, Order]:
        """The orders it holds (not all the customer's)."""
        return self._orders

    def with_order(self, order_id: str, order: Order) -> SomeOrders:
        return SomeOrders({**self._orders, order_id: order})


def _with_order(orders: Mapping[str, Order], order_id: str, order: Order) -> Mapping[str, Order]:
    if isinstance(orders, SomeOrders):
        return orders.with_order(order_id, order)
    return {**orders, order_id: order}


@dataclass(frozen=True, slots=True)
class Complaint:
    """What the lifecycle needs to know of a complaint."""

    severity: Severity | None  # None when only a closure was seen
    opened_at: datetime  # the latest (re)opening
    is_open: bool
    satisfaction: int | None = None  # of the latest closure


@dataclass(frozen=True, slots=True)
class LowScore:
    """A P(alive) below the model-churn threshold, remembered while it can still churn the
    customer in business order: until an order after it makes it stale."""

    at: datetime
    p_alive: float


@dataclass(frozen=True)
class CustomerLifecycle:
    """One customer's lifecycle state: the stage plus the facts the rules need.

    Immutable: decision functions return a new state (so derived facts are cached per
    instance). ``orders`` and ``complaints`` are keyed by their ids, so redelivered or
    replayed facts are idempotent.
    """

    stage: Stage
    since: datetime
    reason: Reason
    registered_at: datetime
    stage_before_decline: Stage | None = None
    orders: Mapping[str, Order] = field(default_factory=dict)
    # Refunds seen before their order (e.g. replay of a truncated log), applied on arrival.
    pending_refunds: Mapping[str, Decimal] = field(default_factory=dict)
    complaints: Mapping[str, Complaint] = field(default_factory=dict)
    decline_causes: frozenset[str] = frozenset()
    # Low scores not older than the latest order, by time: events arriving after them may
    # re-decide the history so that, in business order, one of them churned the customer.
    low_scores: tuple[LowScore, ...] = ()

    @cached_property
    def purchase_days(self) -> tuple[date, ...]:
        """Distinct UTC dates with at least one order that is not fully refunded, sorted."""
        return tuple(sorted({o.day for o in self.orders.values() if o.counts_as_purchase}))

    @cached_property
    def first_purchase_at(self) -> datetime | None:
        times = [o.placed_at for o in self.orders.values() if o.counts_as_purchase]
        return min(times, default=None)

    @cached_property
    def last_purchase_at(self) -> datetime | None:
        times = [o.placed_at for o in self.orders.values() if o.counts_as_purchase]
        return max(times, default=None)

    @cached_property
    def latest_order_at(self) -> datetime | None:
        """Latest order of any kind: a later refund does not undo what the order did then."""
        return max((o.placed_at for o in self.orders.values()), default=None)

    @cached_property
    def median_gap(self) -> float | None:
        """Median gap in days between consecutive purchase days; None with fewer than two."""
        days = self.purchase_days
        if len(days) < 2:
            return None
        return _median_of_sorted(
            sorted((later - earlier).days for earlier, later in itertools.pairwise(days))
        )

    @property
    def open_complaints(self) -> frozenset[str]:
        return frozenset(cid for cid, c in self.complaints.items() if c.is_open)


_FIELDS = tuple(f.name for f in fields(CustomerLifecycle))

#: Cached facts derived from ``orders`` alone (``_relationship`` also from the policy).
_ORDER_FACTS = (
    "purchase_days",
    "first_purchase_at",
    "last_purchase_at",
    "latest_order_at",
    "median_gap",
    "_relationship",
)


def _evolve(state: CustomerLifecycle, **changes: Any) -> CustomerLifecycle:
    """``replace`` for changes that leave ``orders`` alone: the new state keeps the facts
    already derived from them (each decision makes several copies; recomputing is O(orders)).

    A copy of the instance dictionary: its fields and the cached facts (all in _ORDER_FACTS).
    """
    evolved = object.__new__(CustomerLifecycle)
    evolved.__dict__.update(state.__dict__, **changes)
    return evolved


def _with_fields(state: CustomerLifecycle, **changes: Any) -> CustomerLifecycle:
    """``replace``, without the derived facts: only the fields copied, then ``changes``."""
    known = state.__dict__
    copy = object.__new__(CustomerLifecycle)
    copy.__dict__.update({name: known[name] for name in _FIELDS}, **changes)
    return copy


def _with_new_order(state: CustomerLifecycle, order_id: str, order: Order) -> CustomerLifecycle:
    """The state with an order it did not have, its derived facts updated rather than redone.

    Equal to deriving them anew: the order comes last in ``orders``, and ``min``/``max`` keep
    the first of equal values, as they do over all the orders.
    """
    pending = state.pending_refunds
    added = _with_fields(
        state,
        orders=_with_order(state.orders, order_id, order),
        pending_refunds={k: v for k, v in pending.items() if k != order_id} if pending else {},
    )
    known, derived = state.__dict__, added.__dict__
    at = order.placed_at
    if "latest_order_at" in known:
        latest = known["latest_order_at"]
        derived["latest_order_at"] = at if latest is None else max(latest, at)
    if not order.counts_as_purchase:
        for name in (
            "purchase_days",
            "first_purchase_at",
            "last_purchase_at",
            "median_gap",
            "_relationship",
        ):
            if name in known:
                derived[name] = known[name]
        return added
    if "purchase_days" in known:
        days = known["purchase_days"]
        day = order.day
        derived["purchase_days"] = days if day in days else tuple(sorted((*days, day)))
        if day in days and "median_gap" in known:
            derived["median_gap"] = known["median_gap"]
    if "first_purchase_at" in known:
        first = known["first_purchase_at"]
        derived["first_purchase_at"] = at if first is None else min(first, at)
    if "last_purchase_at" in known:
        last = known["last_purchase_at"]
        derived["last_purchase_at"] = at if last is None else max(last, at)
        relationship = known.get("_relationship")
        if relationship is not None and last is None:
            derived["_relationship"] = (relationship[0], at)  # the first purchase that counts
        elif relationship is not None and at >= last and "median_gap" in known:
            # The walk of relationship_start with one more step: this purchase starts a new
            # relationship iff its gap exceeds the churn threshold with the g known before it.
            policy, start = relationship
            gap = known["median_gap"]
            threshold = policy.churn_after(policy.default_gap_days if gap is None else gap)
            derived["_relationship"] = (policy, at if at - last > threshold else start)
    return added


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What the rules read of all of a customer's orders, stored beside the state."""

    purchase_days: tuple[date, ...]
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    latest_order_at: datetime | None
    median_gap: float | None
    relationship_start: datetime | None  # under the policy it is given with


def order_facts(state: CustomerLifecycle, policy: LifecyclePolicy) -> OrderFacts:
    """The facts to store beside a state (relationship start under ``policy``)."""
    return OrderFacts(
        purchase_days=state.purchase_days,
        first_purchase_at=state.first_purchase_at,
        last_purchase_at=state.last_purchase_at,
        latest_order_at=state.latest_order_at,
        median_gap=state.median_gap,
        relationship_start=relationship_start(state, policy),
    )


def with_order_facts(
    state: CustomerLifecycle, facts: OrderFacts, policy: LifecyclePolicy | None
) -> CustomerLifecycle:
    """The state with the facts of all its orders given instead of derived, for a state that
    holds only some of them (:class:`SomeOrders`). ``facts.relationship_start`` is used only
    with the ``policy`` it was computed under (None: unknown, so derived when needed)."""
    seeded = _evolve(
        state,
        purchase_days=facts.purchase_days,
        first_purchase_at=facts.first_purchase_at,
        last_purchase_at=facts.last_purchase_at,
        latest_order_at=facts.latest_order_at,
        median_gap=facts.median_gap,
    )
    if policy is not None:
        seeded.__dict__["_relationship"] = (policy, facts.relationship_start)
    return seeded


def _median_of_sorted(values: list[int]) -> float:
    """``statistics.median`` of an already sorted list, without sorting it again."""
    middle = len(values) // 2
    if len(values) % 2:
        return float(values[middle])
    return float((values[middle - 1] + values[middle]) / 2)


@dataclass(frozen=True, slots=True)
class StageChange:
    """One stage change that happened; the service adds the causing event id or run."""

    from_stage: Stage | None
    to_stage: Stage
    reason: Reason
    trigger: Trigger
    at: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    state: CustomerLifecycle
    changes: tuple[StageChange, ...] = ()


# --- derived facts ---------------------------------------------------------------------


def median_gap_days(state: CustomerLifecycle, policy: LifecyclePolicy) -> float:
    """g: median of the gaps (days) between consecutive purchase days; default under two."""
    gap = state.median_gap
    return float(policy.default_gap_days) if gap is None else gap


def relationship_start(state: CustomerLifecycle, policy: LifecyclePolicy) -> datetime | None:
    """Start of the current relationship: the first purchase after the latest churn-long gap.

    Walks the purchases in business time: a gap longer than the churn threshold with the g
    known at that point is exactly where in-order processing churned the customer (the sweep
    before that purchase fires), so the purchase after it was a winback. Cached on the state
    for the policy it was computed with.
    """
    cached = state.__dict__.get("_relationship")
    if cached is not None and cached[0] is policy:
        start: datetime | None = cached[1]
        return start
    start = _relationship_start(state, policy)
    state.__dict__["_relationship"] = (policy, start)
    return start


def _relationship_start(state: CustomerLifecycle, policy: LifecyclePolicy) -> datetime | None:
    times = sorted(o.placed_at for o in state.orders.values() if o.counts_as_purchase)
    if not times:
        return None
    start, gaps, last_day = times[0], list[int](), times[0].astimezone(UTC).date()
    for previous, current in itertools.pairwise(times):
        gap = _median_of_sorted(gaps) if gaps else float(policy.default_gap_days)
        if current - previous > policy.churn_after(gap):
            start = current
        current_day = current.astimezone(UTC).date()
        if current_day != last_day:
            bisect.insort(gaps, (current_day - last_day).days)
            last_day = current_day
    return start


def is_established(state: CustomerLifecycle, policy: LifecyclePolicy) -> bool:
    """Maturity criteria: enough distinct purchase days spanning enough tenure, counted in the
    current relationship (a won-back customer re-establishes before maturing again).
    """
    start = relationship_start(state, policy)
    if start is None:
        return False
    days = state.purchase_days  # sorted: those of the relationship are a suffix
    first = bisect.bisect_left(days, start.astimezone(UTC).date())
    return (
        len(days) - first >= policy.mature_min_purchase_days
        and (days[-1] - days[first]).days >= policy.mature_min_tenure_days
    )


def _lapse_threshold_at(state: CustomerLifecycle, policy: LifecyclePolicy) -> datetime:
    return _plus(idle_since(state), policy.lapse_after(median_gap_days(state, policy)))


def _churn_threshold_at(state: CustomerLifecycle, policy: LifecyclePolicy) -> datetime:
    return _plus(idle_since(state), policy.churn_after(median_gap_days(state, policy)))


def idle_since(state: CustomerLifecycle) -> datetime:
    """Where idle time is counted from: the latest counted purchase, else registration."""
    return state.last_purchase_at or state.registered_at


def due_times(
    state: CustomerLifecycle, policy: LifecyclePolicy
) -> tuple[datetime | None, datetime | None]:
    """(decline_due_at, churn_due_at): when the time rules will move this customer.

    A rule fires at ``as_of`` iff its due time is strictly before ``as_of``, and the change
    is dated at the due time. For growth/mature the churn time assumes the lapse happens
    first, so it already equals the decline state's churn time: a set-based SQL sweep can
    apply both columns as stored. ``None`` where no time rule applies to the stage.
    """
    return due_times_for(
        stage=state.stage,
        since=state.since,
        idle_from=idle_since(state),
        gap_days=median_gap_days(state, policy),
        policy=policy,
    )


def due_times_for(
    *,
    stage: Stage,
    since: datetime,
    idle_from: datetime,
    gap_days: float,
    policy: LifecyclePolicy,
) -> tuple[datetime | None, datetime | None]:
    """:func:`due_times` from the few facts it needs (recomputing stored columns in bulk)."""
    if stage in (Stage.GROWTH, Stage.MATURE):
        decline_due = max(since, _plus(idle_from, policy.lapse_after(gap_days)))
        return decline_due, max(decline_due, _plus(idle_from, policy.churn_after(gap_days)))
    if stage is Stage.DECLINE:
        return None, max(since, _plus(idle_from, policy.churn_after(gap_days)))
    return None, None


# --- the one way to change stage ---------------------------------------------------------


def _move(
    state: CustomerLifecycle,
    to_stage: Stage,
    reason: Reason,
    trigger: Trigger,
    at: datetime,
) -> tuple[CustomerLifecycle, StageChange]:
    """Apply one row of the table; anything else is a bug and raises."""
    rule = TransitionRule(state.stage, to_stage, reason, trigger)
    if rule not in _ALLOWED:
        raise ForbiddenTransitionError(f"no transition {rule} in the lifecycle table")
    if at < state.since:
        raise ForbiddenTransitionError(f"change at {at} before the stage began at {state.since}")
    entering_decline = to_stage is Stage.DECLINE
    moved = _evolve(
        state,
        stage=to_stage,
        since=at,
        reason=reason,
        stage_before_decline=state.stage if entering_decline else None,
        decline_causes=frozenset(),
    )
    return moved, StageChange(state.stage, to_stage, reason, trigger, at)


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidLifecycleEventError(f"business time must be timezone-aware, got {at!r}")


# --- registration and the preamble of every event ---------------------------------------


def on_registered(state: CustomerLifecycle | None, *, at: datetime) -> Decision:
    """(none) -> prospect. For a known customer only moves ``registered_at`` earlier."""
    _require_aware(at)
    if state is not None:
        return Decision(_evolve(state, registered_at=min(state.registered_at, at)))
    prospect = CustomerLifecycle(
        stage=Stage.PROSPECT, since=at, reason=Reason.REGISTERED, registered_at=at
    )
    change = StageChange(None, Stage.PROSPECT, Reason.REGISTERED, Trigger.REGISTRATION, at)
    if (
        TransitionRule(None, Stage.PROSPECT, Reason.REGISTERED, Trigger.REGISTRATION)
        not in _ALLOWED
    ):
        raise ForbiddenTransitionError("registration is missing from the lifecycle table")
    return Decision(prospect, (change,))


def _enter(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    at: datetime,
    *,
    registers: bool = True,
) -> tuple[CustomerLifecycle, list[StageChange]]:
    """Register an unknown customer, or apply the time rules up to the event first.

    Running the time rules up to the event's business time makes each decision equal to
    in-order processing whatever the sweep cadence: a purchase 130 days after the previous
    one is a lapse (day 120) and then a reactivation, swept in between or not.

    An event that ``registers`` (all but a score) older than the registration known moves it
    earlier: in business order that event registered the customer (implicit registration).
    """
    if state is None:
        registration = on_registered(None, at=at)
        return registration.state, list(registration.changes)
    if registers and at < state.registered_at:
        state = _evolve(state, registered_at=at)
    timed = evaluate(state, policy, as_of=at)
    return timed.state, list(timed.changes)


# --- purchases and refunds --------------------------------------------------------------


def on_purchase(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    *,
    order_id: str,
    amount: Decimal,
    at: datetime,
) -> Decision:
    """Record an order and apply the purchase rules.

    prospect -> growth; growth -> mature when established; decline -> growth or mature
    (reactivated); churned -> growth (winback). Redelivery of a known order id changes
    nothing; an order already fully refunded (refund seen first) records but moves nothing.
    """
    _require_aware(at)
    if amount < 0:
        raise InvalidLifecycleEventError(f"order amount must not be negative, got {amount}")
    if state is not None and order_id in state.orders:
        return Decision(state)
    current, changes = _enter(state, policy, at)
    order = Order(at, amount, current.pending_refunds.get(order_id, Decimal(0)))
    current = _with_new_order(current, order_id, order)
    if order.counts_as_purchase:
        current, moved = _apply_purchase(current, policy, at)
        changes += moved
    current, changes = _settle(current, policy, changes)
    return Decision(current, tuple(changes))


def _apply_purchase(
    state: CustomerLifecycle, policy: LifecyclePolicy, at: datetime
) -> tuple[CustomerLifecycle, list[StageChange]]:
    when = max(at, state.since)
    established = is_established(state, policy)
    target = Stage.MATURE if established else Stage.GROWTH
    changes: list[StageChange] = []

    def move(to_stage: Stage, reason: Reason, trigger: Trigger = Trigger.PURCHASE) -> None:
        nonlocal state
        state, change = _move(state, to_stage, reason, trigger, max(when, state.since))
        changes.append(change)

    if state.stage is Stage.PROSPECT:
        move(Stage.GROWTH, Reason.FIRST_PURCHASE)
    elif state.stage is Stage.GROWTH and established:
        move(Stage.MATURE, Reason.ESTABLISHED)
    elif state.stage is Stage.DECLINE and state.reason is Reason.COMPLAINT:
        held = _complaints_in_force(state, policy)
        if not held:
            move(target, Reason.REACTIVATED)
        else:
            # The purchase is older than complaints still in force: the decline stands.
            before = state.stage_before_decline
            upgraded = Stage.MATURE if before is Stage.GROWTH and established else before
            return _evolve(state, decline_causes=held, stage_before_decline=upgraded), []
    elif state.stage is Stage.DECLINE and _lapse_threshold_at(state, policy) > state.since:
        # Lapsing: with this purchase known, the lapse had not happened by its date.
        move(target, Reason.REACTIVATED)
    elif state.stage is Stage.CHURNED and _purchase_ends_churn(state, policy, at):
        # Older than the churn, or at its instant when a time rule made it (it fires only after).
        late_correction = not _in_force_at(state, at)
        move(Stage.GROWTH, Reason.WINBACK)
        if late_correction and established:
            # In order the churn would not have happened: restore what reactivation gives.
            move(Stage.MATURE, Reason.ESTABLISHED)

    if state.stage in (Stage.GROWTH, Stage.MATURE):
        held = _complaints_in_force(state, policy)
        if held:
            # Complaints seen before this older purchase: in order they declined the customer.
            first_opened = min(state.complaints[cid].opened_at for cid in held)
            state, change = _move(
                state,
                Stage.DECLINE,
                Reason.COMPLAINT,
                Trigger.COMPLAINT_OPENED,
                max(state.since, first_opened),
            )
            state = _evolve(state, decline_causes=held)
            changes.append(change)
    return state, changes


def _purchase_ends_churn(state: CustomerLifecycle, policy: LifecyclePolicy, at: datetime) -> bool:
    if at < state.since and _churned_by_a_low_score(state, policy):
        return False  # in order a remembered score found them declining by then: churned
    if state.reason is Reason.INACTIVE:
        # With this purchase known, would inactivity still have churned them by then?
        return _churn_threshold_at(state, policy) > state.since
    if at >= state.since:
        return True  # a purchase after the model churn: a winback
    # Older than the score (a model churn is dated at its score): in order the score found
    # the customer after this purchase, and churned them only if they were declining still.
    return not _declining_at(state, policy, state.since)


def _churned_by_a_low_score(state: CustomerLifecycle, policy: LifecyclePolicy) -> bool:
    """Whether, with the orders known, a remembered low score not older than the latest order
    found the customer declining by the time of their current stage: in order, a model churn."""
    latest_order = state.latest_order_at
    return any(
        score.p_alive < policy.model_churn_p_alive
        and (latest_order is None or score.at >= latest_order)
        and score.at <= state.since
        and _declining_at(state, policy, score.at)
        for score in state.low_scores
    )


def _declining_at(state: CustomerLifecycle, policy: LifecyclePolicy, at: datetime) -> bool:
    """Whether, with the orders known, the customer was in decline at ``at``: lapsed before
    it, or declined by a complaint opened since the latest order and not resolved."""
    if _lapse_threshold_at(state, policy) < at:
        return True
    return any(state.complaints[cid].opened_at <= at for cid in _complaints_in_force(state, policy))


def _complaints_in_force(state: CustomerLifecycle, policy: LifecyclePolicy) -> frozenset[str]:
    """Complaints that, in order, keep a customer in a complaint decline after the latest order.

    Those of policy severity opened at or after the latest order and not yet resolved
    (open, or closed below the recovery satisfaction), provided the first of them came
    before the customer lapsed.
    """
    latest_order = state.latest_order_at
    unresolved = {
        cid: complaint
        for cid, complaint in state.complaints.items()
        if complaint.severity in policy.complaint_severities
        and (latest_order is None or complaint.opened_at >= latest_order)
        and not _satisfied(complaint, policy)
    }
    if not unresolved:
        return frozenset()
    first_opened = min(c.opened_at for c in unresolved.values())
    if first_opened > _lapse_threshold_at(state, policy):
        return frozenset()  # in order the customer had lapsed: complaints did not move them
    return frozenset(unresolved)


def _satisfied(complaint: Complaint, policy: LifecyclePolicy) -> bool:
    return (
        not complaint.is_open
        and complaint.satisfaction is not None
        and complaint.satisfaction >= policy.recovery_min_satisfaction
    )


def on_refund(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    *,
    order_id: str,
    refunded_total: Decimal,
    at: datetime,
) -> Decision:
    """Record what has been refunded of an order so far (all its refunds, this one included).

    Keeping the largest total seen makes refunds idempotent and order-independent. A refund
    never moves the stage (no refund row in the table); only the time rules run up to its
    time, as before every event. A fully refunded order stops counting as a purchase day,
    which changes g, first/last purchase and so the due times. A refund for an order not
    seen yet waits for it.
    """
    _require_aware(at)
    if refunded_total < 0:
        raise InvalidLifecycleEventError(
            f"refunded total must not be negative, got {refunded_total}"
        )
    current, changes = _enter(state, policy, at)
    if isinstance(current.orders, SomeOrders):
        # Whether the order counts, and so every fact derived from the orders, may change.
        raise IncompleteOrdersError("a refund is decided with every order of the customer")
    order = current.orders.get(order_id)
    if order is None:
        if refunded_total > 0:  # a refund of nothing (the contract's Money allows 0) waits for none
            pending = max(current.pending_refunds.get(order_id, Decimal(0)), refunded_total)
            current = _evolve(
                current, pending_refunds={**current.pending_refunds, order_id: pending}
            )
    else:
        refunded = replace(order, refunded=max(order.refunded, refunded_total))
        current = replace(current, orders={**current.orders, order_id: refunded})
    current, changes = _settle(current, policy, changes)
    return Decision(current, tuple(changes))


# --- complaints -----------------------------------------------------------------------------


def on_complaint_opened(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    *,
    complaint_id: str,
    severity: Severity,
    at: datetime,
) -> Decision:
    """A high/critical complaint declines a growth/mature customer, or joins a complaint decline.

    Redelivery of a known complaint id changes nothing.
    """
    _require_aware(at)
    if state is not None and complaint_id in state.complaints:
        return Decision(state)
    current, changes = _enter(state, policy, at)
    complaint = Complaint(severity=severity, opened_at=at, is_open=True)
    current = _evolve(current, complaints={**current.complaints, complaint_id: complaint})
    current, moved = _apply_complaint(current, policy, complaint_id, at, Trigger.COMPLAINT_OPENED)
    current, changes = _settle(current, policy, changes + moved)
    return Decision(current, tuple(changes))


def on_complaint_reopened(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    *,
    complaint_id: str,
    at: datetime,
    severity: Severity | None = None,
) -> Decision:
    """A reopened complaint is open again: it acts as if opened now (its old closure no
    longer counts). ``severity`` defaults to the one known from its opening.
    """
    _require_aware(at)
    known = state.complaints.get(complaint_id) if state is not None else None
    if state is not None and known is not None and known.is_open:
        return Decision(state)  # reopening an open complaint is a redelivery
    current, changes = _enter(state, policy, at)
    complaint = Complaint(
        severity=severity or (known.severity if known else None), opened_at=at, is_open=True
    )
    current = _evolve(current, complaints={**current.complaints, complaint_id: complaint})
    current, moved = _apply_complaint(current, policy, complaint_id, at, Trigger.COMPLAINT_REOPENED)
    current, changes = _settle(current, policy, changes + moved)
    return Decision(current, tuple(changes))


def _apply_complaint(
    state: CustomerLifecycle,
    policy: LifecyclePolicy,
    complaint_id: str,
    at: datetime,
    trigger: Trigger,
) -> tuple[CustomerLifecycle, list[StageChange]]:
    severity = state.complaints[complaint_id].severity
    if severity is None or severity not in policy.complaint_severities:
        return state, []
    latest_order = state.latest_order_at
    if latest_order is not None and latest_order > at:
        return state, []  # in order, that later purchase would already have ended this decline
    if state.stage in (Stage.GROWTH, Stage.MATURE):
        moved, change = _move(state, Stage.DECLINE, Reason.COMPLAINT, trigger, max(at, state.since))
        return _evolve(moved, decline_causes=frozenset({complaint_id})), [change]
    if state.stage is Stage.DECLINE and state.reason is Reason.COMPLAINT:
        return _evolve(state, decline_causes=state.decline_causes | {complaint_id}), []
    return state, []


def on_complaint_closed(
    state: CustomerLifecycle | None,
    policy: LifecyclePolicy,
    *,
    complaint_id: str,
    satisfaction: int | None,
    at: datetime,
) -> Decision:
    """Service recovery: decline -> stage before, once every causing complaint is closed
    with satisfaction >= policy (a closure without satisfaction is not satisfied).
    """
    _require_aware(at)
    if satisfaction is not None and not 1 <= satisfaction <= 5:
        raise InvalidLifecycleEventError(f"satisfaction must be 1-5, got {satisfaction}")
    current, changes = _enter(state, policy, at)
    known = current.complaints.get(complaint_id)
    closed = (
        replace(known, is_open=False, satisfaction=satisfaction)
        if known is not None
        else Complaint(severity=None, opened_at=at, is_open=False, satisfaction=satisfaction)
    )
    current = _evolve(current, complaints={**current.complaints, complaint_id: closed})
    if not _recovered(current, policy, complaint_id):
        current, changes = _settle(current, policy, changes)
        return Decision(current, tuple(changes))
    before = current.stage_before_decline
    if before not in (Stage.GROWTH, Stage.MATURE):
        raise ForbiddenTransitionError(f"complaint decline without a stage before: {before}")
    moved, change = _move(
        current,
        before,
        Reason.SERVICE_RECOVERY,
        Trigger.COMPLAINT_CLOSED,
        max(at, current.since),
    )
    moved, changes = _settle(moved, policy, [*changes, change])
    return Decision(moved, tuple(changes))


def _recovered(state: CustomerLifecycle, policy: LifecyclePolicy, complaint_id: str) -> bool:
    if not (
        state.stage is Stage.DECLINE
        and state.reason is Reason.COMPLAINT
        and complaint_id in state.decline_causes
    ):
        return False
    return all(_satisfied(state.complaints[cid], policy) for cid in state.decline_causes)


# --- value model ------------------------------------------------------------------------


def on_value_scored(
    state: CustomerLifecycle,
    policy: LifecyclePolicy,
    *,
    p_alive: float,
    at: datetime,
) -> Decision:
    """Model churn: decline -> churned when P(alive) < policy threshold.

    A score older than the latest order is stale (it did not see that order) and is
    ignored. One older than the current decline found, in order, the stage before, where
    model churn moves nothing, unless the facts known now say the customer was declining
    then (a late purchase moved the lapse earlier): then the churn is dated at the decline's
    start, never before it.

    A low score (below the threshold) is remembered until an order after it makes it stale
    (:func:`low_score`): whenever a later-arriving event re-decides the history, every
    decision applies the remembered scores again in business order (:func:`_settle`), so one
    that moved nothing when it arrived (the customer not yet declining, or already churned
    by inactivity) churns the customer if in order it would have. Other scores are not kept.
    Scores for customers without state: the caller keeps the low ones for the customer's
    first event (:func:`with_low_scores`).
    """
    _require_aware(at)
    if not 0.0 <= p_alive <= 1.0:
        raise InvalidLifecycleEventError(f"p_alive must be within [0, 1], got {p_alive}")
    latest_order = state.latest_order_at
    if latest_order is not None and latest_order > at:
        return Decision(state)
    current, changes = _enter(state, policy, at, registers=False)
    score = low_score(policy, p_alive=p_alive, at=at)
    if score is None:
        return Decision(current, tuple(changes))  # at or above the threshold: moves nothing
    current = _evolve(current, low_scores=_with_low_score(current.low_scores, score))
    current, changes = _settle(current, policy, changes)
    return Decision(current, tuple(changes))


def low_score(policy: LifecyclePolicy, *, p_alive: float | None, at: datetime) -> LowScore | None:
    """The score to remember if P(alive) is below the threshold of ``policy`` (the policy in
    force when it arrives: a later, higher threshold does not bring back scores not kept)."""
    if p_alive is None or p_alive >= policy.model_churn_p_alive:
        return None
    return LowScore(at, p_alive)


def with_low_scores(
    state: CustomerLifecycle, policy: LifecyclePolicy, scores: Iterable[LowScore]
) -> Decision:
    """The state of a customer's first event with the low scores that arrived before it (when
    the customer had no state), remembered and applied in business order as if arrived now."""
    remembered = state.low_scores
    for score in scores:
        remembered = _with_low_score(remembered, score)
    if remembered == state.low_scores:
        return Decision(state)
    current, changes = _settle(_evolve(state, low_scores=remembered), policy, [])
    return Decision(current, tuple(changes))


# A churned customer is scored again by every recompute: the remembered scores are the latest
# this many. A late purchase forgets those before it, so the latest are the ones that can still
# find the customer declining; dropping the earliest can only date a churn later, never lose it
# while one kept after the decline's start remains.
LOW_SCORES_KEPT = 16


def _with_low_score(scores: tuple[LowScore, ...], score: LowScore) -> tuple[LowScore, ...]:
    """``scores`` with one more, by time, the latest ``LOW_SCORES_KEPT``; of two at the same
    instant the lower is kept."""
    same = next((s for s in scores if s.at == score.at), None)
    if same is not None and same.p_alive <= score.p_alive:
        return scores
    others = (s for s in scores if s.at != score.at)
    return tuple(sorted((*others, score), key=lambda s: s.at))[-LOW_SCORES_KEPT:]


def _apply_score(
    state: CustomerLifecycle, policy: LifecyclePolicy, p_alive: float, at: datetime
) -> tuple[CustomerLifecycle, list[StageChange]]:
    """One score at its business time: the time rules up to it, then model churn."""
    latest_order = state.latest_order_at
    if latest_order is not None and latest_order > at:
        return state, []
    current, changes = _enter(state, policy, at, registers=False)
    if current.stage is not Stage.DECLINE or p_alive >= policy.model_churn_p_alive:
        return current, changes
    if _in_force_at(current, at):
        when = at
    elif at < current.since and _declining_at(current, policy, at):
        when = current.since  # in order churned at `at`; no change before the current stage
    else:
        return current, changes
    current, change = _move(current, Stage.CHURNED, Reason.MODEL_CHURN, Trigger.VALUE_SCORED, when)
    changes.append(change)
    return current, changes


def _settle(
    state: CustomerLifecycle, policy: LifecyclePolicy, changes: list[StageChange]
) -> tuple[CustomerLifecycle, list[StageChange]]:
    """The end of every decision: remembered low scores that an order made stale are
    forgotten, the others applied again at their times, in order. A no-op (the same state)
    unless the decision re-decided the history before one of them, or has none."""
    if not state.low_scores:
        return state, changes
    latest_order = state.latest_order_at
    kept = tuple(s for s in state.low_scores if latest_order is None or s.at >= latest_order)
    if len(kept) < len(state.low_scores):
        state = _evolve(state, low_scores=kept)
    for score in kept:
        state, moved = _apply_score(state, policy, score.p_alive, score.at)
        changes = [*changes, *moved]
    return state, changes


def _in_force_at(state: CustomerLifecycle, at: datetime) -> bool:
    """Whether an event at ``at`` finds the current stage (in order, not seen late).

    A stage an event entered is in force from that instant on; one a time rule entered (a lapse,
    an inactivity churn) only after it: a rule fires for times strictly after its due time, see
    :func:`evaluate`.
    """
    return state.since < at or (state.since == at and state.reason not in _TIME_RULE_REASONS)


_TIME_RULE_REASONS = frozenset({Reason.LAPSING, Reason.INACTIVE})


# --- time rules -------------------------------------------------------------------------


def evaluate(state: CustomerLifecycle, policy: LifecyclePolicy, *, as_of: datetime) -> Decision:
    """Apply the lapsing and inactivity rules up to ``as_of``, to a fixed point.

    Each change is dated at its own due time (:func:`due_times`), never later than
    ``as_of``: a growth customer idle long enough goes growth -> decline -> churned in one
    call, with two changes. Fires only when the due time is strictly before ``as_of``.
    """
    _require_aware(as_of)
    changes: list[StageChange] = []
    current = state
    for _ in range(len(Stage)):  # each step moves strictly towards churned
        decline_due, churn_due = due_times(current, policy)
        if decline_due is not None and decline_due < as_of:
            current, change = _move(
                current, Stage.DECLINE, Reason.LAPSING, Trigger.TIME, decline_due
            )
        elif current.stage is Stage.DECLINE and churn_due is not None and churn_due < as_of:
            current, change = _move(
                current, Stage.CHURNED, Reason.INACTIVE, Trigger.TIME, churn_due
            )
        else:
            break
        changes.append(change)
    return Decision(current, tuple(changes))
