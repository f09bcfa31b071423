"""Low P(alive) scores out of business order, on PostgreSQL through ``apply_events``.

``crm.value.v1`` is a topic of its own: a score can reach the lifecycle before the customer's
first lifecycle event, or after a time rule it would have preceded. A score below the policy's
``model_churn_p_alive`` is remembered until an order after it makes it stale, so that events
arriving later re-decide the history with it; every other score costs what it did (no read of
the customer's facts, no write). Each story is applied twice: one arrival per transaction in
the order given, and in business order; both must end in the same state.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from integration.lifecycle.lifecycle_helpers import day
from integration.lifecycle.test_lifecycle_batches import apply, events_of, sessions, stored
from sqlalchemy import text

from services.lifecycle import service
from shared import db as shared_db
from shared.db import SessionFactory, transaction
from shared.events import CloudEvent

pytestmark = pytest.mark.integration
__all__ = ["sessions"]  # the fixture, shared with the batch tests

Story = list[tuple[str, float, dict[str, Any]]]


async def arrive(sessions: SessionFactory, story: Story) -> uuid.UUID:
    """A new customer's story, one event per transaction in the order given."""
    customer = uuid.uuid4()
    for event in events_of(story, customer):
        await apply(sessions, [event])
    return customer


async def in_business_order(sessions: SessionFactory, story: Story) -> uuid.UUID:
    customer = uuid.uuid4()
    for event in sorted(events_of(story, customer), key=lambda e: e.time):
        await apply(sessions, [event])
    return customer


async def outcome(sessions: SessionFactory, customer: uuid.UUID) -> tuple[Any, ...]:
    rows, history, _, _ = await stored(sessions, [customer])
    row = rows[customer]
    return (
        row["stage"],
        row["reason"],
        row["since"],
        row["decline_due_at"],
        row["churn_due_at"],
        [h[1:4] + h[5:6] for h in history[customer]],
    )


async def early_scores(sessions: SessionFactory, customer: uuid.UUID) -> list[Any]:
    async with transaction(sessions) as session:
        return list(
            (
                await session.execute(
                    text(
                        "SELECT scored_at, p_alive FROM early_low_scores "
                        "WHERE customer_id = :id ORDER BY scored_at"
                    ),
                    {"id": customer},
                )
            ).all()
        )


async def test_a_low_score_before_the_customers_first_event_churns_them_in_business_order(
    sessions: SessionFactory,
) -> None:
    """Defect 1: the score of day 150 arrives first. In business order the customer, bought
    once on day 1, lapsed on day 121 and the score churned them (model_churn) on day 150."""
    story: Story = [
        ("scored", 150, {"p_alive": 0.05}),
        ("registered", 0, {}),
        ("purchase", 1, {"order": "a"}),
        ("scored", 160, {"p_alive": 0.5}),  # an ordinary score later: time rules up to it
    ]
    late = await arrive(sessions, story)
    reference = await in_business_order(sessions, story)

    expected = await outcome(sessions, reference)
    assert expected[:3] == ("churned", "model_churn", day(150))
    assert await outcome(sessions, late) == expected
    assert await early_scores(sessions, late) == []  # taken into the state


async def test_a_low_score_absorbed_by_an_inactivity_churn_counts_when_a_late_purchase_undoes_it(
    sessions: SessionFactory,
) -> None:
    """Defect 2: bought on day 0, the customer is churned by inactivity on day 240 (one
    purchase day: g = 60, churn after 240 idle days) when the score of day 350 arrives (it
    moves nothing). The purchase of day 100 arrives last: with it
    the lapse is on day 300 and the churn not before day 500, so in business order the score
    found the customer declining and churned them (model_churn) on day 350."""
    story: Story = [
        ("registered", 0, {}),
        ("purchase", 0, {"order": "a"}),
        ("scored", 330, {"p_alive": 0.5}),  # time rules up to day 330: lapsing, inactive
        ("scored", 350, {"p_alive": 0.05}),
        ("purchase", 100, {"order": "b"}),
    ]
    late = await arrive(sessions, story)
    reference = await in_business_order(sessions, story)

    expected = await outcome(sessions, reference)
    assert expected[:3] == ("churned", "model_churn", day(350))
    assert (await outcome(sessions, late))[:5] == expected[:5]


async def test_a_late_purchase_does_not_undo_an_inactivity_churn_a_remembered_score_made(
    sessions: SessionFactory,
) -> None:
    """Bought on day 0 (one purchase day: lapse on day 120, churn on day 240), the customer is
    churned by inactivity when the score of day 145 arrives (older than the churn, it moves
    nothing). The purchase of day -70 arrives last: with it g = 70, the churn would not be
    due before day 280, which alone undoes the inactivity churn; but the lapse was on day 140,
    so in business order the score churned the customer on day 145: they stay churned."""
    story: Story = [
        ("registered", -80, {}),
        ("purchase", 0, {"order": "a"}),
        ("scored", 250, {"p_alive": 0.5}),  # time rules up to day 250: lapsing, inactive
        ("scored", 145, {"p_alive": 0.05}),
        ("purchase", -70, {"order": "b"}),
    ]
    late = await arrive(sessions, story)
    reference = await in_business_order(sessions, story)

    assert (await outcome(sessions, reference))[:3] == ("churned", "model_churn", day(145))
    assert (await outcome(sessions, late))[0] == "churned"


async def test_a_late_purchase_that_moves_a_lapse_before_a_remembered_score_churns(
    sessions: SessionFactory,
) -> None:
    """The score of day 110 is older than the lapse of day 120 it arrives after: in order it
    found a growing customer. The purchase of day -5 arriving last (g = 5) puts the lapse on
    day 60: in business order the score churned the customer on day 110. The decline stands
    (a change is never dated before the current stage), and the churn follows at its start."""
    story: Story = [
        ("registered", -10, {}),
        ("purchase", 0, {"order": "a"}),
        ("scored", 125, {"p_alive": 0.5}),  # time rules up to day 125: lapsing on day 120
        ("scored", 110, {"p_alive": 0.05}),
        ("purchase", -5, {"order": "b"}),
    ]
    late = await arrive(sessions, story)
    reference = await in_business_order(sessions, story)

    assert (await outcome(sessions, reference))[:3] == ("churned", "model_churn", day(110))
    assert (await outcome(sessions, late))[:3] == ("churned", "model_churn", day(120))


async def test_only_low_scores_are_remembered_and_an_order_after_them_forgets_them(
    sessions: SessionFactory,
) -> None:
    customer = uuid.uuid4()
    await apply(sessions, events_of([("scored", 10, {"p_alive": 0.5})], customer))
    assert await early_scores(sessions, customer) == []  # an ordinary score: nothing kept
    await apply(sessions, events_of([("scored", 10, {"p_alive": 0.05})], customer))
    assert await early_scores(sessions, customer) == [(day(10), 0.05)]

    await apply(sessions, events_of([("purchase", 1, {"order": "a"})], customer))
    rows, _, _, _ = await stored(sessions, [customer])
    assert rows[customer]["stage"] == "growth"
    assert rows[customer]["facts"]["low_scores"] == [[day(10).isoformat(), 0.05]]
    assert await early_scores(sessions, customer) == []

    await apply(sessions, events_of([("purchase", 20, {"order": "b"})], customer))
    rows, _, _, _ = await stored(sessions, [customer])
    assert "low_scores" not in rows[customer]["facts"]  # stale: an order after it


async def test_erasure_deletes_the_remembered_scores(sessions: SessionFactory) -> None:
    unknown, known = uuid.uuid4(), uuid.uuid4()
    await apply(sessions, events_of([("scored", 10, {"p_alive": 0.01})], unknown))
    await apply(
        sessions,
        events_of([("purchase", 1, {"order": "a"}), ("scored", 10, {"p_alive": 0.01})], known),
    )
    assert await early_scores(sessions, unknown) != []
    await apply(
        sessions, events_of([("erased", 11, {})], unknown) + events_of([("erased", 11, {})], known)
    )
    assert await early_scores(sessions, unknown) == []
    rows, _, erased, _ = await stored(sessions, [unknown, known])
    assert rows == {} and erased == {unknown, known}


async def test_ordinary_scores_cost_no_more_statements_than_before(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores at or above the threshold, for known and unknown customers: the policy and
    tombstones, the rows (their facts unread), nothing else; a customer with remembered low
    scores whose batch has only ordinary ones is no exception."""
    growing, remembering, unknown = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await apply(
        sessions,
        events_of([("purchase", 1, {"order": "a"})], growing)
        + events_of(
            [("purchase", 1, {"order": "a"}), ("scored", 2, {"p_alive": 0.01})], remembering
        ),
    )
    statements: list[str] = []
    lock_rows: list[Any] = []
    connection = shared_db.driver_connection

    async def spying(session: Any) -> Any:
        db = await connection(session)

        class Spy:
            async def execute(self, sql: str, *args: Any) -> Any:
                statements.append(sql)
                return await db.execute(sql, *args)

            async def fetchrow(self, sql: str, *args: Any) -> Any:
                statements.append(sql)
                return await db.fetchrow(sql, *args)

            async def fetch(self, sql: str, *args: Any) -> Any:
                statements.append(sql)
                found = await db.fetch(sql, *args)
                if sql == service._LOCK_ROWS_SQL:
                    lock_rows.extend(found)
                return found

        return Spy()

    monkeypatch.setattr(service, "driver_connection", spying)
    scores: list[CloudEvent[Any]] = [
        *events_of([("scored", 3, {"p_alive": 0.5})], growing),
        *events_of([("scored", 3, {"p_alive": 0.1})], remembering),  # the threshold: not low
        *events_of([("scored", 3, {"p_alive": 0.9})], unknown),
    ]
    assert await apply(sessions, scores) == []
    assert statements == [
        service._SHARED_POLICY_LOCK_SQL,
        service._BATCH_CONTEXT_SQL,
        service._LOCK_ROWS_SQL,
    ]
    assert [r["facts"] for r in lock_rows] == [None, None]
