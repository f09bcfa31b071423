"""The Kafka edge of the four services, as their workers wire it, for the event fuzz tests.

`consumers_of(service, settings)` asks the service's own `worker.start` what consumers it runs
(a stand-in runtime records each `run_consumer` call), so the tests drive exactly the worker's
handlers, batch processors, decoders, locks and `emits`. `Edge` wraps one such consumer in a
real `ConsumerRunner` on the service's real database; `Edge.deliver` hands it records as Kafka
would (one batch, `handle_batch`: the fast path, the redo message by message, the DLQ), with a
producer that records the dead letters instead of sending them.

`hostile_event` draws CloudEvents from the published JSON Schemas (docs/events/) with hostile
values in a third of their fields: money at the limits of `Money`, huge integers, times at the
calendar's edges, very long text, NUL, other controls and lone surrogates, unknown fields and
extension attributes, a subject that is not `data.customer_id`, missing or broken envelope
attributes, events on another type's topic (`resend` repeats an id with another payload).
`hostile_order` does the same for orders from other systems (`crm.ingest.orders.v1`, profile's
own schema). The package `hypothesis-jsonschema` is not installed (schemathesis 4 no longer
uses it), so the schemas are walked here: they are small and use few keywords.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import strategies as st
from support import kafka_record

from shared.db import SessionFactory
from shared.events import EVENTS, topics
from shared.messaging.consumer import ConsumerRunner

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {
    event_type: json.loads((REPO / "docs" / "events" / f"{event_type}.schema.json").read_text())
    for event_type in EVENTS
}
SOURCES = {spec.type: f"/crm/{spec.producer}" for spec in EVENTS.values()}

#: Business "now" of the fuzz runs.
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


# --- the consumers of a service, as its worker starts them ------------------------------------


@dataclass(frozen=True)
class ConsumerSpec:
    topics: tuple[str, ...]
    options: Mapping[str, Any]


class _RecordingRuntime:
    """Enough of `ServiceRuntime` for a service's `worker.start` to name its jobs."""

    def __init__(self, settings: Any, clock: Any) -> None:
        self.settings = settings
        self.clock = clock
        self.consumers: list[ConsumerSpec] = []

    def run_consumer(self, *, topics: Sequence[str], **options: Any) -> None:
        self.consumers.append(ConsumerSpec(tuple(topics), options))

    def run_relay(self, **_: Any) -> None:
        return None

    def run_periodic(self, *_: Any, **__: Any) -> None:
        return None


def consumers_of(service: str, settings: Any, clock: Any) -> list[ConsumerSpec]:
    worker = importlib.import_module(f"services.{service}.worker")
    runtime = _RecordingRuntime(settings, clock)
    worker.start(runtime)
    return runtime.consumers


# --- the edge ---------------------------------------------------------------------------------


@dataclass
class DeadLetter:
    topic: str
    value: bytes | None
    headers: dict[str, str]

    @property
    def error(self) -> str:
        return self.headers.get("dlq.error", "")

    @property
    def error_type(self) -> str:
        return self.headers.get("dlq.error.type", "")


class _RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def send_and_wait(
        self, topic: str, *, value: bytes | None, key: bytes | None, headers: Any
    ) -> None:
        decoded = {name: raw.decode(errors="replace") for name, raw in headers}
        self.sent.append(DeadLetter(topic, value, decoded))


class _NoConsumer:
    """Offsets are not committed here (`commit_offsets=False`); the runner asks what it holds."""

    def assignment(self) -> set[TopicPartition]:
        return set()


_offsets = iter(range(10**12))


def record(topic: str, key: bytes | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return kafka_record(
        value,
        topic=topic,
        offset=next(_offsets),
        key=key,
        headers=[("content-type", b"application/cloudevents+json")],
    )


@dataclass
class Edge:
    """One consumer of a service on its real database."""

    service: str
    group_id: str
    topics: tuple[str, ...]
    runner: ConsumerRunner
    producer: _RecordingProducer = field(default_factory=_RecordingProducer)

    @classmethod
    def of(
        cls,
        service: str,
        spec: ConsumerSpec,
        *,
        sessions: SessionFactory,
        settings: Any,
    ) -> Edge:
        tables = importlib.import_module(f"services.{service}.models").MESSAGING
        options = dict(spec.options)
        options.pop("read_model", None)  # only the linger: batches are handed over whole here
        group_id = options.pop("group_id", None) or service
        producer = _RecordingProducer()
        runner = ConsumerRunner(
            service=service,
            consumer=_NoConsumer(),
            producer=producer,
            sessions=sessions,
            tables=tables,
            group_id=group_id,
            max_attempts=settings.consumer_max_attempts,
            backoff=0.001,
            commit_offsets=False,
            **options,
        )
        return cls(service, group_id, spec.topics, runner, producer)

    async def deliver(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[DeadLetter]:
        """One batch of the records of this consumer's topics; the dead letters it sent."""
        mine = [r for r in records if r.topic in self.topics]
        if not mine:
            return []
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for r in mine:
            batch.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        before = len(self.producer.sent)
        await self.runner.handle_batch(batch, asyncio.Event())
        return self.producer.sent[before:]


# --- hostile values ---------------------------------------------------------------------------

MONEY_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
MONEY_LIMIT = "99999999999999.9999"  # Money: max_digits=18, decimal_places=4
HOSTILE_MONEY = (  # the limit weighs more: sums of it are what overflows
    MONEY_LIMIT,
    MONEY_LIMIT,
    MONEY_LIMIT,
    "0",
    "0.0001",
    "0.00",
    MONEY_LIMIT,
    "99999999999999",
    "50000000000000.0001",
    "000000000000000000000000001.5",
    "1.00000",
    "100000000000000",
    "0.00001",
    "-0",
    "-1",
)
EDGE_TIMES = (
    "1900-01-01T00:00:00Z",
    "1900-01-01T00:00:00+14:00",
    "1899-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "1970-01-01T00:00:00Z",
    "2038-01-19T03:14:08Z",
    "8999-12-31T23:59:59.999999Z",
    "8999-12-31T23:59:59-14:00",
    "9000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-14:00",
)
HUGE_INTEGERS = (2**15, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30)
NASTY_CHARACTERS = "\x00\x00\x00\x01\x1b\x7f\x85\x9f\u200b\u2028\u202e\ufeff\ufffe\ud800\udfff"


def _text_with(draw: st.DrawFn, base: str) -> str:
    kind = draw(st.sampled_from(["char", "long", "longer", "empty", "spaces", "emoji"]))
    if kind == "char":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.sampled_from(NASTY_CHARACTERS)) + base[at:]
    if kind == "long":
        return base + "x" * draw(st.sampled_from([99, 100, 101, 199, 200, 201, 255, 256]))
    if kind == "longer":
        return "\u00e9" * 100_000
    if kind == "spaces":
        return "   "
    if kind == "emoji":
        return base + "\U0001f600" * 30
    return ""


def _time_text(draw: st.DrawFn, near: datetime) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(EDGE_TIMES))
    moment = near + timedelta(seconds=draw(st.integers(-400 * 86400, 86400)))
    offset = timedelta(minutes=draw(st.sampled_from([0, 0, 0, 60, -300, 14 * 60, -14 * 60])))
    return moment.astimezone(timezone(offset)).isoformat()


@dataclass
class Draw:
    """What a generated document names (placeholders of the example's customers, complaint and
    purchase ids, so that events meet) and whether its fields may take hostile values."""

    customers: Sequence[uuid.UUID]
    complaints: Sequence[uuid.UUID]
    purchases: Sequence[uuid.UUID]
    hostile: bool


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return root["$defs"][ref.rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
    return schema


def _value(
    draw: st.DrawFn, schema: Mapping[str, Any], root: Mapping[str, Any], name: str, how: Draw
) -> Any:
    schema = _resolve(schema, root)
    hostile = how.hostile and draw(st.integers(0, 2)) == 0
    if "anyOf" in schema:
        options = [_resolve(o, root) for o in schema["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) < len(options) and draw(st.integers(0, 3)) == 0:
            return None
        return _value(draw, draw(st.sampled_from(non_null)), root, name, how)
    if "enum" in schema:
        if hostile and draw(st.booleans()):
            return draw(st.sampled_from(["", "KEY", "unknown", schema["enum"][0] + "\x00"]))
        return draw(st.sampled_from(schema["enum"]))
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        document = {}
        for prop, sub in schema.get("properties", {}).items():
            if prop in required or draw(st.booleans()):
                document[prop] = _value(draw, sub, root, prop, how)
        if how.hostile and draw(st.integers(0, 5)) == 0:
            document[draw(st.sampled_from(["note", "extra", "type", "amount\x00"]))] = draw(
                st.sampled_from(["x", 10**30, None, [1, 2], {"a": "\x00"}])
            )
        return document
    if kind == "array":
        size = draw(st.integers(0, 3))
        if hostile:
            size = draw(st.sampled_from([0, 50, 500]))
        item = schema.get("items", {})
        if size > 3:
            one = _value(draw, item, root, name, how)
            return [one] * size
        return [_value(draw, item, root, name, how) for _ in range(size)]
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 1000)
        if hostile:
            return draw(st.sampled_from([low, high, *HUGE_INTEGERS, low - 1, high + 1]))
        return draw(st.integers(low, min(high, low + 20)))
    if kind == "number":
        low, high = schema.get("minimum", 0.0), schema.get("maximum", 100.0)
        if hostile:
            return draw(
                st.sampled_from([low, high, 5e-324, math.nextafter(high, 0), 1e308, high + 1e-9])
            )
        return draw(st.floats(low, high, allow_nan=False))
    if kind == "string":
        form = schema.get("format")
        if form == "uuid":
            return str(_id_for(draw, name, how))
        if form == "date-time":
            return _time_text(draw, T0 + timedelta(days=3))
        if schema.get("pattern") == MONEY_PATTERN:
            if hostile:
                return draw(st.sampled_from(HOSTILE_MONEY))
            return f"{draw(st.integers(1, 50000))}.{draw(st.integers(0, 99)):02d}"
        if schema.get("pattern") == "^[A-Z]{3}$":
            return draw(st.sampled_from(["USD", "USD", "USD", "EUR"] + (["US"] if hostile else [])))
        base = draw(st.sampled_from(["courier", "web", "A-1", "segment", "latent", "v1"]))
        max_length = schema.get("maxLength")
        if hostile:
            text = _text_with(draw, base)
            return text if max_length is None or draw(st.booleans()) else text[: max_length + 1]
        return base
    return draw(st.sampled_from([None, "x", 1]))


def _id_for(draw: st.DrawFn, name: str, how: Draw) -> uuid.UUID:
    pools = {
        "customer_id": how.customers,
        "referred_by": how.customers,
        "complaint_id": how.complaints,
        "purchase_id": how.purchases,
    }
    pool = pools.get(name)
    if pool and draw(st.integers(0, 5)) > 0:
        return draw(st.sampled_from(pool))
    return uuid.uuid4() if draw(st.booleans()) else uuid.UUID(int=0)


@dataclass(frozen=True)
class Sent:
    """A generated event and where it goes."""

    event_type: str
    topic: str
    key: bytes | None
    value: bytes
    document: Any  # the JSON document before serialising (None when not an object)

    @property
    def id(self) -> str | None:
        if self.event_type not in EVENTS or not isinstance(self.document, dict):
            return None  # an ingested order's event id is made from its offset
        found = self.document.get("id")
        return found if isinstance(found, str) else None


@st.composite
def hostile_event(draw: st.DrawFn, types: Sequence[str], how: Draw) -> Sent:
    event_type = draw(st.sampled_from(sorted(types)))
    schema = SCHEMAS[event_type]
    data = _value(draw, schema, schema, "data", how)
    customer_id = data.get("customer_id") if isinstance(data, dict) else None
    subject = customer_id or str(draw(st.sampled_from(how.customers)))
    if how.hostile and draw(st.integers(0, 5)) == 0:
        subject = draw(
            st.sampled_from([str(draw(st.sampled_from(how.customers))), "order:1", "x" * 5000])
        )
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCES[event_type],
        "type": event_type,
        "subject": subject,
        "time": _time_text(draw, T0),
        "datacontenttype": "application/json",
        "data": data,
    }
    topic = EVENTS[event_type].topic
    if how.hostile:
        match draw(st.integers(0, 9)):
            case 0:
                document[draw(st.sampled_from(["tenant", "traceparent", "partitionkey"]))] = draw(
                    st.sampled_from(["eu", "00-" + "a" * 32 + "-" + "b" * 16 + "-01", 10**30])
                )
            case 1:
                topic = draw(st.sampled_from(sorted({s.topic for s in EVENTS.values()})))
            case 2:
                del document[draw(st.sampled_from(["id", "time", "subject", "data", "source"]))]
            case 3:
                document["id"] = draw(st.sampled_from(["not-a-uuid", "", 7]))
            case _:
                pass
    value = json.dumps(document).encode()  # ensure_ascii: a lone surrogate travels as \udxxx
    key = subject.encode("utf-8", errors="surrogatepass") if isinstance(subject, str) else None
    return Sent(event_type, topic, key, value, document)


_ORDER_SCHEMA: dict[str, Any] | None = None


def _order_schema() -> dict[str, Any]:
    """The JSON Schema of what other systems drop on `crm.ingest.orders.v1` (no CloudEvent)."""
    global _ORDER_SCHEMA
    if _ORDER_SCHEMA is None:
        from services.profile.domain import IngestOrder

        _ORDER_SCHEMA = IngestOrder.model_json_schema()
    return _ORDER_SCHEMA


@st.composite
def hostile_order(draw: st.DrawFn, how: Draw) -> Sent:
    schema = _order_schema()
    order = _value(draw, schema, schema, "order", how)
    # What the schema leaves free but the order's rules fix, mostly right, so that orders get
    # past them to the database; hostile values still come in the fields' own draws.
    money = {"type": "string", "pattern": MONEY_PATTERN}
    order["amount"] = _value(draw, money, schema, "amount", how)
    for item in order.get("items") or ():
        if isinstance(item, dict):
            item["unit_price"] = _value(draw, money, schema, "unit_price", how)
    order["currency"] = draw(st.sampled_from(["USD", "USD", "USD", "usd", "EUR"]))
    order["email"] = draw(st.sampled_from([None, f"{uuid.uuid4().hex[:8]}@example.com"]))
    if draw(st.integers(0, 2)) > 0:  # mostly one of ours, by id
        order["customer_id"] = str(draw(st.sampled_from(how.customers)))
    if "occurred_at" in order and draw(st.booleans()):
        order["occurred_at"] = _time_text(draw, T0 - timedelta(days=30))
    if draw(st.integers(0, 3)) == 0:  # wrapped in a CloudEvent, which the decoder accepts too
        order = {"specversion": "1.0", "type": "shop.order", "data": order}
    key = str(order.get("customer_id", "k")).encode(errors="surrogatepass")
    value = json.dumps(order).encode()
    return Sent("ingest", topics.INGEST_ORDERS, key, value, order)


def resend(sent: Sent, **changes: Any) -> Sent:
    """The same event again, changed (`data_` for fields of `data`)."""
    document = dict(sent.document)
    data_changes = changes.pop("data_", None)
    document.update(changes)
    if data_changes:
        document["data"] = {**document["data"], **data_changes}
    return Sent(sent.event_type, sent.topic, sent.key, json.dumps(document).encode(), document)


# --- what a dead letter's reason must say -----------------------------------------------------

# pydantic's error locations, a field in backquotes, or where the JSON broke.
_FIELD_IN_REASON = re.compile(
    r"^invalid crm\.[a-z_.0-9]+: (\[\{'type': '[a-z_]+', 'loc': \(|`[^`]+` )"
    r"|^not JSON: .* line \d+ column \d+"
    r"|^invalid order: [a-z_.0-9]+"  # profile's ingest: `invalid order: items.0.quantity: ...`
)


def names_a_field(reason: str) -> bool:
    return bool(_FIELD_IN_REASON.search(reason))


def sent_record(sent: Sent) -> ConsumerRecord[bytes, bytes]:
    return record(sent.topic, sent.key, sent.value)
