"""Fuzzing the Kafka edge: hostile CloudEvents through each service's real consumers (those its
worker starts, with their handlers, decoders and locks, in a real `ConsumerRunner` on the
service's real PostgreSQL database), as `test_fuzz_<service>.py` fuzz the HTTP edge.

Every example is one to three batches (`batches`, from the published JSON Schemas with hostile
values: see `event_edge`; for profile, orders from other systems too). Each consumer must:

- dead-letter what it refuses with the reason naming the field (or, for the services' own
  rules, a domain error saying why), and apply nothing of it;
- apply every other event of the batch (one poison event does not hold the others back:
  the runner redoes a failed batch message by message) — nothing is silently dropped;
- and, having accepted hostile events, still work: the service's reads of those customers and
  its population-wide work (scoring's recompute, pyramid and Pareto; lifecycle's evaluation and
  funnel; complaints' analytics, SLA check and intake; profile's 360 view and search) answer
  without a server error, NaN or infinity.

The explicit cases below pin what the fuzzer found. `CRM_FUZZ_EVENT_EXAMPLES` (default 25) sets
the examples per service; derandomized unless `CRM_FUZZ_RANDOM=1`. Each example uses fresh
customers and deletes their rows afterwards, so examples do not see each other's data.
Dead letters are recorded, not sent (`event_edge.Edge`): the broker's part of the path is
tests/integration/shared/test_messaging.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from hypothesis import given, note
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import SIMULATION_AHEAD_SECONDS, auth

from fuzz.event_edge import (
    T0,
    DeadLetter,
    Draw,
    Edge,
    Sent,
    consumers_of,
    hostile_event,
    hostile_order,
    names_a_field,
    record,
    resend,
    sent_record,
)
from fuzz.fuzzing import fuzz_settings
from shared.clock import FixedClock
from shared.db import create_engine, migrate, session_factory
from shared.devstack import Broker, PostgresServer
from shared.events import EVENTS, new_event
from shared.events import payloads as p
from shared.events import registry as ev
from shared.runtime import Role

pytestmark = pytest.mark.integration

T = TypeVar("T")
EXAMPLES = int(os.environ.get("CRM_FUZZ_EVENT_EXAMPLES", "25"))
FUZZ_SETTINGS = fuzz_settings(EXAMPLES)
SERVICES = ("profile", "lifecycle", "complaints", "scoring")
ALL = auth()


class Portal:
    """An event loop in a thread of its own: hypothesis runs its examples synchronously, and
    the services' engines and apps live on this loop for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T], timeout: float = 120) -> T:
        async def call() -> T:
            return await awaitable

        future: Future[T] = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Service:
    name: str
    settings: Any
    engine: AsyncEngine
    client: httpx.AsyncClient
    app: FastAPI
    edges: list[Edge] = field(default_factory=list)

    def types(self) -> set[str]:
        return {t for edge in self.edges for t in edge.runner.handlers if t in EVENTS}

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(statement), params)).all())

    async def exec(self, statement: str, **params: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text(statement), params)


@dataclass
class Stack:
    portal: Portal
    services: dict[str, Service]


def _settings(service: str, url: str, kafka_broker: Broker) -> Any:
    import importlib

    module = importlib.import_module(f"services.{service}.config")
    cls = next(
        v for k, v in vars(module).items() if k.endswith("Settings") and k != "ServiceSettings"
    )
    extra: dict[str, Any] = {"nightly_recompute": False} if service == "scoring" else {}
    return cls(
        database_url=url,
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        kafka_enable_idempotence="true" if kafka_broker.supports_idempotence else "false",
        crm_env="test",
        log_format="console",
        log_level="WARNING",
        max_future_as_of_seconds=SIMULATION_AHEAD_SECONDS,  # it evaluates 800 days on
        **extra,
    )


async def _start(service: str, url: str, kafka_broker: Broker) -> tuple[Service, Any]:
    import importlib

    settings = _settings(service, url, kafka_broker)
    clock = FixedClock(T0)
    main = importlib.import_module(f"services.{service}.main")
    app = main.create_app(role=Role.api, settings=settings, configure_logs=False, clock=clock)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    engine = create_engine(url, pool_size=2)
    built = Service(service, settings, engine, client, app)
    sessions = session_factory(engine)
    built.edges = [
        Edge.of(service, spec, sessions=sessions, settings=settings)
        for spec in consumers_of(service, settings, clock)
    ]
    return built, lifespan


@pytest.fixture(scope="module")
def stack(postgres_server: PostgresServer, kafka_broker: Broker) -> Iterator[Stack]:
    urls = {}
    suffix = uuid.uuid4().hex[:6]
    for service in SERVICES:
        name = f"crm_{service}_ev{suffix}"
        postgres_server.create_database(name)
        urls[service] = postgres_server.url(name)
        migrate(service, urls[service])
    portal = Portal()
    started = {
        service: portal.run(_start(service, url, kafka_broker)) for service, url in urls.items()
    }
    services = {service: built for service, (built, _) in started.items()}
    try:
        portal.run(_seed_scoring(services["scoring"]))
        yield Stack(portal, services)
    finally:
        for built, lifespan in started.values():
            portal.run(built.client.aclose())
            portal.run(lifespan.__aexit__(None, None, None))
            portal.run(built.engine.dispose())
        portal.close()


async def _seed_scoring(scoring: Service) -> None:
    """A customer base to fit the value models on (the recompute checks need a fitted model)."""
    # Drawn from the models' own processes (as tests/integration/scoring does): purchase rate
    # ~ Gamma(0.9, 25 days), dropout ~ Beta(0.8, 3) after each repeat, spend ~ Gamma(4, nu)
    # with nu ~ Gamma(3, 60): BG/NBD and Gamma-Gamma are identified on it.
    rng = np.random.default_rng(2026)
    events = []
    for n in range(200):
        customer = uuid.uuid4()
        rate, dropout = rng.gamma(0.9, 1 / 25), rng.beta(0.8, 3.0)
        spend_rate, age = rng.gamma(3.0, 1 / 60), rng.uniform(20, 365)
        days = [0.0]
        while len(days) < 50 and days[-1] + (gap := rng.exponential(1 / rate)) <= age:
            days.append(days[-1] + gap)
            if rng.random() < dropout:
                break
        for k, day in enumerate(days):
            amount = Decimal(f"{max(rng.gamma(4.0, 1 / spend_rate), 1.0):.2f}")
            events.append(
                new_event(
                    type=ev.PURCHASE_RECORDED,
                    source="/crm/profile",
                    subject=customer,
                    time=T0 - timedelta(days=1 + age - day),
                    data=p.PurchaseRecorded(
                        customer_id=customer,
                        purchase_id=uuid.uuid4(),
                        order_id=f"seed-{n}-{k}",
                        amount=amount,
                        currency="USD",
                        items=[
                            p.PurchaseItem(sku="s", category="c", quantity=1, unit_price=amount)
                        ],
                    ),
                )
            )
    (edge,) = scoring.edges
    dead = await edge.deliver(
        [record(ev.topic_for(e.type), e.subject.encode(), e.to_bytes()) for e in events]
    )
    assert dead == []
    await _recompute(scoring)
    model = (await scoring.client.get("/v1/value/model", headers=ALL)).json()["current"]
    assert model["fit_error"] is None and model["gamma_gamma"] is not None, model


# --- the checks --------------------------------------------------------------------------------


def _no_server_error(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:2000]}"
    assert "NaN" not in response.text and "Infinity" not in response.text, (what, response.text)


async def _recompute(scoring: Service) -> None:
    from services.scoring import recompute

    response = await scoring.client.post(
        "/v1/value/recompute", json={"as_of": T0.isoformat()}, headers=ALL
    )
    _no_server_error(response, "POST /v1/value/recompute")
    assert response.status_code == 202, response.text
    sessions = session_factory(scoring.engine)
    await recompute.run_pending_recomputes(
        sessions, settings=scoring.settings, clock=FixedClock(T0)
    )
    run = await scoring.client.get(response.headers["Location"], headers=ALL)
    assert run.status_code == 200 and run.json()["status"] == "succeeded", run.text


async def _scoring_works(scoring: Service, customers: Sequence[uuid.UUID]) -> None:
    for customer in customers:
        _no_server_error(
            await scoring.client.get(f"/v1/customers/{customer}/value", headers=ALL), "value"
        )
    _no_server_error(await scoring.client.get("/v1/value/pyramid", headers=ALL), "pyramid")
    _no_server_error(await scoring.client.get("/v1/value/pareto", headers=ALL), "pareto")
    _no_server_error(await scoring.client.get("/v1/value/model", headers=ALL), "model")
    await _recompute(scoring)
    for customer in customers:
        _no_server_error(
            await scoring.client.get(f"/v1/customers/{customer}/value", headers=ALL),
            "value after the recompute",
        )


async def _lifecycle_works(lifecycle: Service, customers: Sequence[uuid.UUID]) -> None:
    client = lifecycle.client
    for customer in customers:
        _no_server_error(
            await client.get(f"/v1/customers/{customer}/lifecycle", headers=ALL), "lifecycle"
        )
    _no_server_error(await client.get("/v1/lifecycle/distribution", headers=ALL), "funnel")
    for as_of in (T0, T0 + timedelta(days=800)):
        evaluated = await client.post(
            "/v1/lifecycle/evaluate", json={"as_of": as_of.isoformat()}, headers=ALL
        )
        _no_server_error(evaluated, f"evaluate as of {as_of}")
        assert evaluated.status_code == 200, evaluated.text
    for customer in customers:
        _no_server_error(
            await client.get(f"/v1/customers/{customer}/lifecycle", headers=ALL),
            "lifecycle after the evaluation",
        )


async def _complaints_work(complaints: Service, customers: Sequence[uuid.UUID]) -> None:
    client = complaints.client
    for customer in customers:
        opened = await client.post(
            "/v1/complaints",
            json={
                "customer_id": str(customer),
                "channel": "email",
                "category": "delivery",
                "severity": "high",
                "subject": "Late",
                "description": "Still waiting",
            },
            headers=ALL,
        )
        _no_server_error(opened, "intake")
        listed = await client.get(
            "/v1/complaints", params={"customer_id": str(customer)}, headers=ALL
        )
        _no_server_error(listed, "list")
    _no_server_error(await client.get("/v1/complaints/analytics", headers=ALL), "analytics")
    checked = await client.post(
        "/v1/complaints/sla/evaluate",
        json={"as_of": (T0 + timedelta(days=30)).isoformat()},
        headers=ALL,
    )
    _no_server_error(checked, "SLA check")


async def _profile_works(profile: Service, customers: Sequence[uuid.UUID]) -> None:
    client = profile.client
    for customer in customers:
        view = await client.get(f"/v1/customers/{customer}/360", headers=ALL)
        _no_server_error(view, "360")
        assert view.status_code == 200, view.text
    for query in ({"stage": "growth"}, {"tier": "key"}, {"tier": "small"}, {"stage": "decline"}):
        _no_server_error(await client.get("/v1/customers", params=query, headers=ALL), "search")


WORKS: dict[str, Callable[[Service, Sequence[uuid.UUID]], Awaitable[None]]] = {
    "scoring": _scoring_works,
    "lifecycle": _lifecycle_works,
    "complaints": _complaints_work,
    "profile": _profile_works,
}


async def _customers(service: Service, n: int) -> list[uuid.UUID]:
    """Fresh customers; profile's are registered (its 360 view is of its own customers)."""
    if service.name != "profile":
        return [uuid.uuid4() for _ in range(n)]
    ids = []
    for _ in range(n):
        response = await service.client.post(
            "/v1/customers",
            json={"name": "Fuzz", "email": f"{uuid.uuid4().hex[:12]}@example.com"},
            headers=ALL,
        )
        assert response.status_code == 201, response.text
        ids.append(uuid.UUID(response.json()["id"]))
    return ids


async def _inbox(service: Service, ids: Sequence[str]) -> set[str]:
    rows = await service.sql(
        "SELECT event_id::text FROM inbox WHERE event_id::text = ANY(:ids)", ids=list(ids)
    )
    return {row[0] for row in rows}


async def _forget(service: Service, ids: set[uuid.UUID]) -> None:
    """Delete every row about these customers (examples must not see each other's data)."""
    tables = await service.sql(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND column_name = 'customer_id' "
        "AND table_name IN (SELECT table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE')"
    )
    for (table,) in tables:
        await service.exec(f'DELETE FROM "{table}" WHERE customer_id = ANY(:ids)', ids=list(ids))


def _uuids_in(sent: Sequence[Sent]) -> set[uuid.UUID]:
    found: set[uuid.UUID] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and len(value) == 36:
            with contextlib.suppress(ValueError):
                found.add(uuid.UUID(value))

    for one in sent:
        walk(one.document)
    return found


#: Dead letters' error types that are refusals with a reason: unreadable (the contract's own
#: checks), and the services' domain rules (a refund of nothing, a refund beyond the order, an
#: order_id another customer holds, sums past Money).
DOMAIN_REFUSALS = {
    "unreadable",
    "InvalidLifecycleEventError",
    "RuleViolation",
    "RefundExceedsPaid",
    "InvalidInput",
    "Conflict",
    "NotFound",
    "MoneyLimitExceeded",
    "UnresolvableOrder",  # profile's ingest: an order naming no customer it knows or can make
}


@dataclass
class Outcome:
    dead: list[DeadLetter]
    applied: set[str]


async def deliver_and_check(service: Service, sent: Sequence[Sent]) -> Outcome:
    """Deliver one batch to every consumer of the service and check the contract of the edge."""
    records = [sent_record(s) for s in sent]
    dead: list[DeadLetter] = []
    for edge in service.edges:
        dead += await edge.deliver(records)
    handled = service.types()
    ids = [s.id for s in sent if s.id]
    applied = await _inbox(service, [i for i in ids if isinstance(i, str)])
    dead_values = {d.value for d in dead}
    for letter in dead:
        assert letter.error_type in DOMAIN_REFUSALS, (
            f"{service.name} accepted the event and then failed on it "
            f"({letter.error_type}): {letter.error}\n{letter.value!r:.3000}"
        )
        if letter.error_type == "unreadable":
            assert names_a_field(letter.error), f"dead letter without a field: {letter.error}"
    # An id is one event: the runner applies or dead-letters its first readable copy in the
    # batch and drops the later ones (a redelivery; with another payload, a producer's bug).
    dead_ids = {one.id for one in sent if one.value in dead_values}
    kept = {one.id for one in sent if one.value not in dead_values}
    subscribed = {t for edge in service.edges for t in edge.topics}
    for one in sent:
        if one.value in dead_values:
            assert one.id not in applied or one.id in kept, f"dead-lettered yet applied: {one.id}"
        elif one.event_type in handled and one.topic in subscribed and one.id:
            assert one.id in applied or one.id in dead_ids, (
                f"neither applied nor dead-lettered: {one.value!r:.3000}"
            )
    return Outcome(dead, applied)


def batches(service: str, types: set[str]) -> st.SearchStrategy[list[list[Sent]]]:
    """One to three batches of one to eight events about two customers, a hostile value in
    about half of them; sometimes an event's id again with another payload; for profile,
    orders from other systems (`crm.ingest.orders.v1`) among them."""

    @st.composite
    def build(draw: st.DrawFn) -> list[list[Sent]]:
        how = Draw(
            customers=[uuid.UUID(int=k + 1) for k in range(2)],  # placeholders, see _swap
            complaints=[uuid.uuid4() for _ in range(2)],
            purchases=[uuid.uuid4() for _ in range(2)],
            hostile=True,
        )
        calm = Draw(how.customers, how.complaints, how.purchases, hostile=False)
        generated = []
        for _ in range(draw(st.integers(1, 3))):
            sent = []
            for _ in range(draw(st.integers(1, 8))):
                chosen = draw(st.sampled_from([how, calm]))
                if service == "profile" and draw(st.integers(0, 3)) == 0:
                    sent.append(draw(hostile_order(chosen)))
                else:
                    sent.append(draw(hostile_event(sorted(types), chosen)))
            if draw(st.integers(0, 3)) == 0 and sent[0].id is not None:
                # the same id again, another payload (a producer bug, or a replay gone wrong)
                sent.append(resend(sent[0], time=(T0 + timedelta(days=1)).isoformat()))
            generated.append(sent)
        return generated

    return build()


def _swap(sent: Sequence[Sent], customers: Sequence[uuid.UUID]) -> list[Sent]:
    """The placeholder customers of a generated batch, replaced by this example's fresh ones."""
    out = []
    for one in sent:
        raw = one.value.decode()
        key = one.key
        for k, customer in enumerate(customers):
            placeholder = str(uuid.UUID(int=k + 1))
            raw = raw.replace(placeholder, str(customer))
            if key == placeholder.encode():
                key = str(customer).encode()
        document = json.loads(raw)
        out.append(Sent(one.event_type, one.topic, key, raw.encode(), document))
    return out


def _fuzz(stack: Stack, name: str) -> None:
    service = stack.services[name]

    @FUZZ_SETTINGS
    @given(batches(name, service.types()))
    def example(generated: list[list[Sent]]) -> None:
        for k, sent in enumerate(generated):
            for one in sent:
                note(f"batch {k}: {one.topic} <- {one.value[:3000]!r}")

        async def run() -> None:
            customers = await _customers(service, 3)
            concrete = [_swap(sent, customers) for sent in generated]
            try:
                for sent in concrete:
                    await deliver_and_check(service, sent)
                await WORKS[name](service, customers)
            finally:
                everything = [one for sent in concrete for one in sent]
                await _forget(service, _uuids_in(everything) | set(customers))

        stack.portal.run(run())

    example()


@pytest.mark.parametrize("service", SERVICES)
def test_hostile_events_are_dead_lettered_with_the_field_or_leave_the_service_working(
    stack: Stack, service: str
) -> None:
    _fuzz(stack, service)


# --- explicit cases ------------------------------------------------------------------------------


def _event(event_type: str, customer: uuid.UUID, data: dict[str, Any], **envelope: Any) -> Sent:
    """A valid event of the contract (its `data` completed from `SAMPLE_DATA`), changed."""
    document = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/crm/{EVENTS[event_type].producer}",
        "type": event_type,
        "subject": str(customer),
        "time": T0.isoformat(),
        "datacontenttype": "application/json",
        "data": {**SAMPLE_DATA[event_type](customer), **data},
        **envelope,
    }
    topic = envelope.pop("topic", None) or EVENTS[event_type].topic
    document.pop("topic", None)
    return Sent(event_type, topic, str(customer).encode(), json.dumps(document).encode(), document)


def _complaint(customer: uuid.UUID) -> dict[str, Any]:
    return {"complaint_id": str(uuid.uuid4()), "customer_id": str(customer), "severity": "high"}


SAMPLE_DATA: dict[str, Callable[[uuid.UUID], dict[str, Any]]] = {
    ev.PURCHASE_REFUNDED: lambda c: {"customer_id": str(c)},
    ev.CUSTOMER_REGISTERED: lambda c: {"customer_id": str(c), "kind": "person"},
    ev.PURCHASE_RECORDED: lambda c: {
        "customer_id": str(c),
        "purchase_id": str(uuid.uuid4()),
        "order_id": f"O-{uuid.uuid4().hex[:8]}",
        "amount": "20.00",
        "currency": "USD",
        "items": [{"sku": "S", "category": "shoes", "quantity": 1, "unit_price": "20.00"}],
    },
    ev.COMPLAINT_OPENED: lambda c: {
        **_complaint(c),
        "channel": "email",
        "category": "delivery",
        "first_response_due": (T0 + timedelta(hours=4)).isoformat(),
        "resolution_due": (T0 + timedelta(hours=72)).isoformat(),
    },
    ev.COMPLAINT_RESOLVED: lambda c: {
        **_complaint(c),
        "root_cause": "courier",
        "resolution_met": True,
    },
    ev.STAGE_CHANGED: lambda c: {
        "customer_id": str(c),
        "from_stage": "prospect",
        "to_stage": "growth",
        "reason": "first_purchase",
    },
    ev.VALUE_SCORED: lambda c: {
        "customer_id": str(c),
        "score": 50.0,
        "dimensions": dict.fromkeys(("current", "future", "credit", "loyalty", "growth"), 50.0),
        "tier": "ordinary",
        "loyalty": {
            "index": 50.0,
            "behavioural": 50.0,
            "attitudinal": 50.0,
            "dick_basu": "latent",
            "jones_sasser": "mercenary",
        },
        "model_version": "m1",
    },
    ev.TIER_CHANGED: lambda c: {
        "customer_id": str(c),
        "from_tier": None,
        "to_tier": "key",
        "score": 97.0,
    },
}
#: An event type each service consumes, for the cases that hold for any.
CONSUMED = {
    "scoring": ev.PURCHASE_RECORDED,
    "lifecycle": ev.PURCHASE_RECORDED,
    "complaints": ev.CUSTOMER_REGISTERED,
    "profile": ev.STAGE_CHANGED,
}


def _poison_between_good(
    stack: Stack, name: str, poison: Callable[[uuid.UUID], Sent]
) -> tuple[Outcome, Sent, list[Sent]]:
    """good, poison, good for one customer each, in one batch; the service checked afterwards."""
    service = stack.services[name]

    async def run() -> tuple[Outcome, Sent, list[Sent]]:
        customers = await _customers(service, 3)
        good = [_event(CONSUMED[name], customers[k], {}) for k in (0, 2)]
        bad = poison(customers[1])
        batch = [good[0], bad, good[1]]
        try:
            outcome = await deliver_and_check(service, batch)
            await WORKS[name](service, customers)
            return outcome, bad, good
        finally:
            await _forget(service, _uuids_in(batch) | set(customers))

    return stack.portal.run(run())


def _refused(outcome: Outcome, bad: Sent, good: Sequence[Sent], field_name: str) -> None:
    reasons = [letter.error for letter in outcome.dead]
    assert len(reasons) == 1 and f"`{field_name}`" in reasons[0], reasons
    assert outcome.dead[0].value == bad.value
    assert bad.id not in outcome.applied
    assert {g.id for g in good} <= outcome.applied


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00Z",  # asyncpg writes it as -infinity
        "0001-01-01T00:00:00+14:00",  # no UTC datetime at all
        "1899-12-31T23:59:59Z",
        "9000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",  # asyncpg writes it as infinity
    ],
)
@pytest.mark.parametrize("service", SERVICES)
def test_a_business_time_outside_the_platforms_years_is_dead_lettered_naming_it(
    stack: Stack, service: str, moment: str
) -> None:
    outcome, bad, good = _poison_between_good(
        stack, service, lambda c: _event(CONSUMED[service], c, {}, time=moment)
    )
    _refused(outcome, bad, good, "time")


@pytest.mark.parametrize("field_name", ["first_response_due", "resolution_due"])
def test_a_complaints_due_time_outside_them_is_dead_lettered_naming_it(
    stack: Stack, field_name: str
) -> None:
    outcome, bad, good = _poison_between_good(
        stack,
        "profile",
        lambda c: _event(ev.COMPLAINT_OPENED, c, {field_name: "0001-01-01T00:00:00Z"}),
    )
    _refused(outcome, bad, good, f"data.{field_name}")


def _deliver_all(stack: Stack, name: str, make: Callable[[list[uuid.UUID]], list[Sent]]) -> Outcome:
    """Deliver what `make` builds for fresh customers (batch by batch: one list a batch),
    then check the service works."""
    service = stack.services[name]

    async def run() -> Outcome:
        customers = await _customers(service, 3)
        sent = make(customers)
        try:
            outcome = await deliver_and_check(service, sent)
            await WORKS[name](service, customers)
            return outcome
        finally:
            await _forget(service, _uuids_in(sent) | set(customers))

    return stack.portal.run(run())


MONEY_LIMIT = Decimal("99999999999999.9999")


def _purchases(
    customer: uuid.UUID, amounts: Sequence[Decimal], quantity: int = 1, every_days: int = 30
) -> list[Sent]:
    """One purchase every `every_days`, the last a day before T0."""
    return [
        _event(
            ev.PURCHASE_RECORDED,
            customer,
            {
                "amount": str(amount),
                "items": [
                    {"sku": "S", "category": "c", "quantity": quantity, "unit_price": str(amount)}
                ],
            },
            time=(T0 - timedelta(days=1 + every_days * (len(amounts) - 1 - k))).isoformat(),
        )
        for k, amount in enumerate(amounts)
    ]


@pytest.mark.parametrize("service", ["scoring", "lifecycle"])
def test_purchases_totalling_the_limit_of_money_leave_the_service_working(
    stack: Stack, service: str
) -> None:
    """Five purchases of a fifth of what Money holds, the quantity beyond 64 bits' half: the
    customer's totals and the value models' predictions (CLV) stay within Money."""
    fifth = (MONEY_LIMIT / 5).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    outcome = _deliver_all(
        stack, service, lambda c: _purchases(c[0], [fifth] * 5, quantity=2**63 - 1)
    )
    assert len(outcome.applied) == 5 and outcome.dead == [], outcome


def test_a_purchase_taking_a_customers_total_past_money_is_dead_lettered_naming_it(
    stack: Stack,
) -> None:
    """Scoring sums a customer's purchases as Money (numeric(18, 4), int64 ten-thousandths):
    the one that would take the sum past it is refused with the reason; the others apply."""
    outcome = _deliver_all(
        stack, "scoring", lambda c: _purchases(c[0], [MONEY_LIMIT - 1, MONEY_LIMIT, Decimal(1)])
    )
    assert len(outcome.dead) == 1 and len(outcome.applied) == 2, outcome
    (letter,) = outcome.dead
    assert "`data.amount`" in letter.error, letter.error
    assert Decimal(json.loads(letter.value or b"")["data"]["amount"]) == MONEY_LIMIT


@pytest.mark.parametrize(
    ("service", "event_type", "data", "field_name"),
    [
        ("profile", ev.STAGE_CHANGED, {"reason": "first\u0000purchase"}, "data.reason"),
        (
            "profile",
            ev.VALUE_SCORED,
            {"model_version": "m\u00001"},
            "data.model_version",
        ),
        ("scoring", ev.PURCHASE_RECORDED, {"order_id": "O-\u00001"}, "data.order_id"),
        (
            "scoring",
            ev.PURCHASE_RECORDED,
            {"items": [{"sku": "S", "category": "sh\u0000oes", "quantity": 1, "unit_price": "1"}]},
            "data.items.0.category",
        ),
        ("lifecycle", ev.PURCHASE_RECORDED, {"order_id": "O-\u00001"}, "data.order_id"),
        (
            "complaints",
            ev.CUSTOMER_REGISTERED,
            {"source_channel": "web\u0000"},
            "data.source_channel",
        ),
    ],
)
def test_text_postgresql_cannot_store_is_dead_lettered_naming_the_field(
    stack: Stack, service: str, event_type: str, data: dict[str, Any], field_name: str
) -> None:
    """NUL (JSON's `\\u0000`) in any text of an event: PostgreSQL refuses it in text and jsonb."""
    outcome, bad, good = _poison_between_good(stack, service, lambda c: _event(event_type, c, data))
    _refused(outcome, bad, good, field_name)


@pytest.mark.parametrize("service", SERVICES)
def test_an_event_whose_subject_is_another_customer_is_dead_lettered_naming_it(
    stack: Stack, service: str
) -> None:
    """The subject is the Kafka key: the partition, hence the order, and the customer lock the
    consumer takes. Applied to `data.customer_id` under another key, it would race that
    customer's own events."""
    outcome, bad, good = _poison_between_good(
        stack,
        service,
        lambda c: _event(CONSUMED[service], c, {}, subject=str(uuid.uuid4())),
    )
    _refused(outcome, bad, good, "subject")


def test_a_score_of_a_long_model_version_reaches_the_360_view(stack: Stack) -> None:
    """The payload does not bound `model_version`; profile keeps the first 100 characters (as
    it keeps the first 40 of a stage's reason), where it failed the whole event."""
    profile = stack.services["profile"]

    async def run() -> tuple[Outcome, dict[str, Any]]:
        (customer,) = await _customers(profile, 1)
        score = _event(ev.VALUE_SCORED, customer, {"model_version": "v" * 500})
        try:
            outcome = await deliver_and_check(profile, [score])
            view = await profile.client.get(f"/v1/customers/{customer}/360", headers=ALL)
            assert view.status_code == 200, view.text
            return outcome, view.json()
        finally:
            await _forget(profile, {customer})

    outcome, view = stack.portal.run(run())
    assert outcome.dead == [] and len(outcome.applied) == 1, outcome
    assert view["value"]["model_version"] == "v" * 100
    assert view["value"]["score"] == 50.0


def test_a_customer_predicted_to_spend_past_money_is_valued_at_its_limit(stack: Stack) -> None:
    """Twelve weekly purchases that total just under what Money holds, scored with a model
    fitted on an ordinary base: it predicts more than Money holds for the next year, which
    neither the values' columns nor the events' `clv` can carry (the purchase that got there was
    dead-lettered as a numeric overflow). Predictions are capped at the limit."""
    twelfth = (MONEY_LIMIT / 12).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    scoring = stack.services["scoring"]

    async def run() -> tuple[Outcome, dict[str, Any]]:
        await _recompute(scoring)  # the model of the base alone (earlier tests' customers gone)
        customers = await _customers(scoring, 1)
        sent = _purchases(customers[0], [twelfth] * 12, every_days=7)
        try:
            outcome = await deliver_and_check(scoring, sent)
            value = await scoring.client.get(f"/v1/customers/{customers[0]}/value", headers=ALL)
            assert value.status_code == 200, value.text
            await _scoring_works(scoring, customers)
            return outcome, value.json()
        finally:
            await _forget(scoring, set(customers))

    outcome, value = stack.portal.run(run())
    assert outcome.dead == [] and len(outcome.applied) == 12, outcome
    assert Decimal(value["clv"]["clv"]) == Decimal("99999999999999.98"), value["clv"]


def test_predicted_money_is_staged_within_what_money_holds() -> None:
    import numpy as np

    from services.scoring.values import NO_MONEY, _cents

    staged = _cents(np.array([1e20, -1e20, 12.345, np.nan, np.inf]))
    assert staged.tolist() == [9999999999999998, -9999999999999998, 1234, NO_MONEY, NO_MONEY]


def test_the_pyramid_and_pareto_views_sum_the_base_past_what_one_customer_holds(
    stack: Stack,
) -> None:
    """Two customers with one purchase of 60% of Money's limit each: the base's revenue passes
    the limit, which the totals of the pyramid and the Pareto view must carry (they were 500s)."""
    share = (MONEY_LIMIT * Decimal("0.6")).quantize(Decimal("0.0001"))
    scoring = stack.services["scoring"]

    async def run() -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
        customers = await _customers(scoring, 2)
        sent = [*_purchases(customers[0], [share]), *_purchases(customers[1], [share])]
        try:
            outcome = await deliver_and_check(scoring, sent)
            pyramid = await scoring.client.get("/v1/value/pyramid", headers=ALL)
            pareto = await scoring.client.get("/v1/value/pareto", headers=ALL)
            assert (pyramid.status_code, pareto.status_code) == (200, 200), (pyramid, pareto)
            await _scoring_works(scoring, customers)
            return outcome, pyramid.json(), pareto.json()
        finally:
            await _forget(scoring, set(customers))

    outcome, pyramid, pareto = stack.portal.run(run())
    assert outcome.dead == [] and len(outcome.applied) == 2, outcome
    assert Decimal(pyramid["revenue"]) > 2 * share
    assert Decimal(pareto["revenue"]) > 2 * share


def test_a_refund_of_another_customers_purchase_counts_for_nobody(stack: Stack) -> None:
    """Found by the fuzzer: a refund naming another customer's purchase made its own customer's
    net revenue negative, and their value's read a 500."""

    def refund_of_the_other(customers: list[uuid.UUID]) -> list[Sent]:
        bought = _event(ev.PURCHASE_RECORDED, customers[0], {"amount": "15570.00", "items": []})
        refund = _event(
            ev.PURCHASE_REFUNDED,
            customers[1],
            {
                "purchase_id": bought.document["data"]["purchase_id"],
                "order_id": bought.document["data"]["order_id"],
                "refund_id": str(uuid.uuid4()),
                "amount": "602.79",
                "refunded_total": "602.79",
                "order_amount": "15570.00",
                "currency": "USD",
            },
        )
        return [bought, refund]

    scoring = stack.services["scoring"]

    async def run() -> tuple[Outcome, list[dict[str, Any]]]:
        customers = await _customers(scoring, 2)
        sent = refund_of_the_other(customers)
        try:
            outcome = await deliver_and_check(scoring, sent)
            await _scoring_works(scoring, customers)
            values = [
                await scoring.client.get(f"/v1/customers/{customer}/value", headers=ALL)
                for customer in customers
            ]
            return outcome, [value.json() for value in values]
        finally:
            await _forget(scoring, set(customers))

    outcome, (buyer, refunded) = stack.portal.run(run())
    assert len(outcome.applied) == 2, outcome
    assert buyer["aggregates"]["net_revenue"] == "15570.00"
    assert refunded["aggregates"]["net_revenue"] == "0.00", refunded["aggregates"]
