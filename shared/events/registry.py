"""One table from event type to payload model, topic and producing service (the catalogue)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from shared.events import payloads as p
from shared.events import topics
from shared.events.envelope import CloudEvent, EnvelopeError, peek


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


def parse(raw: bytes) -> CloudEvent[Any]:
    """Bytes from Kafka -> a typed CloudEvent. Raises EnvelopeError (DLQ material) when unreadable."""
    return parse_document(peek(raw))


def parse_document(doc: dict[str, Any]) -> CloudEvent[Any]:
    """A decoded JSON object (see `peek`) -> a typed CloudEvent, as `parse`."""
    event_type = doc.get("type")
    model = _ENVELOPES.get(event_type) if isinstance(event_type, str) else None
    if model is None:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise EnvelopeError(f"invalid {event_type}: {exc.errors(include_url=False)}") from exc


def topic_for(event_type: str) -> str:
    return EVENTS[event_type].topic
