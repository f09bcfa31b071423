"""Prometheus metrics (one registry per process; every series carries the service label)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_LATENCY = Histogram(
    "crm_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_CONSUMED = Counter(
    "crm_events_consumed_total", "Events handled by a consumer", ["service", "type", "outcome"]
)
EVENTS_PRODUCED = Counter(
    "crm_events_produced_total", "Events published by the outbox relay", ["service", "type"]
)
EVENTS_FAILED = Counter(
    "crm_events_failed_total", "Events sent to the DLQ", ["service", "type", "reason"]
)
CONSUMER_LAG = Gauge(
    "crm_consumer_lag", "Messages behind the high watermark", ["service", "topic", "partition"]
)
CONSUMER_BATCH_SECONDS = Histogram(
    "crm_consumer_batch_seconds",
    "Time to process one consumer batch (DB transaction included)",
    ["service", "group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Freshness per hop: how long the oldest event of a batch waited (in the producer, the broker
# and the consumer's queue) before its batch started, and how long an outbox event took from its
# transaction's start to the broker's acknowledgement.
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONSUMER_EVENT_AGE = Histogram(
    "crm_consumer_event_age_seconds",
    "Age of a batch's oldest event (since its producer stamped it) when the batch starts",
    ["service", "group"],
    buckets=_AGE_BUCKETS,
)
OUTBOX_PUBLISH_DELAY = Histogram(
    "crm_outbox_publish_delay_seconds",
    "From the transaction that wrote it to the broker's acknowledgement, per relayed batch's "
    "oldest event",
    ["service"],
    buckets=_AGE_BUCKETS,
)
OUTBOX_BACKLOG = Gauge("crm_outbox_backlog", "Events waiting in the outbox", ["service"])
OUTBOX_AGE = Gauge(
    "crm_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox event", ["service"]
)
RELAY_ACTIVE = Gauge(
    "crm_outbox_relay_active", "1 when this process holds the relay lock", ["service"]
)
JOB_RUNS = Counter(
    "crm_scheduled_job_runs_total", "Scheduled job runs", ["service", "job", "outcome"]
)
MESSAGING_ROWS_PRUNED = Counter(
    "crm_messaging_rows_pruned_total",
    "Inbox and idempotency-key rows deleted past their retention",
    ["service", "table"],
)
SLA_BREACHES = Counter(
    "crm_sla_breaches_total", "Complaint SLA breaches detected", ["service", "clock"]
)

GC_PAUSE = Histogram(
    "crm_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector (every task of the process waits), by generation",
    ["service", "generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENT_LOOP_LAG = Histogram(
    "crm_event_loop_lag_seconds",
    "How late the event loop woke a 50 ms timer: what every task of the process waited then",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
