"""The 360 projections folded a whole batch at a time (`process_projections`) end exactly where
applying the same events one by one leaves them, late and out-of-order events included."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from integration.profile.profile_helpers import WRITER, Profile
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from support import event

from services.profile.handlers import process_projections
from services.profile.models import MESSAGING
from shared.events import CloudEvent
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import HandlerContext

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)
TABLES = {
    "customer_stage": "customer_id",
    "customer_value": "customer_id",
    "customer_complaints": "complaint_id",
}


def _random_events(rng: random.Random, customer: uuid.UUID, complaint: uuid.UUID) -> list[Any]:
    """A customer's lifecycle, value and complaint events, shuffled: late ones included, and
    several with the same business time."""
    at = [T0 + timedelta(hours=rng.randrange(6)) for _ in range(12)]
    # Scores and tier changes at distinct times: which one's tier is the latest is then clear.
    at[4:10] = [T0 + timedelta(minutes=m) for m in rng.sample(range(360), 6)]
    stages = [p.Stage.prospect, p.Stage.growth, p.Stage.mature, p.Stage.decline]
    events: list[CloudEvent[Any]] = []
    for i in range(4):
        events.append(
            event(
                ev.STAGE_CHANGED,
                p.StageChanged(
                    customer_id=customer,
                    from_stage=None,
                    to_stage=rng.choice(stages),
                    reason=f"reason-{i}",
                ),
                subject=str(customer),
                time=at[i],
            )
        )
    tiers = [p.Tier.key, p.Tier.major, p.Tier.ordinary, None]
    for i in range(3):
        events.append(
            event(
                ev.VALUE_SCORED,
                p.ValueScored(
                    customer_id=customer,
                    score=rng.uniform(0, 100),
                    dimensions=p.ValueDimensions(
                        current=50, future=50, credit=100, loyalty=40, growth=30
                    ),
                    tier=rng.choice(tiers),
                    loyalty=p.LoyaltyScore(
                        index=61.5,
                        behavioural=70,
                        attitudinal=50,
                        dick_basu="true",
                        jones_sasser="apostle",
                    ),
                    p_alive=0.9,
                    clv=Decimal("120.50"),
                    currency="USD",
                    model_version=f"m-{i}",
                ),
                subject=str(customer),
                time=at[4 + i],
            )
        )
        events.append(
            event(
                ev.TIER_CHANGED,
                p.TierChanged(
                    customer_id=customer,
                    from_tier=None,
                    to_tier=rng.choice(tiers),
                    score=rng.uniform(0, 100),
                ),
                subject=str(customer),
                time=at[7 + i],
            )
        )
    complaint_fields: dict[str, Any] = {
        "complaint_id": complaint,
        "customer_id": customer,
        "severity": p.Severity.high,
    }
    events += [
        event(
            ev.COMPLAINT_OPENED,
            p.ComplaintOpened(
                **complaint_fields,
                channel=p.ComplaintChannel.email,
                category=p.ComplaintCategory.delivery,
                first_response_due=T0 + timedelta(hours=4),
                resolution_due=T0 + timedelta(days=2),
            ),
            subject=str(customer),
            time=at[10],
        ),
        event(
            ev.COMPLAINT_ACKNOWLEDGED,
            p.ComplaintAcknowledged(**complaint_fields, first_response_met=rng.random() < 0.5),
            subject=str(customer),
            time=at[11],
        ),
        event(
            ev.COMPLAINT_ESCALATED,
            p.ComplaintEscalated(
                **complaint_fields, level=rng.randint(1, 3), reason=p.EscalationReason.manual
            ),
            subject=str(customer),
            time=at[rng.randrange(12)],
        ),
    ]
    rng.shuffle(events)
    return events


async def _rows(engine: AsyncEngine, customers: list[uuid.UUID]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    async with engine.connect() as conn:
        for table, key in TABLES.items():
            result = await conn.execute(
                text(f"SELECT * FROM {table} WHERE customer_id = ANY(:ids) ORDER BY {key}"),
                {"ids": customers},
            )
            # updated_at is the wall clock of the write; everything else must agree.
            found[table] = [
                {k: v for k, v in row._mapping.items() if k != "updated_at"} for row in result
            ]
    for row in found["customer_value"]:
        # What later events are compared with is the time the tier is as of (the later of the
        # two): a tier change older than a score that followed it may or may not leave its time.
        times = [t for t in (row.pop("tier_changed_at"), row["scored_at"]) if t is not None]
        row["tier_as_of"] = max(times, default=None)
    return found


def _rename(rows: dict[str, list[Any]], mapping: dict[uuid.UUID, uuid.UUID]) -> dict[str, Any]:
    return {
        table: [{k: mapping.get(v, v) for k, v in row.items()} for row in table_rows]
        for table, table_rows in rows.items()
    }


async def test_a_batch_folds_to_what_one_by_one_application_leaves(profile: Profile) -> None:
    sessions = async_sessionmaker(profile.engine, expire_on_commit=False)
    rng = random.Random(20261122)
    batch_ids: list[uuid.UUID] = []
    single_ids: list[uuid.UUID] = []
    batched: list[CloudEvent[Any]] = []
    singly: list[CloudEvent[Any]] = []
    same: dict[uuid.UUID, uuid.UUID] = {}
    for _ in range(25):
        a = (await profile.register())["id"]
        b = (await profile.register())["id"]
        customer_a, customer_b = uuid.UUID(a), uuid.UUID(b)
        complaint_a, complaint_b = uuid.uuid4(), uuid.uuid4()
        events = _random_events(rng, customer_a, complaint_a)
        batched += events
        # The same events for a twin customer, applied one at a time in the same order.
        for e in events:
            data = e.data.model_copy(update={"customer_id": customer_b})
            if hasattr(data, "complaint_id"):
                data = data.model_copy(update={"complaint_id": complaint_b})
            singly.append(event(e.type, data, subject=b, time=e.time))
        batch_ids.append(customer_a)
        single_ids.append(customer_b)
        same |= {customer_b: customer_a, complaint_b: complaint_a}

    async with sessions() as session, session.begin():
        await session.execute(text("SELECT 1"))
        await process_projections(HandlerContext(session, MESSAGING, "profile"), batched)
    for e in singly:
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))
            await process_projections(HandlerContext(session, MESSAGING, "profile"), [e])

    from_batch = await _rows(profile.engine, batch_ids)
    one_by_one = _rename(await _rows(profile.engine, single_ids), same)
    assert len(from_batch["customer_stage"]) == len(from_batch["customer_complaints"]) == 25
    assert len(from_batch["customer_value"]) == 25
    # Stage rows keep the id of the event they came from, which differs between the twins.
    for row in one_by_one["customer_stage"]:
        row.pop("event_id")
    for row in from_batch["customer_stage"]:
        row.pop("event_id")
    assert sorted(map(repr, from_batch["customer_stage"])) == sorted(
        map(repr, one_by_one["customer_stage"])
    )
    assert sorted(map(repr, from_batch["customer_value"])) == sorted(
        map(repr, one_by_one["customer_value"])
    )
    assert sorted(map(repr, from_batch["customer_complaints"])) == sorted(
        map(repr, one_by_one["customer_complaints"])
    )


async def test_events_of_an_erased_customer_are_dropped_in_a_batch(profile: Profile) -> None:
    sessions = async_sessionmaker(profile.engine, expire_on_commit=False)
    kept = uuid.UUID((await profile.register())["id"])
    erased = uuid.UUID((await profile.register())["id"])
    response = await profile.client.delete(f"/v1/customers/{erased}", headers=WRITER)
    assert response.status_code == 204, response.text
    rng = random.Random(7)
    events = _random_events(rng, kept, uuid.uuid4()) + _random_events(rng, erased, uuid.uuid4())
    async with sessions() as session, session.begin():
        await session.execute(text("SELECT 1"))
        await process_projections(HandlerContext(session, MESSAGING, "profile"), events)
    rows = await _rows(profile.engine, [kept, erased])
    for table in TABLES:
        assert {row["customer_id"] for row in rows[table]} == {kept}, table
