"""The event contract: envelope, payloads, registry, topics, schema and AsyncAPI export."""

from shared.events.envelope import CONTENT_TYPE, CloudEvent, EnvelopeError, new_event
from shared.events.registry import EVENTS, EventSpec, parse, topic_for

__all__ = [
    "CONTENT_TYPE",
    "EVENTS",
    "CloudEvent",
    "EnvelopeError",
    "EventSpec",
    "new_event",
    "parse",
    "topic_for",
]
