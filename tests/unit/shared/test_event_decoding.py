"""Cheaper event decoding and encoding, same contract: the one-pass read from bytes (`parse_fast`)
decides as the two-step read (`peek`, `parse_document`) or leaves the event to it; ids, bytes
and consumer metrics are what they were."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from support import kafka_record

from shared.events import EVENTS, CloudEvent, EnvelopeError, new_event, parse, topics
from shared.events import payloads as p
from shared.events import registry as ev
from shared.events.envelope import new_id, peek
from shared.events.registry import parse_document, parse_fast
from shared.messaging.consumer import ConsumerRunner, decoding

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
C = uuid.UUID("5f1c7d4e-2d1a-4f57-9b8e-1f1f1f1f1f1f")
X = uuid.UUID("0b4e7a52-8c2f-4c1e-a0de-3f9d2b6c1e77")
SCORE = {"current": 10.0, "future": 20.0, "credit": 30.0, "loyalty": 40.0, "growth": 50.0}
LOYALTY = {
    "index": 50.0,
    "behavioural": 40.0,
    "attitudinal": 60.0,
    "dick_basu": "latent",
    "jones_sasser": "loyalist",
}
COMPLAINT = {"complaint_id": str(X), "customer_id": str(C), "severity": "high"}

# One valid `data` of every event type of the contract.
SAMPLES: dict[str, dict[str, Any]] = {
    ev.CUSTOMER_REGISTERED: {"customer_id": str(C), "kind": "person", "referred_by": str(X)},
    ev.CUSTOMER_UPDATED: {"customer_id": str(C), "changed_fields": ["segment"], "version": 3},
    ev.CUSTOMER_CONSENT_CHANGED: {
        "customer_id": str(C),
        "purpose": "profiling",
        "status": "granted",
    },
    ev.CUSTOMER_ERASED: {"customer_id": str(C)},
    ev.PURCHASE_RECORDED: {
        "customer_id": str(C),
        "purchase_id": str(X),
        "order_id": "A-1",
        "amount": "129.90",
        "currency": "EUR",
        "items": [{"sku": "S1", "category": "shoes", "quantity": 2, "unit_price": "64.95"}],
        "channel": "web",
    },
    ev.PURCHASE_REFUNDED: {
        "customer_id": str(C),
        "purchase_id": str(X),
        "order_id": "A-1",
        "refund_id": str(X),
        "amount": "10",
        "refunded_total": "10",
        "order_amount": "129.90",
        "currency": "EUR",
    },
    ev.COMPLAINT_OPENED: {
        **COMPLAINT,
        "channel": "email",
        "category": "delivery",
        "first_response_due": "2026-03-02T12:00:00Z",
        "resolution_due": "2026-03-09T12:00:00+01:00",
    },
    ev.COMPLAINT_ACKNOWLEDGED: {**COMPLAINT, "first_response_met": True},
    ev.COMPLAINT_ESCALATED: {**COMPLAINT, "level": 2, "reason": "manual"},
    ev.COMPLAINT_RESOLVED: {**COMPLAINT, "root_cause": "courier", "resolution_met": False},
    ev.COMPLAINT_CLOSED: {**COMPLAINT, "satisfaction": 4},
    ev.COMPLAINT_REOPENED: dict(COMPLAINT),
    ev.STAGE_CHANGED: {
        "customer_id": str(C),
        "from_stage": None,
        "to_stage": "prospect",
        "reason": "first_order",
    },
    ev.VALUE_SCORED: {
        "customer_id": str(C),
        "score": 42.5,
        "dimensions": SCORE,
        "tier": "major",
        "rfm": {"recency": 5, "frequency": 1, "monetary": 3, "segment": "new"},
        "loyalty": LOYALTY,
        "p_alive": 0.9,
        "clv": "1200.5",
        "currency": "EUR",
    },
    ev.TIER_CHANGED: {"customer_id": str(C), "from_tier": None, "to_tier": "key", "score": 97.5},
}


def envelope(event_type: str, data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=len(event_type))),
        "source": "/crm/test",
        "type": event_type,
        "subject": str(C),
        "time": "2026-03-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    }


def two_step(raw: bytes) -> CloudEvent[Any]:
    """The read as it was before the one-pass one: orjson, then validating the document."""
    return parse_document(peek(raw))


def assert_same_reading(raw: bytes) -> None:
    """The one-pass read gives what the two-step read gives, or leaves the event to it."""
    fast = parse_fast(raw)
    try:
        slow: CloudEvent[Any] | None = two_step(raw)
    except EnvelopeError:
        slow = None
    if fast is not None:
        assert slow is not None, raw
        assert type(fast) is type(slow) and fast == slow, raw
        assert fast.model_dump() == slow.model_dump(), raw
    if slow is None:
        with pytest.raises(EnvelopeError):
            parse(raw)
    else:
        assert parse(raw) == slow


def test_samples_cover_the_contract() -> None:
    assert set(SAMPLES) == set(EVENTS)


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_event_type_is_read_in_one_pass_as_in_two(event_type: str) -> None:
    raw = orjson.dumps(envelope(event_type, SAMPLES[event_type]))
    fast = parse_fast(raw)
    assert fast is not None, "a valid event of the contract takes the one-pass read"
    assert fast == two_step(raw) and type(fast.data) is EVENTS[event_type].payload
    assert parse(raw) == fast


def test_what_we_produce_takes_the_one_pass_read_and_round_trips() -> None:
    data = p.PurchaseRecorded(
        customer_id=C,
        purchase_id=X,
        order_id="A-1",
        amount=Decimal("129.90"),
        currency="EUR",
        items=[p.PurchaseItem(sku="S1", quantity=1, unit_price=Decimal("129.90"))],
    )
    event = new_event(
        type=ev.PURCHASE_RECORDED, source="/crm/profile", subject=C, time=AT, data=data
    )
    assert parse_fast(event.to_bytes()) == event


def test_a_consumer_reads_only_its_own_types_in_one_pass() -> None:
    raw = orjson.dumps(envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]))
    assert parse_fast(raw, {ev.VALUE_SCORED}) is None
    assert parse_fast(raw, {ev.TIER_CHANGED}) is not None


def purchase_with(**changes: Any) -> dict[str, Any]:
    return envelope(ev.PURCHASE_RECORDED, {**SAMPLES[ev.PURCHASE_RECORDED], **changes})


def item_with(quantity: int) -> list[dict[str, Any]]:
    return [{**SAMPLES[ev.PURCHASE_RECORDED]["items"][0], "quantity": quantity}]


@pytest.mark.parametrize(
    "raw",
    [
        # orjson refuses NaN and Infinity anywhere, also in a field the payload ignores
        json.dumps(purchase_with(note=float("nan"))).encode(),
        json.dumps(purchase_with(note=float("-inf"))).encode(),
        json.dumps({**purchase_with(), "ext": float("inf")}).encode(),
        # orjson reads integers beyond 64 bits as floats, which an int field refuses
        json.dumps(purchase_with(items=item_with(2**64))).encode(),
        json.dumps(purchase_with(items=item_with(2**64 - 1))).encode(),
        json.dumps(
            envelope(ev.CUSTOMER_UPDATED, {**SAMPLES[ev.CUSTOMER_UPDATED], "version": 2**70})
        ).encode(),
        # an extension attribute that orjson reads as a float
        json.dumps({**purchase_with(), "bignumber": 2**65}).encode(),
        json.dumps({**purchase_with(), "traceparent": "00-abc-def-01", "tenant": "eu"}).encode(),
        # a "type" inside `data` before the envelope's own
        json.dumps(
            {
                "data": {"type": ev.TIER_CHANGED, **SAMPLES[ev.PURCHASE_RECORDED]},
                **{k: v for k, v in purchase_with().items() if k != "data"},
            }
        ).encode(),
        json.dumps(
            {
                "data": {**SAMPLES[ev.TIER_CHANGED], "type": ev.TIER_CHANGED},
                **{k: v for k, v in envelope(ev.PURCHASE_RECORDED, None).items() if k != "data"},
            }
        ).encode(),
        # spacing, invalid, unknown
        json.dumps(purchase_with(), indent=2).encode(),
        json.dumps(purchase_with(amount="-1")).encode(),
        json.dumps(purchase_with(amount=1e2)).encode(),
        json.dumps(envelope("crm.nope.happened.v1", {})).encode(),
        b'{"type": "crm.purchase.recorded.v1"',
        b"[]",
    ],
)
def test_the_one_pass_read_leaves_what_orjson_reads_differently_to_the_two_step_read(
    raw: bytes,
) -> None:
    assert_same_reading(raw)


def test_an_integer_beyond_64_bits_is_refused_as_before() -> None:
    raw = json.dumps(purchase_with(items=item_with(2**64))).encode()
    assert parse_fast(raw) is None
    with pytest.raises(EnvelopeError, match=r"invalid crm\.purchase\.recorded\.v1"):
        parse(raw)


def test_nan_in_an_ignored_field_is_still_not_json() -> None:
    with pytest.raises(EnvelopeError, match="not JSON"):
        parse(json.dumps(purchase_with(note=float("nan"))).encode())


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "",
            "x",
            str(C),
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:00",
            "129.90",
            "-1",
            "key",
            *sorted(EVENTS),
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*at, index))


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    event_type = draw(st.sampled_from(sorted(SAMPLES)))
    doc: Any = json.loads(json.dumps(envelope(event_type, SAMPLES[event_type])))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        value = draw(JSON_VALUES)
        if not path:
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = value
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = value
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_the_one_pass_read_agrees_with_the_two_step_read_on_mutated_events(raw: bytes) -> None:
    assert_same_reading(raw)


# --- the consumer ---------------------------------------------------------------------------


def runner(handled: set[str], *, every_replay: bool = False) -> ConsumerRunner:
    async def handler(ctx: Any, event: Any) -> None:
        return None

    return ConsumerRunner(
        service="decoding-test",
        consumer=cast(Any, None),
        producer=cast(Any, None),
        sessions=cast(Any, None),
        tables=cast(Any, None),
        handlers={t: handler for t in handled},
        group_id="g",
        every_replay=every_replay,
    )


def record(
    value: bytes | None, offset: int = 0, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return kafka_record(value, topic=topics.VALUE, offset=offset, headers=headers)


def test_the_consumer_decodes_ignores_and_refuses_as_before() -> None:
    consumer = runner({ev.TIER_CHANGED})
    tier = orjson.dumps(envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]))
    scored = orjson.dumps(envelope(ev.VALUE_SCORED, {"customer_id": "not validated"}))
    bad = orjson.dumps(envelope(ev.TIER_CHANGED, {**SAMPLES[ev.TIER_CHANGED], "score": 101}))
    unknown = orjson.dumps(envelope("crm.nope.happened.v1", {}))

    decoded = consumer._decode(record(tier))
    assert decoded.event == two_step(tier) and decoded.error is None

    ignored = consumer._decode(record(scored))
    assert ignored.ignored_type == ev.VALUE_SCORED and ignored.event is None

    refused = consumer._decode(record(bad))
    with pytest.raises(EnvelopeError) as expected:
        two_step(bad)
    assert refused.event is None and refused.error_type == "unreadable"
    assert refused.error == str(expected.value)  # the same reason as before in the DLQ

    assert "unknown event type" in (consumer._decode(record(unknown)).error or "")
    assert "tombstone" in (consumer._decode(record(None)).error or "")
    assert "not JSON" in (consumer._decode(record(b"{")).error or "")


def consumed(event_type: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "crm_events_consumed_total",
        {"service": "decoding-test", "type": event_type, "outcome": outcome},
    )
    return value or 0.0


def test_consumed_events_are_counted_per_type_and_outcome() -> None:
    consumer = runner({ev.TIER_CHANGED, ev.STAGE_CHANGED})
    tier = orjson.dumps(envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]))
    other_tier = orjson.dumps(
        {**envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]), "id": str(uuid.uuid4())}
    )
    stage = orjson.dumps(envelope(ev.STAGE_CHANGED, SAMPLES[ev.STAGE_CHANGED]))
    scored = orjson.dumps(envelope(ev.VALUE_SCORED, SAMPLES[ev.VALUE_SCORED]))
    before = {
        (t, o): consumed(t, o)
        for t in (ev.TIER_CHANGED, ev.STAGE_CHANGED, ev.VALUE_SCORED)
        for o in ("ok", "ignored", "duplicate")
    }
    messages = [
        consumer._decode(record(raw, offset))
        for offset, raw in enumerate([tier, tier, other_tier, stage, scored, scored])
    ]
    wanted = consumer._wanted(messages)
    consumer._count(wanted, "ok")
    after = {key: consumed(*key) - value for key, value in before.items()}
    assert after == {
        **dict.fromkeys(before, 0.0),
        (ev.TIER_CHANGED, "ok"): 2.0,
        (ev.TIER_CHANGED, "duplicate"): 1.0,
        (ev.STAGE_CHANGED, "ok"): 1.0,
        (ev.VALUE_SCORED, "ignored"): 2.0,
    }


def test_a_dlq_replay_is_applied_by_the_group_it_is_for_alone() -> None:
    """`crm dlq replay` addresses each copy to the group that failed it: the topic's other groups
    read past it (also an unreadable one, which is not theirs to dead-letter again); a rebuild
    from the log (`every_replay`) takes every group's."""
    tier = orjson.dumps(envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]))
    content = ("content-type", b"application/cloudevents+json")

    def copy(raw: bytes, group: bytes) -> ConsumerRecord[bytes, bytes]:
        return record(raw, headers=[content, ("dlq.replay.group", group)])

    consumer = runner({ev.TIER_CHANGED})
    assert consumer._decode(copy(tier, b"g")).event == two_step(tier)
    for raw in (tier, b"{"):
        skipped = consumer._decode(copy(raw, b"other"))
        assert skipped.replay_for == "other" and skipped.event is None and skipped.error is None
    before = consumed("dlq-replay", "replay_for_another_group")
    assert consumer._wanted([consumer._decode(copy(tier, b"other"))]) == []
    assert consumed("dlq-replay", "replay_for_another_group") == before + 1

    rebuild = runner({ev.TIER_CHANGED}, every_replay=True)
    assert rebuild._decode(copy(tier, b"other")).event == two_step(tier)


# --- producing --------------------------------------------------------------------------------


def tier_changed(traceparent: str | None = None) -> CloudEvent[p.TierChanged]:
    return new_event(
        type=ev.TIER_CHANGED,
        source="/crm/scoring",
        subject=C,
        time=AT,
        data=p.TierChanged(customer_id=C, from_tier=None, to_tier=p.Tier.key, score=97.5),
        traceparent=traceparent,
    )


@pytest.mark.parametrize(
    "traceparent", [None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
)
def test_the_bytes_are_those_of_model_dump_json(traceparent: str | None) -> None:
    event = tier_changed(traceparent)
    expected = event.model_dump_json(exclude={"traceparent"} if traceparent is None else None)
    assert event.to_bytes() == expected.encode()


def test_new_ids_are_time_ordered_random_version_7_uuids() -> None:
    ids = [new_id() for _ in range(2000)]  # more than one read of OS randomness
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert tier_changed().id.version == 7
    # the first 48 bits are the Unix time in milliseconds: ids sort by when they were made
    now_ms = time.time_ns() // 1_000_000
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps) and now_ms - 60_000 < stamps[0] <= stamps[-1] <= now_ms


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    new_id()  # the parent holds unused random ids now
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, new_id().bytes)
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    childs = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    assert childs != new_id()


def test_a_message_that_cannot_be_read_is_named_by_the_type_it_claims() -> None:
    """Dead letters (`dlq.event.type`) and the failure metric said "unreadable" even for a
    tier_changed.v1 with a bad score, or an order on the ingest topic in the wrong currency."""
    consumer = runner({ev.TIER_CHANGED})
    bad = orjson.dumps(envelope(ev.TIER_CHANGED, {**SAMPLES[ev.TIER_CHANGED], "score": 101}))
    assert consumer._decode(record(bad)).declared_type == ev.TIER_CHANGED
    # A type no contract knows, or none at all, is not repeated: labels stay a known set.
    unknown = orjson.dumps(envelope("crm.nope.happened.v1", {}))
    assert consumer._decode(record(unknown)).declared_type is None
    assert consumer._decode(record(b"{not json")).declared_type is None
    assert consumer._decode(record(None)).declared_type is None
    # A topic with its own decoder: the type the decoder makes.

    def refuse(_: Any) -> CloudEvent[Any]:
        raise EnvelopeError("invalid order: currency: EUR is not this deployment's USD")

    consumer.decoders = {"crm.ingest.orders.v1": decoding("crm.ingest.order_received.v1", refuse)}
    ingest = dataclasses.replace(record(b'{"order_id": "A-1"}'), topic="crm.ingest.orders.v1")
    refused = consumer._decode(ingest)
    assert (refused.error_type, refused.declared_type) == (
        "unreadable",
        "crm.ingest.order_received.v1",
    )


@pytest.mark.parametrize(
    "subject",
    [
        str(C).upper(),
        C.hex,
        f"{{{C}}}",
        f"urn:uuid:{C}",
        "-".join((C.hex[:4], C.hex[4:8], C.hex[8:12], C.hex[12:16], C.hex[16:])),
    ],
)
def test_a_subject_spelled_otherwise_is_read_as_the_customer_id_writers_lock_by(
    subject: str,
) -> None:
    """The runner locks a batch's customers by their events' subjects: the same id spelled
    otherwise must name the lock the service's writers take (`str` of the id), not another."""
    consumer = runner({ev.TIER_CHANGED})
    raw = orjson.dumps({**envelope(ev.TIER_CHANGED, SAMPLES[ev.TIER_CHANGED]), "subject": subject})
    decoded = consumer._decode(record(raw))
    assert decoded.error is None and decoded.event is not None
    assert decoded.event.subject == str(C)
    assert decoded.event.model_dump(exclude={"subject"}) == two_step(raw).model_dump(
        exclude={"subject"}
    )


def _erased(**envelope_changes: Any) -> dict[str, Any]:
    doc = envelope(ev.CUSTOMER_ERASED, SAMPLES[ev.CUSTOMER_ERASED])
    doc.update(envelope_changes)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        # Required attributes of CloudEvents 1.0 and of the AsyncAPI document: pydantic
        # defaulted a missing specversion and read a number, or digits, as seconds since 1970.
        (_erased(specversion=None), "specversion is required"),
        (_erased(time=1772366400), "RFC 3339"),
        (_erased(time=1772366400.5), "RFC 3339"),
        (_erased(time="1772366400"), "RFC 3339"),
        (_erased(time=True), "RFC 3339"),
        (
            envelope(
                ev.COMPLAINT_OPENED, {**SAMPLES[ev.COMPLAINT_OPENED], "resolution_due": 1772366400}
            ),
            "RFC 3339",
        ),
    ],
)
def test_an_envelope_without_specversion_or_with_a_time_not_in_rfc_3339_is_refused(
    doc: dict[str, Any], reason: str
) -> None:
    raw = orjson.dumps(doc)
    assert parse_fast(raw) is None
    with pytest.raises(EnvelopeError, match=reason):
        parse(raw)


def test_rfc_3339_times_with_any_offset_are_still_read() -> None:
    for time_text in (
        "2026-03-01T12:00:00Z",
        "2026-03-01T13:00:00.5+01:00",
        "2026-03-01T12:00:00.123456Z",
    ):
        raw = orjson.dumps(_erased(time=time_text))
        assert parse_fast(raw) == parse(raw) == two_step(raw)
        assert parse(raw).time.utcoffset() is not None
