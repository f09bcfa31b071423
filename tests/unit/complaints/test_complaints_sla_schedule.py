"""`next_sla_check` agrees with `escalations_due` on random workflow histories (fixed seed).

The checker only looks at complaints whose next check time has passed, so this agreement is
what makes the indexed candidate query equivalent to evaluating every open complaint.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from unit.complaints.complaint_steps import take_step

from services.complaints import domain
from services.complaints.domain import (
    Category,
    Channel,
    Complaint,
    Severity,
    SlaPolicy,
    Status,
    Tier,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
POLICY = SlaPolicy()


def random_history(rng: random.Random) -> Complaint:
    complaint = domain.open_complaint(
        complaint_id=UUID(int=rng.getrandbits(64)),
        customer_id=UUID(int=1),
        channel=Channel.web,
        category=Category.other,
        severity=rng.choice(list(Severity)),
        tier=rng.choice([None, Tier.key]),
        received_at=T0,
        policy=POLICY,
    ).complaint
    at = T0
    for _ in range(rng.randrange(0, 9)):  # bounded walk
        at += timedelta(
            minutes=rng.choice([0, 1, 30, 600, 3000, 9000]), microseconds=rng.randrange(3)
        )
        if rng.random() < 0.3:
            complaint = domain.evaluate_sla(complaint, as_of=at, policy=POLICY).complaint
            continue
        actions = domain.allowed_actions(complaint)
        if actions:
            complaint = take_step(complaint, rng.choice(actions), at)
    return complaint


HISTORIES = [random_history(random.Random(seed)) for seed in range(400)]


def test_the_histories_cover_every_status_and_level() -> None:
    assert {c.status for c in HISTORIES} == set(Status)
    assert {c.escalation_level for c in HISTORIES} == {0, 1, 2, 3}
    assert any(c.paused_since is not None for c in HISTORIES)
    assert any(c.reopen_count > 0 for c in HISTORIES)


@pytest.mark.parametrize("complaint", HISTORIES, ids=lambda c: f"{c.status}-L{c.escalation_level}")
def test_escalations_are_due_exactly_after_the_next_check(complaint: Complaint) -> None:
    check = domain.next_sla_check(complaint, POLICY)
    probes = [complaint.last_step_at, T0 + timedelta(days=1000)]
    if check is not None:
        probes += [check - US, check, check + US, check + timedelta(hours=5)]
    for as_of in probes:
        if as_of < complaint.last_step_at:
            continue  # the checker evaluates after the facts it knows
        due = domain.escalations_due(complaint, as_of, POLICY)
        assert bool(due) == (check is not None and as_of > check), (as_of, check, due)


@pytest.mark.parametrize("complaint", HISTORIES[:100], ids=lambda c: f"{c.status}")
def test_after_evaluation_the_next_check_lies_ahead(complaint: Complaint) -> None:
    as_of = max(complaint.last_step_at, T0 + timedelta(hours=200))
    evaluated = domain.evaluate_sla(complaint, as_of=as_of, policy=POLICY).complaint
    check = domain.next_sla_check(evaluated, POLICY)
    assert check is None or check >= as_of
    assert domain.escalations_due(evaluated, as_of, POLICY) == []
