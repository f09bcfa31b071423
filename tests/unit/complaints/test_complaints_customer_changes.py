"""A consumer batch is folded into one net change per customer before its single statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.complaints.domain import Tier
from services.complaints.service import CustomerChange, CustomerNet, net_changes

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
A, B = uuid.uuid4(), uuid.uuid4()


def test_the_newest_tier_by_business_time_wins_and_ties_go_to_the_later_event() -> None:
    net = net_changes(
        [
            CustomerChange(A, "tier", T0 + H, Tier.key),
            CustomerChange(A, "tier", T0, Tier.small),  # late and older: ignored
            CustomerChange(B, "tier", T0, Tier.small),
            CustomerChange(B, "tier", T0, Tier.major),  # same time, consumed later
            CustomerChange(A, "seen", T0),
        ]
    )
    assert net == {
        A: CustomerNet(seen=True, tier=Tier.key, tier_as_of=T0 + H),
        B: CustomerNet(seen=False, tier=Tier.major, tier_as_of=T0),
    }


def test_nothing_counts_after_an_erasure_and_the_last_erasure_time_is_kept() -> None:
    net = net_changes(
        [
            CustomerChange(A, "seen", T0),
            CustomerChange(A, "tier", T0, Tier.key),
            CustomerChange(A, "erased", T0 + H),
            CustomerChange(A, "seen", T0 + 2 * H),
            CustomerChange(A, "tier", T0 + 3 * H, Tier.major),
            CustomerChange(A, "erased", T0 + 4 * H),
        ]
    )
    assert net == {A: CustomerNet(seen=True, tier=Tier.key, tier_as_of=T0, erased_at=T0 + 4 * H)}


def test_an_empty_batch_changes_nobody() -> None:
    assert net_changes([]) == {}
