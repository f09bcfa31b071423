"""In memory: contract events map to the right decisions, and a state survives its row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.lifecycle import domain as d
from services.lifecycle import service
from services.lifecycle.domain import LifecyclePolicy, Reason, Stage
from services.lifecycle.handlers import HANDLERS
from shared.events import new_event
from shared.events import payloads as p
from shared.events import registry as ev

T0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
POLICY = LifecyclePolicy()
CUSTOMER = uuid.uuid4()


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def event(type_: str, data: Any, at: datetime) -> Any:
    return new_event(type=type_, source="/crm/test", subject=CUSTOMER, time=at, data=data)


def purchase(at: datetime, order_id: str, amount: str = "20.00") -> Any:
    return event(
        ev.PURCHASE_RECORDED,
        p.PurchaseRecorded(
            customer_id=CUSTOMER,
            purchase_id=uuid.uuid4(),
            order_id=order_id,
            amount=Decimal(amount),
            currency="EUR",
        ),
        at,
    )


def test_every_handled_type_but_erasure_has_a_decision() -> None:
    assert set(HANDLERS) - {ev.CUSTOMER_ERASED} == set(service.DECIDERS)
    assert ev.CUSTOMER_ERASED in HANDLERS


def test_events_drive_the_domain() -> None:
    complaint = uuid.uuid4()
    stream = [
        event(
            ev.CUSTOMER_REGISTERED,
            p.CustomerRegistered(customer_id=CUSTOMER, kind=p.CustomerKind.person),
            day(0),
        ),
        purchase(day(1), "a"),
        purchase(day(2), "b", "30.00"),
        event(
            ev.PURCHASE_REFUNDED,
            p.PurchaseRefunded(
                customer_id=CUSTOMER,
                purchase_id=uuid.uuid4(),
                order_id="b",
                refund_id=uuid.uuid4(),
                amount=Decimal("30.00"),
                refunded_total=Decimal("30.00"),
                order_amount=Decimal("30.00"),
                currency="EUR",
            ),
            day(3),
        ),
        event(
            ev.COMPLAINT_OPENED,
            p.ComplaintOpened(
                complaint_id=complaint,
                customer_id=CUSTOMER,
                severity=p.Severity.critical,
                channel=p.ComplaintChannel.web,
                category=p.ComplaintCategory.product,
                first_response_due=day(4),
                resolution_due=day(6),
            ),
            day(4),
        ),
        event(
            ev.VALUE_SCORED,
            p.ValueScored(
                customer_id=CUSTOMER,
                score=1.0,
                dimensions=p.ValueDimensions(current=0, future=0, credit=0, loyalty=0, growth=0),
                tier=None,
                loyalty=p.LoyaltyScore(
                    index=0, behavioural=0, attitudinal=0, dick_basu="none", jones_sasser="defector"
                ),
                p_alive=0.01,
            ),
            day(5),
        ),
    ]
    state = None
    reasons = []
    for e in stream:
        decision = service.DECIDERS[e.type](state, POLICY, e)
        assert decision is not None
        state, reasons = decision.state, reasons + [c.reason for c in decision.changes]
    assert state is not None
    assert reasons == [
        Reason.REGISTERED,
        Reason.FIRST_PURCHASE,
        Reason.COMPLAINT,
        Reason.MODEL_CHURN,
    ]
    assert state.purchase_days == (day(1).date(),)  # order b fully refunded


def test_a_score_without_p_alive_or_without_a_customer_decides_nothing() -> None:
    score = event(
        ev.VALUE_SCORED,
        p.ValueScored(
            customer_id=CUSTOMER,
            score=1.0,
            dimensions=p.ValueDimensions(current=0, future=0, credit=0, loyalty=0, growth=0),
            tier=None,
            loyalty=p.LoyaltyScore(
                index=0, behavioural=0, attitudinal=0, dick_basu="none", jones_sasser="defector"
            ),
        ),
        day(5),
    )
    assert service.DECIDERS[ev.VALUE_SCORED](None, POLICY, score) is None
    registered = d.on_registered(None, at=day(0)).state
    assert service.DECIDERS[ev.VALUE_SCORED](registered, POLICY, score) is None


def test_a_state_survives_its_row() -> None:
    state = d.on_purchase(None, POLICY, order_id="a", amount=Decimal("10.50"), at=day(0)).state
    state = d.on_purchase(state, POLICY, order_id="b", amount=Decimal("0.00"), at=day(5)).state
    state = d.on_refund(
        state, POLICY, order_id="a", refunded_total=Decimal("3.25"), at=day(6)
    ).state
    state = d.on_refund(
        state, POLICY, order_id="later", refunded_total=Decimal("7"), at=day(6)
    ).state
    state = d.on_complaint_opened(
        state, POLICY, complaint_id="c1", severity=d.Severity.HIGH, at=day(7)
    ).state
    state = d.on_complaint_closed(state, POLICY, complaint_id="c0", satisfaction=2, at=day(8)).state
    assert (state.stage, state.decline_causes) == (Stage.DECLINE, frozenset({"c1"}))

    row = service._to_row(CUSTOMER, state, d.order_facts(state, POLICY), POLICY, 3)
    # Arrays are bound as literals and read back as lists.
    stored = {"purchase_days": list(state.purchase_days), "decline_causes": ["c1"]}
    orders = {order_id: order for _, order_id, order in service._order_rows(CUSTOMER, state, {})}
    assert service._to_state({**row, **stored}, orders) == state
    assert service._order_rows(CUSTOMER, state, orders) == []  # nothing new once stored
    assert row["purchase_days"] == f"{{{day(0).date()},{day(5).date()}}}"
    assert row["decline_causes"] == '{"c1"}'
    assert row["relationship_policy_version"] == 3
    assert (row["decline_due_at"], row["churn_due_at"]) == d.due_times(state, POLICY)
    assert row["idle_since"] == day(5)
    assert row["gap_days"] == 5.0
