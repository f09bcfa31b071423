"""Published catalogue: JSON Schemas of every payload and an AsyncAPI 3 document, from the registry.

`make docs` writes docs/events/*.schema.json and docs/asyncapi.yaml; `make docs-check` fails when
they are stale, when the AsyncAPI document is invalid, or when a payload changed incompatibly.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from shared.events import topics
from shared.events.registry import EVENTS

SERVICES = {
    "profile": "Customers, consent, purchases, refunds, interactions; the customer 360 view.",
    "lifecycle": "Lifecycle stage per customer (prospect, growth, mature, decline, churned).",
    "complaints": "Complaint intake, workflow, SLA clocks, escalation, root causes, CSAT.",
    "scoring": "RFM, CLV (BG/NBD + Gamma-Gamma), composite value, pyramid tiers, loyalty.",
}

# Which service consumes which event types: what each service's handler tables take (a unit
# test holds them equal). The other types on the topics a service reads are read past.
CONSUMERS: dict[str, list[str]] = {
    "profile": [
        t for t in EVENTS if t.startswith(("crm.lifecycle.", "crm.value.", "crm.complaint."))
    ],
    "lifecycle": [
        "crm.customer.registered.v1",
        "crm.customer.erased.v1",
        "crm.purchase.recorded.v1",
        "crm.purchase.refunded.v1",
        "crm.complaint.opened.v1",
        "crm.complaint.reopened.v1",
        "crm.complaint.closed.v1",
        "crm.value.scored.v1",
    ],
    "complaints": [t for t in EVENTS if t.startswith("crm.customer.")]
    + ["crm.value.tier_changed.v1"],
    "scoring": [
        "crm.customer.registered.v1",
        "crm.customer.erased.v1",
        *(t for t in EVENTS if t.startswith(("crm.purchase.", "crm.complaint."))),
    ],
}

INGEST_ORDER_SCHEMA: dict[str, Any] = {
    "title": "IngestOrder",
    "description": "An order dropped by an outside system (plain JSON, not a CloudEvent). The "
    "customer is named by customer_id, external_ref or email (one is required); an unknown "
    "customer is created when external_ref or email is given.",
    "type": "object",
    "required": ["order_id", "amount", "currency", "occurred_at"],
    "properties": {
        "order_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "customer_id": {"type": "string", "format": "uuid"},
        "external_ref": {"type": "string"},
        "email": {"type": "string", "format": "email"},
        "amount": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "channel": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "quantity", "unit_price"],
                "properties": {
                    "sku": {"type": "string"},
                    "category": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                },
            },
        },
    },
}


def _name(event_type: str) -> str:
    return "".join(
        part.title() for part in event_type.removeprefix("crm.").replace("_", ".").split(".")[:-1]
    )


def payload_schema(event_type: str) -> dict[str, Any]:
    """Serialization-mode JSON Schema of one payload, self-contained ($defs inline)."""
    spec = EVENTS[event_type]
    schema = spec.payload.model_json_schema(mode="serialization")
    schema["$id"] = f"urn:crm:events:{event_type}"
    schema["description"] = spec.summary
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    return {t: payload_schema(t) for t in sorted(EVENTS)}


def _rehome_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                v.replace("#/$defs/", f"#/components/schemas/{prefix}")
                if k == "$ref"
                else _rehome_refs(v, prefix)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rehome_refs(v, prefix) for v in node]
    return node


def envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["specversion", "id", "source", "type", "subject", "time", "data"],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string", "format": "uuid"},
            "source": {"type": "string", "pattern": "^/crm/[a-z]+$"},
            "type": {"type": "string"},
            "subject": {"type": "string", "description": "The customer id (also the Kafka key)"},
            "time": {"type": "string", "format": "date-time", "description": "Business time, UTC"},
            "datacontenttype": {"type": "string", "const": "application/json"},
            "traceparent": {"type": "string", "description": "W3C trace context"},
        },
    }


def asyncapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "CloudEventEnvelope": envelope_schema(),
        "IngestOrder": INGEST_ORDER_SCHEMA,
    }
    messages: dict[str, Any] = {}
    by_topic: dict[str, list[str]] = defaultdict(list)
    for event_type in sorted(EVENTS):
        spec = EVENTS[event_type]
        name = _name(event_type)
        raw = copy.deepcopy(
            spec.payload.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
        )
        for def_name, definition in raw.pop("$defs", {}).items():
            schemas[f"{name}_{def_name}"] = _rehome_refs(definition, f"{name}_")
        schemas[f"{name}Data"] = _rehome_refs(raw, f"{name}_")
        schemas[f"{name}Event"] = {
            "allOf": [
                {"$ref": "#/components/schemas/CloudEventEnvelope"},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": event_type},
                        "source": {"const": f"/crm/{spec.producer}"},
                        "data": {"$ref": f"#/components/schemas/{name}Data"},
                    },
                },
            ]
        }
        messages[name] = {
            "name": event_type,
            "title": event_type,
            "summary": spec.summary,
            "contentType": "application/cloudevents+json",
            "payload": {"$ref": f"#/components/schemas/{name}Event"},
        }
        by_topic[spec.topic].append(name)
    messages["IngestOrder"] = {
        "name": "ingest.order",
        "title": "Order from an outside system",
        "contentType": "application/json",
        "payload": {"$ref": "#/components/schemas/IngestOrder"},
    }
    messages["DeadLetter"] = {
        "name": "dead-letter",
        "title": "A message that could not be processed",
        "summary": "The original key and value; headers dlq.origin.topic, dlq.origin.partition, "
        "dlq.origin.offset, dlq.consumer.group, dlq.service, dlq.error, dlq.error.type "
        "(`unreadable`: refused when read, else the handler's error), dlq.event.type (for an "
        "unreadable message the contract type it claims, else `unreadable`), dlq.attempts, "
        "dlq.failed_at; a message too large to be held with them comes without its value and "
        "with dlq.value.omitted (its size in bytes; `crm dlq replay` skips it). "
        "`crm dlq replay` puts it back on its origin topic with the headers dlq.replayed_from and "
        "dlq.replay.group (the group that failed it): only that group applies the copy, and a "
        "consumer of another group must skip it (it processed the original).",
        "contentType": "application/octet-stream",
        "payload": {"type": "string"},
    }
    by_topic[topics.INGEST_ORDERS].append("IngestOrder")
    by_topic[topics.DLQ].append("DeadLetter")

    channels: dict[str, Any] = {}
    for topic in topics.ALL:
        cid = topic.replace(".", "_")
        channels[cid] = {
            "address": topic,
            "description": "Kafka key: the customer id (per-customer order).",
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in by_topic[topic]},
        }
    operations: dict[str, Any] = {}
    for service in SERVICES:
        produced = [t for t, s in EVENTS.items() if s.producer == service]
        for topic in sorted({EVENTS[t].topic for t in produced}):
            cid = topic.replace(".", "_")
            operations[f"{service}_publishes_{cid}"] = {
                "action": "send",
                "summary": f"{service} publishes to {topic} (transactional outbox)",
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [
                    {"$ref": f"#/channels/{cid}/messages/{_name(t)}"}
                    for t in sorted(produced)
                    if EVENTS[t].topic == topic
                ],
            }
        consumed = CONSUMERS[service]
        for topic in sorted({EVENTS[t].topic for t in consumed}):
            cid = topic.replace(".", "_")
            operations[f"{service}_consumes_{cid}"] = {
                "action": "receive",
                "summary": f"{service} consumes from {topic} (consumer group `{service}`)",
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [
                    {"$ref": f"#/channels/{cid}/messages/{_name(t)}"}
                    for t in sorted(consumed)
                    if EVENTS[t].topic == topic
                ],
            }
    ingest = topics.INGEST_ORDERS.replace(".", "_")
    operations["profile_consumes_ingest_orders"] = {
        "action": "receive",
        "summary": "profile turns outside orders into purchases",
        "channel": {"$ref": f"#/channels/{ingest}"},
        "messages": [{"$ref": f"#/channels/{ingest}/messages/IngestOrder"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Customer lifecycle platform events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 (structured mode, JSON) on Kafka. Every event names the "
            "customer by id in `subject` and in the Kafka key; no personal data travels in events. "
            "A `.v1` payload only ever gains optional fields; a breaking change is a new `.v2` type.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "development": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "make run",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render_asyncapi() -> str:
    return yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=100)


def render_schema(event_type: str) -> str:
    return json.dumps(payload_schema(event_type), indent=2, sort_keys=True) + "\n"


def write(docs_dir: Path) -> list[Path]:
    events_dir = docs_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    written = [docs_dir / "asyncapi.yaml"]
    written[0].write_text(render_asyncapi())
    for event_type in sorted(EVENTS):
        path = events_dir / f"{event_type}.schema.json"
        path.write_text(render_schema(event_type))
        written.append(path)
    return written


def validate_asyncapi(document_path: Path, schema_path: Path) -> list[str]:
    """Errors of the document against the official AsyncAPI JSON Schema (@asyncapi/specs)."""
    import jsonschema

    document = yaml.safe_load(document_path.read_text())
    validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
        for e in sorted(
            validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
