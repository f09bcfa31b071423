"""How complaint events fold into the state loyalty needs: open or closed, and the CSAT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.scoring.service import _ComplaintState
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CUSTOMER = uuid.uuid4()
COMPLAINT = uuid.uuid4()
COMMON = {"complaint_id": COMPLAINT, "customer_id": CUSTOMER, "severity": p.Severity.medium}


def _event(type_: str, data: p.ComplaintPayload, hours: float) -> CloudEvent[Any]:
    return new_event(
        type=type_,
        source="/crm/complaints",
        subject=CUSTOMER,
        time=T0 + timedelta(hours=hours),
        data=data,
    )


def _opened(hours: float = 0) -> CloudEvent[Any]:
    return _event(
        ev.COMPLAINT_OPENED,
        p.ComplaintOpened(
            **COMMON,
            channel=p.ComplaintChannel.web,
            category=p.ComplaintCategory.product,
            first_response_due=T0 + timedelta(hours=24),
            resolution_due=T0 + timedelta(hours=120),
        ),
        hours,
    )


def _closed(hours: float, satisfaction: int | None) -> CloudEvent[Any]:
    return _event(
        ev.COMPLAINT_CLOSED, p.ComplaintClosed(**COMMON, satisfaction=satisfaction), hours
    )


def _fold(*events: CloudEvent[Any]) -> _ComplaintState:
    state = _ComplaintState(CUSTOMER, events[0].time, None, None, "received", events[0].time)
    for event in events:
        state.apply(event)
    return state


def test_closing_records_the_satisfaction_and_ends_the_open_state() -> None:
    state = _fold(
        _opened(),
        _event(
            ev.COMPLAINT_ACKNOWLEDGED, p.ComplaintAcknowledged(**COMMON, first_response_met=True), 1
        ),
        _closed(30, 2),
    )
    assert (state.status, state.closed_at, state.satisfaction) == (
        "closed",
        T0 + timedelta(hours=30),
        2,
    )


def test_reopening_clears_closure_and_satisfaction() -> None:
    state = _fold(
        _opened(), _closed(30, 5), _event(ev.COMPLAINT_REOPENED, p.ComplaintReopened(**COMMON), 40)
    )
    assert (state.status, state.closed_at, state.satisfaction) == ("reopened", None, None)


def test_an_older_step_arriving_late_does_not_undo_a_newer_one() -> None:
    late_acknowledgement = _event(
        ev.COMPLAINT_ACKNOWLEDGED, p.ComplaintAcknowledged(**COMMON, first_response_met=True), 2
    )
    state = _fold(_opened(), _closed(30, 4), late_acknowledgement)
    assert (state.status, state.satisfaction) == ("closed", 4)


def test_a_late_opening_only_moves_the_opening_time_back() -> None:
    state = _fold(_closed(30, 3), _opened(-5))
    assert state.opened_at == T0 - timedelta(hours=5)
    assert (state.status, state.satisfaction) == ("closed", 3)
