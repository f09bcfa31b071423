"""One table from event type to payload model, topic and producing service (the catalogue)."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ValidationError

from shared.clock import business_time_problem
from shared.events import payloads as p
from shared.events import topics
from shared.events.envelope import CloudEvent, EnvelopeError, peek
from shared.text import unstorable_text_problem


@dataclass(frozen=True)
class EventSpec:
    type: str
    payload: builtins.type[BaseModel]
    topic: str
    producer: str
    summary: str


def _spec(
    type_: str, payload: type[BaseModel], topic: str, producer: str, summary: str
) -> EventSpec:
    return EventSpec(type_, payload, topic, producer, summary)


CUSTOMER_REGISTERED: Final = "crm.customer.registered.v1"
CUSTOMER_UPDATED: Final = "crm.customer.updated.v1"
CUSTOMER_CONSENT_CHANGED: Final = "crm.customer.consent_changed.v1"
CUSTOMER_ERASED: Final = "crm.customer.erased.v1"
PURCHASE_RECORDED: Final = "crm.purchase.recorded.v1"
PURCHASE_REFUNDED: Final = "crm.purchase.refunded.v1"
COMPLAINT_OPENED: Final = "crm.complaint.opened.v1"
COMPLAINT_ACKNOWLEDGED: Final = "crm.complaint.acknowledged.v1"
COMPLAINT_ESCALATED: Final = "crm.complaint.escalated.v1"
COMPLAINT_RESOLVED: Final = "crm.complaint.resolved.v1"
COMPLAINT_CLOSED: Final = "crm.complaint.closed.v1"
COMPLAINT_REOPENED: Final = "crm.complaint.reopened.v1"
STAGE_CHANGED: Final = "crm.lifecycle.stage_changed.v1"
VALUE_SCORED: Final = "crm.value.scored.v1"
TIER_CHANGED: Final = "crm.value.tier_changed.v1"

EVENTS: Final[dict[str, EventSpec]] = {
    s.type: s
    for s in (
        _spec(
            CUSTOMER_REGISTERED,
            p.CustomerRegistered,
            topics.CUSTOMERS,
            "profile",
            "A customer (person or organization) was registered.",
        ),
        _spec(
            CUSTOMER_UPDATED,
            p.CustomerUpdated,
            topics.CUSTOMERS,
            "profile",
            "Master data changed; carries the names of the changed fields only.",
        ),
        _spec(
            CUSTOMER_CONSENT_CHANGED,
            p.CustomerConsentChanged,
            topics.CUSTOMERS,
            "profile",
            "Consent for one purpose was granted or withdrawn.",
        ),
        _spec(
            CUSTOMER_ERASED,
            p.CustomerErased,
            topics.CUSTOMERS,
            "profile",
            "Right to be forgotten: every service deletes or anonymises what it holds.",
        ),
        _spec(
            PURCHASE_RECORDED,
            p.PurchaseRecorded,
            topics.PURCHASES,
            "profile",
            "A purchase (order) was recorded; `time` is when it happened.",
        ),
        _spec(
            PURCHASE_REFUNDED,
            p.PurchaseRefunded,
            topics.PURCHASES,
            "profile",
            "Part or all of an order was refunded.",
        ),
        _spec(
            COMPLAINT_OPENED,
            p.ComplaintOpened,
            topics.COMPLAINTS,
            "complaints",
            "A complaint was received, with its SLA due times.",
        ),
        _spec(
            COMPLAINT_ACKNOWLEDGED,
            p.ComplaintAcknowledged,
            topics.COMPLAINTS,
            "complaints",
            "First response given to the customer.",
        ),
        _spec(
            COMPLAINT_ESCALATED,
            p.ComplaintEscalated,
            topics.COMPLAINTS,
            "complaints",
            "Escalation level raised (SLA breach or manual).",
        ),
        _spec(
            COMPLAINT_RESOLVED,
            p.ComplaintResolved,
            topics.COMPLAINTS,
            "complaints",
            "Resolved, with a root cause.",
        ),
        _spec(
            COMPLAINT_CLOSED,
            p.ComplaintClosed,
            topics.COMPLAINTS,
            "complaints",
            "Closed, with the customer's satisfaction.",
        ),
        _spec(
            COMPLAINT_REOPENED,
            p.ComplaintReopened,
            topics.COMPLAINTS,
            "complaints",
            "A resolved or closed complaint was reopened.",
        ),
        _spec(
            STAGE_CHANGED,
            p.StageChanged,
            topics.LIFECYCLE,
            "lifecycle",
            "The customer moved to another lifecycle stage.",
        ),
        _spec(
            VALUE_SCORED,
            p.ValueScored,
            topics.VALUE,
            "scoring",
            "A new value score (moved by at least one point, or tier or loyalty type changed).",
        ),
        _spec(
            TIER_CHANGED,
            p.TierChanged,
            topics.VALUE,
            "scoring",
            "The customer's value-pyramid tier changed.",
        ),
    )
}


class UnknownEventType(EnvelopeError):
    pass


# Parametrised envelope models, built once (parsing is on every consumer's hot path).
_ENVELOPES: Final[dict[str, type[CloudEvent[Any]]]] = {
    t: CloudEvent[s.payload]  # type: ignore[name-defined]
    for t, s in EVENTS.items()
}


def _has_unbounded_int(schema: Any) -> bool:
    """Does this core schema hold an int field open on one side (it can take an integer beyond
    64 bits)?"""
    if isinstance(schema, list):
        return any(_has_unbounded_int(item) for item in schema)
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "int" and not (
        ("lt" in schema or "le" in schema) and ("gt" in schema or "ge" in schema)
    ):
        return True
    return any(_has_unbounded_int(value) for value in schema.values())


# Validators of the same envelopes straight from the bytes (`parse_fast`), keyed by the type's
# bytes as `_TYPE_IN` finds them, with whether the type has a field for a very long integer.
_FROM_BYTES: Final[dict[bytes, tuple[str, Callable[[bytes], Any], bool]]] = {
    t.encode(): (
        t,
        m.__pydantic_validator__.validate_json,
        _has_unbounded_int(m.__pydantic_core_schema__),
    )
    for t, m in _ENVELOPES.items()
}
# The first `"type": "..."` of a document (`_type_in`): the envelope's own in what we produce
# (it precedes `data`); anything else is caught by comparing it with the validated event's type.
_TYPE_IN: Final = re.compile(rb'"type"\s*:\s*"([^"\\]{1,100})"')
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_INTEGER: Final = b"0" * 19  # from 19 digits on, an integer can be beyond 64 bits


def parse(raw: bytes) -> CloudEvent[Any]:
    """Bytes from Kafka -> a typed CloudEvent. Raises EnvelopeError (DLQ material) when unreadable."""
    event = parse_fast(raw)
    if event is not None:
        return event
    return parse_document(peek(raw))


def parse_fast(raw: bytes, types: Container[str] = EVENTS) -> CloudEvent[Any] | None:
    """`parse` in one validation pass straight from the bytes, for the common case: a valid event
    of one of `types`. None when that is not certain; the caller then takes the two-step path
    (`peek`, `parse_document`), which decides as before and words the error.

    pydantic's JSON parser reads what orjson reads, except: NaN and Infinity (orjson refuses
    them), integers beyond 64 bits (orjson makes them floats, which an int field refuses), and
    numbers beyond a double's range (orjson refuses them; pydantic reads infinity, which every
    float and money field of the contract refuses, so that only matters in an unknown field).
    The first two, and envelopes with extension attributes, go the two-step way.
    """
    known = _FROM_BYTES.get(_type_in(raw))
    if known is None or known[0] not in types:
        return None
    event_type, validate_json, has_long_ints = known
    if not _no_nan(raw) or (has_long_ints and _LONG_INTEGER in raw.translate(_DIGITS_TO_ZERO)):
        return None  # text that merely looks so only costs the slow path
    if raw.find(b"\\") >= 0:  # one byte is a memchr; b"\\u" took four times as long
        return None  # an escape may hide NUL or a lone surrogate: `_unstorable` looks
    try:
        event: CloudEvent[Any] = validate_json(raw)
    except ValidationError:
        return None
    if (
        event.type != event_type
        or event.__pydantic_extra__
        or "specversion" not in event.__pydantic_fields_set__
    ):
        return None  # another "type" came first, extension attributes, or no specversion
    if _times_problem(event) is not None:
        return None
    return event


def declared_type(raw: bytes | None) -> str | None:
    """The contract event type a message says it is (None if none): names what could not be
    read, in dead letters and metrics, without trusting anything else in it."""
    declared = _type_in(raw or b"").decode(errors="replace")
    return declared if declared in EVENTS else None


def _type_in(raw: bytes) -> bytes:
    at = raw.find(b'"type":"')  # compact JSON, as we write it: cheaper than the expression
    if at >= 0:
        at += 8
        return raw[at : raw.find(b'"', at)]
    found = _TYPE_IN.search(raw)
    return found.group(1) if found else b""


def _no_nan(raw: bytes) -> bool:
    """No NaN or Infinity token (`find` of one byte first: several times cheaper)."""
    return (raw.find(b"N") < 0 or b"NaN" not in raw) and (
        raw.find(b"I") < 0 or b"Infinity" not in raw
    )


def parse_document(doc: dict[str, Any]) -> CloudEvent[Any]:
    """A decoded JSON object (see `peek`) -> a typed CloudEvent, as `parse`."""
    event_type = doc.get("type")
    model = _ENVELOPES.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    if "specversion" not in doc:
        # Required by CloudEvents; the model defaults it only for the events we make.
        raise EnvelopeError(f'invalid {event_type}: specversion is required ("1.0")')
    try:
        event: CloudEvent[Any] = model.model_validate(doc)
    except ValidationError as exc:
        raise EnvelopeError(f"invalid {event_type}: {exc.errors(include_url=False)}") from exc
    problem = _times_problem(event) or _unstorable(event)
    if problem is not None:
        raise EnvelopeError(f"invalid {event_type}: {problem}")
    return event


# What the contract's schemas allow but no consumer can apply, refused as the schema's own
# violations are (DLQ, naming the field): a business time outside the years the platform
# stores and computes with (shared.clock: asyncpg writes year 1 and 9999 as -infinity and
# infinity; the rules add months and years to it), and text PostgreSQL cannot store (NUL, a
# lone surrogate). Refused when read, not when made: our own producers never make them.
_TIME_ANNOTATIONS: Final = (datetime, AwareDatetime, datetime | None, AwareDatetime | None)
_PAYLOAD_TIMES: Final[dict[str, tuple[str, ...]]] = {
    t: tuple(
        name
        for name, field in s.payload.model_fields.items()
        if field.annotation in _TIME_ANNOTATIONS
    )
    for t, s in EVENTS.items()
}


def _times_problem(event: CloudEvent[Any]) -> str | None:
    problem = business_time_problem(event.time)
    if problem is not None:
        return f"`time` {problem}"
    for name in _PAYLOAD_TIMES.get(event.type, ()):
        moment = getattr(event.data, name)
        if moment is not None and (problem := business_time_problem(moment)) is not None:
            return f"`data.{name}` {problem}"
    return None


def _unstorable(event: CloudEvent[Any]) -> str | None:
    for path, text in _texts(event, ""):
        problem = unstorable_text_problem(text)
        if problem is not None:
            return f"`{path}` {problem}"
    return None


def _texts(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string the event holds (the fields of its models, not what they ignored)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}
        for name in (*type(value).model_fields, *extra):
            yield from _texts(getattr(value, name), f"{path}.{name}" if path else name)
            if name in extra:
                yield from _texts(name, f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}.{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key, f"{path}.{key}")
            yield from _texts(item, f"{path}.{key}")


def topic_for(event_type: str) -> str:
    return EVENTS[event_type].topic
