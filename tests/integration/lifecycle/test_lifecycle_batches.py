"""``apply_events`` on PostgreSQL: a whole batch in one transaction (set-based statements) gives
exactly the rows, history and events that the same events applied one by one give, and what
the pure rules give in memory.

Drives the service layer directly on the session's lifecycle database (no Kafka, no app): two
copies of one set of customer stories with fresh ids, one applied as a single batch, the other
one event per transaction (as the runner's slow path does).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from integration.lifecycle.lifecycle_helpers import day
from sqlalchemy import text

from services.lifecycle import domain, service
from services.lifecycle.domain import LifecyclePolicy
from shared.db import SessionFactory, asyncpg_dsn, create_engine, session_factory, transaction
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev

pytestmark = pytest.mark.integration

Story = list[tuple[str, float, dict[str, Any]]]  # (what, business day, details)

#: Each customer's story, in business order.
STORIES: list[Story] = [
    # registered, first purchase, established at the third purchase day 90+ days later
    [("registered", 0, {}), *[("purchase", n, {"order": f"o{n}"}) for n in (1, 1.2, 40, 95)]],
    # a high complaint declines, a satisfied closure recovers to the stage before
    [
        ("purchase", 2, {"order": "a"}),
        ("opened", 5, {"complaint": 1, "severity": "high"}),
        ("closed", 6, {"complaint": 1, "satisfaction": 5}),
    ],
    # two overlapping complaints: both causes, one closure unsatisfied -> the decline stands
    [
        ("registered", 0, {}),
        ("purchase", 1, {"order": "a"}),
        ("opened", 3, {"complaint": 1, "severity": "critical"}),
        ("opened", 4, {"complaint": 2, "severity": "high"}),
        ("closed", 5, {"complaint": 1, "satisfaction": 5}),
        ("closed", 6, {"complaint": 2, "satisfaction": 2}),
        ("scored", 7, {"p_alive": 0.5}),
    ],
    # lapsing before the next purchase (time rules run up to each event), refunds either way
    [
        ("registered", 0, {}),
        ("refund", 0.5, {"order": "b", "total": "30.00"}),  # before its order: waits for it
        ("purchase", 1, {"order": "a", "amount": "40.00"}),
        ("purchase", 2, {"order": "b", "amount": "30.00"}),
        ("refund", 3, {"order": "a", "total": "10.00"}),
        ("purchase", 150, {"order": "c"}),
        ("free", 151, {"order": "d"}),
    ],
    # decline, model churn, winback; a low complaint moves nothing, a reopened high one does
    [
        ("purchase", 1, {"order": "a"}),
        ("opened", 2, {"complaint": 1, "severity": "high"}),
        ("scored", 3, {"p_alive": 0.05}),
        ("purchase", 20, {"order": "b"}),
        ("opened", 21, {"complaint": 2, "severity": "low"}),
        ("closed", 21.5, {"complaint": 1, "satisfaction": 1}),
        ("reopened", 22, {"complaint": 1, "severity": "high"}),
    ],
    # late purchases (older than the latest) and redelivered orders (a new event, the same
    # order and time: profile records an order id once), among many in order
    [
        ("registered", 0, {}),
        *[("purchase", n, {"order": f"o{n}"}) for n in (1, 30, 60, 100, 130, 170, 200)],
        ("purchase", 200, {"order": "o200"}),
        ("purchase", 45, {"order": "late-1"}),
        ("purchase", 30, {"order": "o30"}),
        ("purchase", 115, {"order": "late-2", "amount": "60.00"}),
        ("refund", 220, {"order": "late-2", "total": "60.00"}),
        ("purchase", 600, {"order": "after-churn"}),
    ],
    # erased: state and history go, a later event must not bring them back
    [
        ("registered", 0, {}),
        ("purchase", 1, {"order": "a"}),
        ("erased", 2, {}),
    ],
]


def events_of(
    story: Story, customer: uuid.UUID, complaints: dict[int, uuid.UUID] | None = None
) -> list[CloudEvent[Any]]:
    """The story's events for `customer`; `complaints` names its complaints (the two copies
    share them, so that their facts compare equal)."""
    complaints = defaultdict(uuid.uuid4) if complaints is None else complaints
    out = []
    for what, n, details in story:
        at = day(n)
        data: Any
        match what:
            case "registered":
                type_, data = (
                    ev.CUSTOMER_REGISTERED,
                    p.CustomerRegistered(customer_id=customer, kind=p.CustomerKind.person),
                )
            case "purchase" | "free":
                amount = "0.00" if what == "free" else details.get("amount", "25.00")
                type_, data = (
                    ev.PURCHASE_RECORDED,
                    p.PurchaseRecorded(
                        customer_id=customer,
                        purchase_id=uuid.uuid4(),
                        order_id=details["order"],
                        amount=Decimal(amount),
                        currency="EUR",
                    ),
                )
            case "refund":
                total = Decimal(details["total"])
                type_, data = (
                    ev.PURCHASE_REFUNDED,
                    p.PurchaseRefunded(
                        customer_id=customer,
                        purchase_id=uuid.uuid4(),
                        order_id=details["order"],
                        refund_id=uuid.uuid4(),
                        amount=total,
                        refunded_total=total,
                        order_amount=Decimal("40.00"),
                        currency="EUR",
                    ),
                )
            case "opened":
                type_, data = (
                    ev.COMPLAINT_OPENED,
                    p.ComplaintOpened(
                        complaint_id=complaints[details["complaint"]],
                        customer_id=customer,
                        severity=p.Severity(details["severity"]),
                        channel=p.ComplaintChannel.email,
                        category=p.ComplaintCategory.delivery,
                        first_response_due=day(n + 1),
                        resolution_due=day(n + 3),
                    ),
                )
            case "closed" | "reopened":
                type_ = ev.COMPLAINT_CLOSED if what == "closed" else ev.COMPLAINT_REOPENED
                payload = p.ComplaintClosed if what == "closed" else p.ComplaintReopened
                data = payload(
                    complaint_id=complaints[details["complaint"]],
                    customer_id=customer,
                    severity=p.Severity(details.get("severity", "high")),
                    **({"satisfaction": details["satisfaction"]} if what == "closed" else {}),
                )
            case "scored":
                type_, data = (
                    ev.VALUE_SCORED,
                    p.ValueScored(
                        customer_id=customer,
                        score=10.0,
                        dimensions=p.ValueDimensions(
                            current=0, future=0, credit=0, loyalty=0, growth=0
                        ),
                        tier=None,
                        loyalty=p.LoyaltyScore(
                            index=0,
                            behavioural=0,
                            attitudinal=0,
                            dick_basu="none",
                            jones_sasser="defector",
                        ),
                        p_alive=details["p_alive"],
                    ),
                )
            case "erased":
                type_, data = ev.CUSTOMER_ERASED, p.CustomerErased(customer_id=customer)
            case _:
                raise AssertionError(what)
        out.append(new_event(type=type_, source="/crm/test", subject=customer, time=at, data=data))
    return out


@pytest.fixture(scope="module")
async def sessions(service_databases: dict[str, str]) -> AsyncIterator[SessionFactory]:
    engine = create_engine(service_databases["lifecycle"], pool_size=2)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def apply(sessions: SessionFactory, events: list[CloudEvent[Any]]) -> list[Any]:
    async with transaction(sessions) as session:
        return await service.apply_events(session, events)


async def stored(
    sessions: SessionFactory, customers: list[uuid.UUID]
) -> tuple[
    dict[uuid.UUID, Any],
    dict[uuid.UUID, list[tuple[Any, ...]]],
    set[uuid.UUID],
    dict[uuid.UUID, dict[str, domain.Order]],
]:
    async with transaction(sessions) as session:
        rows = {
            r.customer_id: r._mapping
            for r in await session.execute(
                text("SELECT * FROM customer_lifecycles WHERE customer_id = ANY(:ids)"),
                {"ids": customers},
            )
        }
        history: dict[uuid.UUID, list[tuple[Any, ...]]] = defaultdict(list)
        for r in await session.execute(
            text(
                "SELECT customer_id, from_stage, to_stage, reason, trigger, at, causing_event_id, "
                "event_id FROM stage_transitions WHERE customer_id = ANY(:ids) "
                "ORDER BY customer_id, at, id"
            ),
            {"ids": customers},
        ):
            history[r.customer_id].append(tuple(r))
        erased = set(
            (
                await session.execute(
                    text("SELECT customer_id FROM erased_customers WHERE customer_id = ANY(:ids)"),
                    {"ids": customers},
                )
            ).scalars()
        )
        orders: dict[uuid.UUID, dict[str, domain.Order]] = defaultdict(dict)
        for r in await session.execute(
            text("SELECT * FROM lifecycle_orders WHERE customer_id = ANY(:ids)"),
            {"ids": customers},
        ):
            orders[r.customer_id][r.order_id] = domain.Order(r.placed_at, r.amount, r.refunded)
    return rows, history, erased, orders


def without_ids(row: Any) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("customer_id", "updated_at")}


async def test_a_batch_equals_its_events_one_by_one_and_the_pure_rules(
    sessions: SessionFactory,
) -> None:
    batched = [uuid.uuid4() for _ in STORIES]
    single = [uuid.uuid4() for _ in STORIES]
    complaints: list[dict[int, uuid.UUID]] = [defaultdict(uuid.uuid4) for _ in STORIES]
    batch_events = [events_of(*args) for args in zip(STORIES, batched, complaints, strict=True)]
    single_events = [events_of(*args) for args in zip(STORIES, single, complaints, strict=True)]

    # One batch, customers interleaved as partitions deliver them (each one's events in order).
    queues = [list(stream) for stream in batch_events]
    mixed: list[CloudEvent[Any]] = []
    shuffle = random.Random(7)
    while any(queues):
        mixed.append(shuffle.choice([q for q in queues if q]).pop(0))
    emitted_batch = await apply(sessions, mixed)
    emitted_single = [
        e for stream in single_events for x in stream for e in await apply(sessions, [x])
    ]

    # A late event after the erasure changes nothing, in either copy.
    for customer in (batched[-1], single[-1]):
        late = events_of([("purchase", 3, {"order": "late"})], customer)
        assert await apply(sessions, late) == []

    rows_b, history_b, erased_b, orders_b = await stored(sessions, batched)
    rows_s, history_s, erased_s, orders_s = await stored(sessions, single)
    assert erased_b == {batched[-1]} and erased_s == {single[-1]}
    assert batched[-1] not in rows_b and batched[-1] not in history_b
    assert batched[-1] not in orders_b  # erasure takes the orders too

    policy = LifecyclePolicy()
    for index, (b, s) in enumerate(zip(batched, single, strict=True)):
        if index == len(STORIES) - 1:
            continue  # erased
        assert without_ids(rows_b[b]) == without_ids(rows_s[s]), STORIES[index]
        assert orders_b[b] == orders_s[s], STORIES[index]
        # History: the same moves at the same times; each names its own causing event.
        assert [h[1:6] for h in history_b[b]] == [h[1:6] for h in history_s[s]], STORIES[index]
        by_id = {e.id: e for e in batch_events[index]}
        assert all(h[6] in by_id for h in history_b[b])
        # What the pure rules give in memory is what the row holds.
        state = None
        for event in batch_events[index]:
            decision = service.DECIDERS[event.type](state, policy, event)
            state = decision.state if decision is not None else state
        assert state is not None
        assert service._to_state(rows_b[b], orders_b[b]) == state
        row = rows_b[b]
        # The order facts stored beside it are those of every order, under the policy in force.
        assert domain.order_facts(state, policy) == service._order_facts_of(row)
        assert row["relationship_policy_version"] == 0
        assert (row["decline_due_at"], row["churn_due_at"]) == domain.due_times(state, policy)
        assert (row["idle_since"], row["gap_days"]) == (
            domain.idle_since(state),
            domain.median_gap_days(state, policy),
        )

    # The decline of story 3 has both complaints as causes (an array column of two).
    assert len(rows_b[batched[2]]["decline_causes"]) == 2
    # Each stored change was published under its event id, with the same content (the erased
    # customer's history is gone, their events were published before the erasure).
    published = {
        e.id: (e.data.customer_id, e.data.from_stage, e.data.to_stage, e.data.reason, e.time)
        for e in emitted_batch
        if e.data.customer_id != batched[-1]
    }
    assert published == {
        h[7]: (customer, h[1] and p.Stage(h[1]), p.Stage(h[2]), h[3], h[5])
        for customer, changes in history_b.items()
        for h in changes
    }
    assert all(e.type == ev.STAGE_CHANGED for e in emitted_batch)
    # The batch wrote them to the outbox itself, in their order, keyed by customer.
    async with transaction(sessions) as session:
        outbox = (
            await session.execute(
                text(
                    "SELECT event_id, key, topic, payload FROM outbox "
                    "WHERE event_id = ANY(:ids) ORDER BY id"
                ),
                {"ids": [e.id for e in emitted_batch]},
            )
        ).all()
    assert [tuple(row) for row in outbox] == [
        (e.id, e.subject, "crm.lifecycle.v1", e.to_bytes()) for e in emitted_batch
    ]
    # One by one, the erased customer's first moves were published before the erasure came;
    # in one batch the erasure wins at once. Everyone else: the same moves.
    assert sorted(e.data.reason for e in emitted_batch) == sorted(
        e.data.reason for e in emitted_single if e.data.customer_id != single[-1]
    )


def test_text_arrays_quote_every_element() -> None:
    assert service._text_array([]) == "{}"
    assert service._text_array(["a", 'b"c', "d\\e", "x,y"]) == '{"a","b\\"c","d\\\\e","x,y"}'


async def test_an_event_that_changes_nothing_leaves_the_row_unwritten(
    sessions: SessionFactory,
) -> None:
    """A score of a growing customer (the usual one: each purchase is scored, P(alive) at or
    above the threshold) moves nothing, and the row keeps its version; a score that churns a
    declined customer is written, and so is one that comes after a growing customer's lapse
    fell due (the time rules run first). (A low score of a growing customer is written too: it
    is remembered, see test_lifecycle_scores.)"""
    growing, declined, lapsed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(
        sessions,
        events_of([("purchase", 1, {"order": "a"})], growing)
        + events_of([("purchase", 1, {"order": "a"})], lapsed)
        + events_of(
            [("purchase", 1, {"order": "a"}), ("opened", 2, {"complaint": 1, "severity": "high"})],
            declined,
        ),
    )

    async def versions() -> dict[uuid.UUID, tuple[str, str]]:
        async with transaction(sessions) as session:
            rows = await session.execute(
                text(
                    "SELECT customer_id, xmin::text AS version, stage FROM customer_lifecycles "
                    "WHERE customer_id = ANY(:ids)"
                ),
                {"ids": [growing, declined, lapsed]},
            )
            return {r.customer_id: (r.version, r.stage) for r in rows}

    before = await versions()
    assert {c: stage for c, (_, stage) in before.items()} == {
        growing: "growth",
        declined: "decline",
        lapsed: "growth",
    }
    changed = await apply(
        sessions,
        events_of([("scored", 3, {"p_alive": 0.5})], growing)
        + events_of([("scored", 3, {"p_alive": 0.05})], declined)
        # a customer with one purchase day lapses after max(60, 2 * 60) idle days: on day 121
        + events_of([("scored", 200, {"p_alive": 0.05})], lapsed),
    )
    after = await versions()
    assert after[growing] == before[growing]  # not rewritten
    assert after[declined][1] == "churned" and after[declined][0] != before[declined][0]
    assert after[lapsed][1] == "churned"
    moves = sorted((str(e.data.customer_id), e.data.to_stage, e.data.reason) for e in changed)
    assert moves == sorted(
        [
            (str(declined), "churned", "model_churn"),
            (str(lapsed), "decline", "lapsing"),
            (str(lapsed), "churned", "model_churn"),
        ]
    )


async def test_a_batch_waits_for_a_policy_change_and_plans_with_the_new_policy(
    sessions: SessionFactory, service_databases: dict[str, str]
) -> None:
    """A policy change holds the policy lock while it re-plans: a batch arriving meanwhile waits
    for it and then plans with the policy it committed (read after the lock, not before)."""
    customer = uuid.uuid4()
    events = events_of([("purchase", 1, {"order": "a"})], customer)
    writer = await asyncpg.connect(asyncpg_dsn(service_databases["lifecycle"]))
    try:
        changing = writer.transaction()
        await changing.start()
        await writer.execute(service._POLICY_LOCK.format(mode=""))
        latest = await writer.fetchval("SELECT coalesce(max(version), 0) FROM lifecycle_policies")
        longer = LifecyclePolicy(lapse_gap_multiplier=3)  # lapse after 3 gaps: 180 days, not 120
        await writer.execute(
            "INSERT INTO lifecycle_policies (version, policy, changed_at, changed_by) "
            "VALUES ($1, $2::jsonb, now(), 'test')",
            latest + 1,
            longer.model_dump_json(),
        )
        batch = asyncio.create_task(apply(sessions, events))
        while not await writer.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            assert not batch.done(), "the batch must wait for the policy change"
            await asyncio.sleep(0.02)
        await changing.commit()
        await batch
        rows, _, _, _ = await stored(sessions, [customer])
        assert rows[customer]["decline_due_at"] == day(1) + timedelta(days=180)
    finally:
        # The module's other tests run under the default policy.
        await writer.execute(
            "INSERT INTO lifecycle_policies (version, policy, changed_at, changed_by) "
            "SELECT max(version) + 1, $1::jsonb, now(), 'test' FROM lifecycle_policies",
            LifecyclePolicy().model_dump_json(),
        )
        await writer.close()
