"""The set-based writers on real PostgreSQL, each in a database of its own (no relay drains its
outbox, no other test's complaints are due): the SLA checker over a backlog of random
histories, and the consumer's batch processor of the known-customers projection.

Both are checked against the rules applied one complaint, or one event, at a time.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from unit.complaints.complaint_steps import take_step

from services.complaints import domain, service
from services.complaints.domain import ClockState, Complaint, SlaPolicy
from services.complaints.handlers import PROCESS
from services.complaints.models import MESSAGING
from services.complaints.models import Complaint as ComplaintRow
from shared.db import create_engine, migrate, session_factory
from shared.devstack import PostgresServer
from shared.events import CloudEvent, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.messaging.consumer import HandlerContext

pytestmark = pytest.mark.integration

T0 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)
AS_OF = T0 + timedelta(days=60)  # after every step of the random histories below
POLICY = SlaPolicy()
US = timedelta(microseconds=1)


@pytest.fixture
def own_database(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"crm_complaints_sets_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    url = postgres_server.url(name)
    migrate("complaints", url)
    yield url


@pytest.fixture
async def engine(own_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(own_database, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


# --- the SLA checker ---------------------------------------------------------------------------


def _opened(customer: uuid.UUID, severity: domain.Severity, received_at: datetime) -> Complaint:
    return domain.open_complaint(
        complaint_id=uuid.uuid4(),
        customer_id=customer,
        channel=domain.Channel.web,
        category=domain.Category.other,
        severity=severity,
        tier=None,
        received_at=received_at,
        policy=POLICY,
    ).complaint


def _random_history(rng: random.Random, customers: list[uuid.UUID]) -> Complaint:
    complaint = _opened(rng.choice(customers), rng.choice(list(domain.Severity)), T0)
    at = T0
    for _ in range(rng.randrange(0, 9)):
        at += timedelta(minutes=rng.choice([0, 1, 30, 600, 3000, 9000]))
        if rng.random() < 0.3:
            complaint = domain.evaluate_sla(complaint, as_of=at, policy=POLICY).complaint
            continue
        actions = domain.allowed_actions(complaint)
        if actions:
            complaint = take_step(complaint, rng.choice(actions), at)
    return complaint


async def _store(
    engine: AsyncEngine, complaints: list[Complaint], anonymous: set[uuid.UUID]
) -> None:
    policy = domain.ComplaintPolicy(sla=POLICY)
    async with engine.begin() as conn:
        for c in complaints:
            state = service._state(c, policy)
            await conn.execute(
                text(
                    "INSERT INTO complaints (id, customer_id, channel, category, severity, "
                    "received_at, first_response_due, resolution_due, opened_by, version, "
                    + ", ".join(state)
                    + ") VALUES (:id, :customer_id, 'web', 'other', :severity, :received_at, "
                    ":first_response_due, :resolution_due, 'test', 1, "
                    + ", ".join(f":{k}" for k in state)
                    + ")"
                ),
                {
                    **state,
                    "pauses": json.dumps(state["pauses"]),
                    "id": c.complaint_id,
                    "customer_id": None if c.complaint_id in anonymous else c.customer_id,
                    "severity": c.severity.value,
                    "received_at": c.received_at,
                    "first_response_due": c.first_response_due,
                    "resolution_due": c.resolution_due,
                },
            )
            for e in c.escalations:
                await conn.execute(
                    text(
                        "INSERT INTO complaint_escalations (complaint_id, level, reason, at) "
                        "VALUES (:id, :level, :reason, :at)"
                    ),
                    {"id": c.complaint_id, "level": e.level, "reason": e.reason.value, "at": e.at},
                )


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql)))


async def test_a_backlog_is_escalated_in_batches_exactly_as_the_rules_say(
    engine: AsyncEngine,
) -> None:
    rng = random.Random(20261122)
    customers = [uuid.uuid4() for _ in range(120)]
    histories = [_random_history(rng, customers) for _ in range(700)]
    # breach exactly at the due time is no breach; one microsecond later is
    on_time = _opened(customers[0], domain.Severity.medium, AS_OF - timedelta(hours=24))
    late = _opened(customers[0], domain.Severity.medium, AS_OF - timedelta(hours=24) - US)
    histories += [on_time, late]
    anonymous = {h.complaint_id for h in histories[:40] if domain.next_sla_check(h, POLICY)}
    await _store(engine, histories, anonymous)
    expected = {}
    for h in histories:
        after = domain.evaluate_sla(h, as_of=AS_OF, policy=POLICY).complaint
        expected[h.complaint_id] = (h, after)
    assert {len(a.escalations) - len(b.escalations) for b, a in expected.values()} >= {0, 1, 2}

    sessions = session_factory(engine)
    run = await service.evaluate_sla(sessions, as_of=AS_OF, batch_size=150)

    due = [h for h in histories if (check := domain.next_sla_check(h, POLICY)) and check < AS_OF]
    assert run.candidates == len(due)
    raised = {
        cid: after.escalations[len(before.escalations) :]
        for cid, (before, after) in expected.items()
        if cid not in anonymous
    }
    assert run.escalations == sum(len(new) for new in raised.values())
    assert raised[late.complaint_id] and not raised[on_time.complaint_id]

    stored = {
        r.id: r
        for r in await _rows(
            engine, "SELECT id, escalation_level, next_sla_check_at, version FROM complaints"
        )
    }
    escalations: dict[uuid.UUID, list[tuple[int, str, datetime]]] = {}
    for e in await _rows(
        engine, "SELECT complaint_id, level, reason, at FROM complaint_escalations ORDER BY level"
    ):
        escalations.setdefault(e.complaint_id, []).append((e.level, e.reason, e.at))
    steps: dict[uuid.UUID, list[tuple[Any, ...]]] = {}
    for s in await _rows(
        engine,
        "SELECT complaint_id, action, from_status, to_status, actor, at, facts "
        "FROM complaint_steps ORDER BY id",
    ):
        steps.setdefault(s.complaint_id, []).append(tuple(s)[1:])
    events: dict[str, list[dict[str, Any]]] = {}
    for o in await _rows(engine, "SELECT event_type, payload FROM outbox ORDER BY id"):
        assert o.event_type == ev.COMPLAINT_ESCALATED
        event = json.loads(bytes(o.payload))
        events.setdefault(event["data"]["complaint_id"], []).append(event)

    for cid, (before, after) in expected.items():
        row = stored[cid]
        if cid in anonymous:
            assert row.next_sla_check_at is None and row.version == 1
            assert len(escalations.get(cid, [])) == len(before.escalations)
            assert cid not in steps and str(cid) not in events
            continue
        new = raised[cid]
        assert escalations.get(cid, []) == [
            (e.level, e.reason.value, e.at) for e in after.escalations
        ]
        assert row.escalation_level == after.escalation_level
        assert row.next_sla_check_at == domain.next_sla_check(after, POLICY)
        assert row.version == 1 + (1 if new else 0)
        status = after.status.value
        assert steps.get(cid, []) == [
            (
                "escalate",
                status,
                status,
                "sla-checker",
                e.at,
                {"level": e.level, "reason": e.reason.value},
            )
            for e in new
        ]
        assert [
            (x["data"]["level"], x["data"]["reason"], datetime.fromisoformat(x["time"]))
            for x in events.get(str(cid), [])
        ] == [(e.level, e.reason.value, e.at) for e in new]

    again = await service.evaluate_sla(sessions, as_of=AS_OF, batch_size=1000)
    assert (again.candidates, again.escalations) == (0, 0)
    assert len(await _rows(engine, "SELECT 1 FROM outbox")) == run.escalations


async def test_the_sql_clocks_agree_with_the_rules(engine: AsyncEngine) -> None:
    """The list's `breached` filter and the analytics' met/breached columns, judged in SQL on
    random histories at several instants after their last step, against `domain.clock_states`."""
    rng = random.Random(20261124)
    customers = [uuid.uuid4() for _ in range(20)]
    histories = [_random_history(rng, customers) for _ in range(300)]
    await _store(engine, histories, set())
    last = max(h.last_step_at for h in histories)
    decided = {ClockState.met: True, ClockState.breached: False}
    sessions = session_factory(engine)
    for as_of in (last, last + timedelta(hours=30), last + timedelta(days=40)):
        async with sessions() as session:
            breached = set(
                await session.scalars(select(ComplaintRow.id).where(service.breached(as_of)))
            )
            in_time = set(
                await session.scalars(select(ComplaintRow.id).where(~service.breached(as_of)))
            )
            met = {
                r.id: (r.first_response_met, r.resolution_met)
                for r in await session.execute(
                    text(
                        service._PERIOD
                        + "SELECT id, first_response_met, resolution_met FROM period"
                    ),
                    {"start": T0, "end": T0 + US, "as_of": as_of},
                )
            }
        for h in histories:
            clocks = domain.clock_states(h, as_of)
            late = ClockState.breached in (clocks.first_response, clocks.resolution)
            assert (h.complaint_id in breached, h.complaint_id in in_time) == (late, not late)
            assert met[h.complaint_id] == (
                decided.get(clocks.first_response),
                decided.get(clocks.resolution),
            ), (h, as_of, clocks)


# --- the known-customers projection --------------------------------------------------------------


def _customer_event(kind: str, customer: uuid.UUID, at: datetime, tier: p.Tier | None) -> Any:
    if kind == "registered":
        return new_event(
            type=ev.CUSTOMER_REGISTERED,
            source="/crm/profile",
            subject=customer,
            time=at,
            data=p.CustomerRegistered(customer_id=customer, kind=p.CustomerKind.person),
        )
    if kind == "erased":
        return new_event(
            type=ev.CUSTOMER_ERASED,
            source="/crm/profile",
            subject=customer,
            time=at,
            data=p.CustomerErased(customer_id=customer),
        )
    assert kind == "tier_changed"
    return new_event(
        type=ev.TIER_CHANGED,
        source="/crm/scoring",
        subject=customer,
        time=at,
        data=p.TierChanged(customer_id=customer, from_tier=p.Tier.small, to_tier=tier, score=50.0),
    )


async def _process(engine: AsyncEngine, events: list[CloudEvent[Any]]) -> None:
    async with session_factory(engine)() as session, session.begin():
        await PROCESS(HandlerContext(session, MESSAGING, "complaints"), events)


async def _projection(
    engine: AsyncEngine, customers: list[uuid.UUID]
) -> list[tuple[Any, ...] | None]:
    rows = {
        r.customer_id: (r.known, r.tier, r.tier_as_of, r.erased_at)
        for r in await _rows(
            engine, "SELECT customer_id, known, tier, tier_as_of, erased_at FROM known_customers"
        )
    }
    return [rows.get(c) for c in customers]


async def test_a_batch_leaves_the_projection_as_its_events_one_by_one(
    engine: AsyncEngine,
) -> None:
    rng = random.Random(7)
    kinds = ["registered", "tier_changed", "erased"]
    tiers = list(p.Tier)
    n = 40
    batch, single = [uuid.uuid4() for _ in range(n)], [uuid.uuid4() for _ in range(n)]
    # a past each pair shares: nothing, a known customer with a tier, an erased one
    history: list[tuple[int, str, datetime, p.Tier | None]] = []
    for i in range(n):
        for kind in rng.choice([[], ["registered", "tier_changed"], ["registered", "erased"]]):
            history.append((i, kind, T0 + timedelta(hours=rng.randrange(48)), rng.choice(tiers)))
    for customers in (batch, single):
        await _process(engine, [_customer_event(k, customers[i], at, t) for i, k, at, t in history])
    # then, late and out-of-order events with ties in business time, in one batch or one by one
    events = [
        (
            rng.randrange(n),
            rng.choices(kinds, weights=[4, 8, 1])[0],
            T0 + timedelta(hours=rng.randrange(48)),
            rng.choice(tiers),
        )
        for _ in range(300)
    ]
    await _process(engine, [_customer_event(k, batch[i], at, t) for i, k, at, t in events])
    for i, k, at, t in events:
        await _process(engine, [_customer_event(k, single[i], at, t)])

    assert await _projection(engine, batch) == await _projection(engine, single)
    states = await _projection(engine, batch)
    assert {(s[0], s[3] is not None) for s in states if s} == {(True, False), (False, True)}
    assert any(s and s[1] for s in states)


async def test_the_rules_of_the_projection(engine: AsyncEngine) -> None:
    late, erased, early_tier, rescored, tie = (uuid.uuid4() for _ in range(5))
    await _process(
        engine,
        [
            _customer_event("registered", late, T0, None),
            _customer_event("tier_changed", late, T0 + timedelta(hours=2), p.Tier.key),
            # an older tier arriving later never replaces the newer one
            _customer_event("tier_changed", late, T0 + timedelta(hours=1), p.Tier.small),
            _customer_event("registered", erased, T0, None),
            _customer_event("tier_changed", erased, T0, p.Tier.key),
            _customer_event("erased", erased, T0 + timedelta(hours=1), None),
            # erasure is final: a registration or tier replayed after it changes nothing
            _customer_event("registered", erased, T0 + timedelta(hours=2), None),
            _customer_event("tier_changed", erased, T0 + timedelta(hours=3), p.Tier.major),
            # a tier before the registration is remembered, but is no customer yet
            _customer_event("tier_changed", early_tier, T0, p.Tier.major),
            _customer_event("tier_changed", rescored, T0, p.Tier.small),
            _customer_event("tier_changed", tie, T0, p.Tier.small),
        ],
    )
    await _process(
        engine,
        [
            _customer_event("tier_changed", rescored, T0 + timedelta(hours=1), p.Tier.major),
            _customer_event("registered", rescored, T0 + timedelta(hours=1), None),
            # the same business time: the event consumed later wins, as within a batch
            _customer_event("tier_changed", tie, T0, p.Tier.major),
            _customer_event("tier_changed", late, T0 + timedelta(hours=2), p.Tier.major),
        ],
    )
    assert await _projection(engine, [late, erased, early_tier, rescored, tie]) == [
        (True, "major", T0 + timedelta(hours=2), None),
        (False, None, T0, T0 + timedelta(hours=1)),
        (False, "major", T0, None),
        (True, "major", T0 + timedelta(hours=1), None),
        (False, "major", T0, None),
    ]


async def test_erasures_in_a_batch_anonymise_only_those_customers_complaints(
    engine: AsyncEngine,
) -> None:
    gone, other, kept = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    complaints = {
        c: [_opened(c, domain.Severity.high, T0) for _ in range(2)] for c in (gone, other, kept)
    }
    await _store(engine, [c for cs in complaints.values() for c in cs], anonymous=set())
    async with engine.begin() as conn:
        for cs in complaints.values():
            for c in cs:
                await conn.execute(
                    text(
                        "INSERT INTO complaint_steps (complaint_id, action, to_status, actor, at, "
                        "note, texts) VALUES (:id, 'acknowledge', 'acknowledged', 'agent', :at, "
                        "'call me on 555', CAST(:texts AS jsonb))"
                    ),
                    {"id": c.complaint_id, "at": T0, "texts": json.dumps({"message": "hi"})},
                )
    erased_at = T0 + timedelta(days=1)
    await _process(
        engine,
        [
            _customer_event("erased", gone, erased_at, None),
            _customer_event("registered", kept, T0, None),
            _customer_event("erased", other, erased_at + timedelta(hours=1), None),
        ],
    )
    rows = {
        r.id: r
        for r in await _rows(
            engine,
            "SELECT c.id, c.customer_id, c.subject, c.order_id, c.next_sla_check_at, "
            "c.anonymised_at, c.version, s.note, s.texts "
            "FROM complaints c JOIN complaint_steps s ON s.complaint_id = c.id",
        )
    }
    for customer, at in ((gone, erased_at), (other, erased_at + timedelta(hours=1))):
        for c in complaints[customer]:
            row = rows[c.complaint_id]
            assert (row.customer_id, row.subject, row.order_id, row.next_sla_check_at) == (
                None,
                None,
                None,
                None,
            )
            assert (row.anonymised_at, row.version, row.note, row.texts) == (at, 2, None, None)
    for c in complaints[kept]:
        row = rows[c.complaint_id]
        assert (row.customer_id, row.version, row.note) == (kept, 1, "call me on 555")
        assert row.texts == {"message": "hi"} and row.anonymised_at is None
