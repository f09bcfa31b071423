"""One workflow step on a complaint, with placeholder texts: the random histories of the SLA
tests (unit and integration) are built from these."""

from __future__ import annotations

from datetime import datetime

from services.complaints import domain
from services.complaints.domain import Action, Complaint, SlaPolicy


def take_step(
    complaint: Complaint, action: Action, at: datetime, *, clocks_first: SlaPolicy | None = None
) -> Complaint:
    """`clocks_first`: close and escalate as the service does, raising what the clocks called
    for first (`close_after_clocks`, `escalate_after_clocks`) under that policy."""
    match action:
        case Action.acknowledge:
            return domain.acknowledge(complaint, at=at, message="m").complaint
        case Action.investigate:
            return domain.investigate(complaint, at=at).complaint
        case Action.propose:
            return domain.propose(complaint, at=at, proposed_resolution="p").complaint
        case Action.await_customer:
            return domain.await_customer(complaint, at=at).complaint
        case Action.resolve:
            return domain.resolve(
                complaint, at=at, root_cause="other", root_cause_detail="d", resolution="r"
            ).complaint
        case Action.close if clocks_first is not None:
            return domain.close_after_clocks(
                complaint, at=at, satisfaction=3, feedback="f", policy=clocks_first
            ).complaint
        case Action.close:
            return domain.close(complaint, at=at, satisfaction=3, feedback="f").complaint
        case Action.reopen:
            return domain.reopen(complaint, at=at).complaint
        case Action.escalate if clocks_first is not None:
            return domain.escalate_after_clocks(
                complaint, at=at, reason="r", policy=clocks_first
            ).complaint
        case Action.escalate:
            return domain.escalate(complaint, at=at, reason="r").complaint
    raise AssertionError(f"no step for {action}")
