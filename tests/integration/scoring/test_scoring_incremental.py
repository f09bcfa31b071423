"""Events re-score their customer at once: purchases, complaints, referrals, erasure."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from integration.scoring.conftest import T0, Scoring, purchase_event
from sqlalchemy.ext.asyncio import async_sessionmaker
from support import eventually

from services.scoring import service, values
from shared.events import new_event, parse
from shared.events import payloads as p
from shared.events import registry as ev

pytestmark = pytest.mark.integration


def _lowest_scored(values: list[dict[str, Any]]) -> dict[str, Any]:
    return min((v for v in values if v["score"] is not None), key=lambda v: v["score"])


async def test_a_purchase_moves_aggregates_rfm_and_score_within_a_second(scoring: Scoring) -> None:
    values = [await scoring.value(c) for c in scoring.population[:60]]
    before = _lowest_scored([v for v in values if v is not None])
    customer = uuid.UUID(before["customer_id"])
    at = T0 + timedelta(hours=2)
    purchase = purchase_event(customer, at, "900.00", categories=("garden", "toys"))

    started = time.monotonic()
    await scoring.publish(purchase)
    after = await scoring.value_when(
        customer,
        lambda v: v["aggregates"]["orders"] == before["aggregates"]["orders"] + 1,
        what="purchase applied",
    )
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"value moved after {elapsed:.2f}s"
    aggregates = after["aggregates"]
    assert aggregates["last_purchase_at"] == at.isoformat().replace("+00:00", "Z")
    assert aggregates["purchase_days"] == before["aggregates"]["purchase_days"] + 1
    assert float(aggregates["net_revenue"]) == pytest.approx(
        float(before["aggregates"]["net_revenue"]) + 900.0
    )
    assert after["rfm"]["recency"] == 5 and after["rfm"]["monetary"] >= before["rfm"]["monetary"]
    assert after["score"] > before["score"] + 1
    assert after["model_version"] == before["model_version"]
    assert after["explanation"]["published_because"][-1]["event_id"] == str(purchase.id)

    events = await scoring.value_events(customer, want=2)
    scored = [e for e in events if e["type"] == ev.VALUE_SCORED]
    # What consumers get parses against the contract's payload.
    assert parse(orjson.dumps(scored[-1])).data.customer_id == customer
    assert scored[-1]["data"]["score"] == pytest.approx(after["score"])
    assert scored[-1]["time"].startswith(at.isoformat()[:19])
    assert scored[-1]["data"]["tier"] == after["tier"]
    assert scored[-1]["data"]["rfm"]["segment"] == after["rfm"]["segment"]


async def test_a_complaint_closed_with_satisfaction_one_lowers_attitudinal_loyalty(
    scoring: Scoring,
) -> None:
    customer = scoring.population[3]
    baseline = await scoring.value(customer)
    assert baseline is not None and baseline["loyalty"]["attitudinal"] == 50.0  # CSAT unknown
    complaint_id = uuid.uuid4()

    def complaint(type_: str, data: p.ComplaintPayload, hours: int) -> Any:
        return new_event(
            type=type_,
            source="/crm/complaints",
            subject=customer,
            time=T0 + timedelta(hours=hours),
            data=data,
        )

    common = {"complaint_id": complaint_id, "customer_id": customer, "severity": p.Severity.high}
    await scoring.publish(
        complaint(
            ev.COMPLAINT_OPENED,
            p.ComplaintOpened(
                **common,
                channel=p.ComplaintChannel.email,
                category=p.ComplaintCategory.delivery,
                first_response_due=T0 + timedelta(hours=5),
                resolution_due=T0 + timedelta(hours=73),
            ),
            1,
        )
    )
    opened = await scoring.value_when(customer, lambda v: v["aggregates"]["open_complaints"] == 1)
    assert opened["loyalty"]["attitudinal"] == 40.0  # the open-complaint penalty

    await scoring.publish(
        complaint(
            ev.COMPLAINT_RESOLVED,
            p.ComplaintResolved(**common, root_cause="carrier", resolution_met=True),
            20,
        ),
        complaint(ev.COMPLAINT_CLOSED, p.ComplaintClosed(**common, satisfaction=1), 30),
    )
    closed = await scoring.value_when(
        customer, lambda v: v["aggregates"]["closed_complaints_with_csat"] == 1
    )
    assert closed["aggregates"]["open_complaints"] == 0
    assert closed["loyalty"]["satisfaction"] == 0.0
    assert closed["loyalty"]["attitudinal"] == 0.0
    assert closed["loyalty"]["index"] < baseline["loyalty"]["index"]
    assert closed["loyalty"]["jones_sasser"] in ("hostage", "defector")


async def test_a_referral_counts_for_the_referrer(scoring: Scoring) -> None:
    referrer = scoring.population[5]
    before = await scoring.value(referrer)
    assert before is not None
    newcomer = uuid.uuid4()
    await scoring.publish(
        new_event(
            type=ev.CUSTOMER_REGISTERED,
            source="/crm/profile",
            subject=newcomer,
            time=T0 + timedelta(hours=3),
            data=p.CustomerRegistered(
                customer_id=newcomer, kind=p.CustomerKind.person, referred_by=referrer
            ),
        )
    )
    after = await scoring.value_when(
        referrer, lambda v: v["aggregates"]["referrals"] == before["aggregates"]["referrals"] + 1
    )
    assert after["loyalty"]["behavioural"] > before["loyalty"]["behavioural"]
    registered = await scoring.value_when(newcomer, lambda v: True)
    assert registered["score"] is None and registered["tier"] is None  # no purchase, no value


async def test_the_same_purchase_recorded_twice_counts_once(scoring: Scoring) -> None:
    customer = uuid.uuid4()
    purchase_id = uuid.uuid4()
    first = purchase_event(customer, T0 - timedelta(days=3), "40.00", purchase_id=purchase_id)
    again = purchase_event(customer, T0 - timedelta(days=3), "40.00", purchase_id=purchase_id)
    later = purchase_event(customer, T0 - timedelta(days=1), "60.00")
    await scoring.publish(first, again, later)
    value = await scoring.value_when(customer, lambda v: v["aggregates"]["orders"] == 2)
    assert value["aggregates"]["net_revenue"] == "100.00"
    assert value["aggregates"]["purchase_days"] == 2


async def test_refunds_lower_net_revenue_and_credit(scoring: Scoring) -> None:
    customer = uuid.uuid4()
    bought = purchase_event(customer, T0 - timedelta(days=10), "200.00")
    await scoring.publish(bought, purchase_event(customer, T0 - timedelta(days=5), "100.00"))
    before = await scoring.value_when(customer, lambda v: v["aggregates"]["orders"] == 2)
    refund = new_event(
        type=ev.PURCHASE_REFUNDED,
        source="/crm/profile",
        subject=customer,
        time=T0 - timedelta(days=4),
        data=p.PurchaseRefunded(
            customer_id=customer,
            purchase_id=bought.data.purchase_id,
            order_id=bought.data.order_id,
            refund_id=uuid.uuid4(),
            amount="150.00",  # type: ignore[arg-type]
            refunded_total="150.00",  # type: ignore[arg-type]
            order_amount="200.00",  # type: ignore[arg-type]
            currency="USD",
            chargeback=True,
        ),
    )
    await scoring.publish(refund)
    after = await scoring.value_when(customer, lambda v: v["aggregates"]["chargebacks"] == 1)
    assert after["aggregates"]["refunded_revenue"] == "150.00"
    assert after["aggregates"]["net_revenue"] == "150.00"
    assert after["dimensions"]["credit"] < before["dimensions"]["credit"]


async def test_erasure_removes_the_customer_and_late_events_do_not_bring_them_back(
    scoring: Scoring,
) -> None:
    customer = uuid.uuid4()
    await scoring.publish(purchase_event(customer, T0 - timedelta(days=2), "75.00"))
    await scoring.value_when(customer, lambda v: v["aggregates"]["orders"] == 1)

    late = purchase_event(customer, T0 + timedelta(minutes=5), "10.00")
    await scoring.publish(
        new_event(
            type=ev.CUSTOMER_ERASED,
            source="/crm/profile",
            subject=customer,
            time=T0,
            data=p.CustomerErased(customer_id=customer),
        ),
        late,
    )

    async def late_event_processed() -> bool:
        rows = await scoring.sql("SELECT count(*) FROM inbox WHERE event_id = :id", id=late.id)
        return bool(rows[0][0])

    await eventually(late_event_processed, timeout=20, what="late purchase handled")
    assert await scoring.value(customer) is None
    for table in ("purchases", "refunds", "complaints", "customer_values"):
        rows = await scoring.sql(f"SELECT count(*) FROM {table} WHERE customer_id = :c", c=customer)
        assert rows[0][0] == 0, table
    response = await scoring.client.get(f"/v1/customers/{customer}/value", headers={})
    assert response.status_code == 401


def _mixed_events(ids: dict[str, uuid.UUID]) -> tuple[list[Any], list[Any]]:
    """A customer's history, then a batch touching several customers the awkward ways: the same
    purchase twice (two event ids), a refund before its purchase, a purchase in another
    currency, a referral, complaint steps out of order, more categories than the fact slots."""
    a, b, c, d = ids["a"], ids["b"], ids["c"], ids["d"]
    day = timedelta(days=1)
    history = [purchase_event(a, T0 - 40 * day, "80.00", categories=("books",))]
    first = purchase_event(
        a, T0 - 3 * day, "120.00", categories=("books", "music", "garden", "toys", "sports")
    )
    again = purchase_event(a, T0 - 3 * day, "120.00", purchase_id=first.data.purchase_id)
    refunded = purchase_event(b, T0 - 2 * day, "300.00")
    refund = new_event(
        type=ev.PURCHASE_REFUNDED,
        source="/crm/profile",
        subject=b,
        time=T0 - day,
        data=p.PurchaseRefunded(
            customer_id=b,
            purchase_id=refunded.data.purchase_id,
            order_id=refunded.data.order_id,
            refund_id=uuid.uuid4(),
            amount=Decimal("100.00"),
            refunded_total=Decimal("100.00"),
            order_amount=Decimal("300.00"),
            currency="USD",
            chargeback=True,
        ),
    )
    common = {"complaint_id": uuid.uuid4(), "customer_id": d, "severity": p.Severity.low}

    def complaint(type_: str, data: p.ComplaintPayload, hours: int) -> Any:
        return new_event(
            type=type_, source="/crm/complaints", subject=d, time=T0 + hours * HOUR, data=data
        )

    batch = [
        first,
        refund,  # before the purchase it refunds
        new_event(
            type=ev.CUSTOMER_REGISTERED,
            source="/crm/profile",
            subject=c,
            time=T0 - day,
            data=p.CustomerRegistered(customer_id=c, kind=p.CustomerKind.person, referred_by=a),
        ),
        refunded,
        complaint(
            ev.COMPLAINT_OPENED,
            p.ComplaintOpened(
                **common,
                channel=p.ComplaintChannel.web,
                category=p.ComplaintCategory.billing,
                first_response_due=T0 + 5 * HOUR,
                resolution_due=T0 + 50 * HOUR,
            ),
            1,
        ),
        purchase_event(d, T0 - 5 * day, "45.00", categories=("toys",)),
        again,
        complaint(ev.COMPLAINT_CLOSED, p.ComplaintClosed(**common, satisfaction=2), 9),
        # An older step arriving after the closing does not reopen it.
        complaint(
            ev.COMPLAINT_ACKNOWLEDGED, p.ComplaintAcknowledged(**common, first_response_met=True), 2
        ),
        purchase_event(b, T0 - day, "70.00", currency="EUR"),
        purchase_event(a, T0 - day, "15.00", categories=("kitchen",)),
    ]
    return history, batch


HOUR = timedelta(hours=1)
# What a value is made of (not how often it was published nor its facts version).
_VALUE = (
    "as_of, model_version, orders, purchase_days, first_purchase_at, last_purchase_at, "
    "gross_revenue, refunded_revenue, net_revenue, net_revenue_365d, revenue_last_180d, "
    "revenue_prior_180d, chargebacks, categories, referrals, open_complaints, "
    "closed_complaints_with_csat, mean_csat, score, tier, dim_current, dim_future, dim_credit, "
    "dim_loyalty, dim_growth, rfm_recency, rfm_frequency, rfm_monetary, rfm_segment, "
    "behavioural_loyalty, attitudinal_loyalty, satisfaction, loyalty_index, dick_basu, "
    "jones_sasser, p_alive, expected_purchases, expected_spend, clv"
)


async def _state(scoring: Scoring, ids: dict[str, uuid.UUID]) -> dict[str, Any]:
    """Per customer: the value row (what was published too, the causes by type) and ledgers."""
    found: dict[str, Any] = {}
    for name, customer in ids.items():
        (value,) = await scoring.sql(
            f"SELECT {_VALUE}, facts_version, published_score, published_tier, "
            "published_dick_basu, published_jones_sasser, published_at, "
            "jsonb_path_query_array(published_because, '$[*].type') AS published_because, "
            "jsonb_path_query_array(pending_causes, '$[*].type') AS pending_causes "
            "FROM customer_values WHERE customer_id = :c",
            c=customer,
        )
        ledgers = await scoring.sql(
            "SELECT (SELECT array_agg((purchased_at, amount, currency, categories)::text "
            "ORDER BY purchased_at, currency) FROM purchases WHERE customer_id = :c), "
            "(SELECT array_agg((refunded_at, amount, chargeback)::text) FROM refunds "
            "WHERE customer_id = :c), "
            "(SELECT array_agg((opened_at, closed_at, satisfaction, status, status_at)::text) "
            "FROM complaints WHERE customer_id = :c), "
            "(SELECT count(*) FROM referrals WHERE referrer_id = :c)",
            c=customer,
        )
        found[name] = {"value": dict(value._mapping), "ledgers": tuple(ledgers[0])}
    return found


def _applier(scoring: Scoring) -> Any:
    sessions = async_sessionmaker(scoring.engine, expire_on_commit=False)

    async def apply(events: list[Any]) -> list[Any]:
        async with sessions() as session, session.begin():
            return await service.apply_events(session, events, settings=scoring.settings)

    return apply


async def test_a_batch_leaves_what_its_events_one_at_a_time_leave(scoring: Scoring) -> None:
    """The batch path (set-based, each customer re-scored once) against one transaction per
    event: the same ledgers and values; the batch bumps each facts version once and publishes
    each scored customer once."""
    apply = _applier(scoring)
    names = ("a", "b", "c", "d")
    batched = {name: uuid.uuid4() for name in names}
    singly = {name: uuid.uuid4() for name in names}

    history, batch = _mixed_events(batched)
    for event in history:
        await apply([event])
    published = await apply(batch)
    history, batch = _mixed_events(singly)
    for event in [*history, *batch]:
        await apply([event])

    in_batch, one_by_one = await _state(scoring, batched), await _state(scoring, singly)
    # Once per batch: one facts version more for each customer (a's history had its own).
    assert {name: in_batch[name]["value"].pop("facts_version") for name in names} == {
        "a": 2,
        "b": 1,
        "c": 1,
        "d": 1,
    }
    # One at a time: one per event that touched the customer.
    assert {name: one_by_one[name]["value"].pop("facts_version") for name in names} == {
        "a": 5,
        "b": 3,
        "c": 1,
        "d": 4,
    }
    for name in names:
        for key in ("published_because", "pending_causes"):  # how many events: not alike
            in_batch[name]["value"].pop(key), one_by_one[name]["value"].pop(key)
        assert in_batch[name]["value"] == one_by_one[name]["value"], name
        assert in_batch[name]["ledgers"] == one_by_one[name]["ledgers"], name
    a, b, d = in_batch["a"]["value"], in_batch["b"]["value"], in_batch["d"]["value"]
    assert a["orders"] == 3 and a["referrals"] == 1  # the purchase seen twice counts once
    assert b["refunded_revenue"] == Decimal("100.0000") and b["chargebacks"] == 1
    assert d["closed_complaints_with_csat"] == 1 and d["open_complaints"] == 0
    scored = [e.subject for e in published if e.type == ev.VALUE_SCORED]
    assert sorted(scored) == sorted(str(batched[name]) for name in ("a", "b", "d"))


async def test_values_bound_to_arrays_are_those_staged_by_copy(
    scoring: Scoring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler batch is written through array-bound statements, a large one through the
    COPY-staged table: the same events leave the same values, publications and causes."""
    apply = _applier(scoring)
    names = ("a", "b", "c", "d")
    bound = {name: uuid.uuid4() for name in names}
    staged = {name: uuid.uuid4() for name in names}
    published: dict[str, list[Any]] = {}
    for label, ids, limit in (("bound", bound, values.ARRAY_BOUND_LIMIT), ("staged", staged, 0)):
        monkeypatch.setattr(values, "ARRAY_BOUND_LIMIT", limit)
        history, batch = _mixed_events(ids)
        for event in history:
            await apply([event])
        published[label] = await apply(batch)

    by_arrays, by_copy = await _state(scoring, bound), await _state(scoring, staged)
    assert by_arrays == by_copy
    assert by_arrays["a"]["value"]["orders"] == 3
    assert _documents(published["bound"], bound) == _documents(published["staged"], staged)
    assert len(published["bound"]) >= 3
    # Both wrote their events to the outbox, which the service's relay published.
    wanted = {e.event_id for e in [*published["bound"], *published["staged"]]}
    assert await scoring.relayed(wanted) == wanted


def _documents(events: list[Any], ids: dict[str, uuid.UUID]) -> list[dict[str, Any]]:
    """The events' documents without their ids, customers by name (in name order)."""
    names = {str(customer): name for name, customer in ids.items()}
    documents = []
    for event in events:
        document = orjson.loads(event.payload)
        del document["id"]
        document["subject"] = document["data"]["customer_id"] = names[document["subject"]]
        documents.append(document)
    return sorted(documents, key=lambda d: (d["subject"], d["type"]))
