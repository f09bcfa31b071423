"""Lifecycle service: the customer life cycle stage as an event-driven state machine.

Where things are (STYLE.md vocabulary):
- ``domain.py``: the rules, pure. The transition table is data (``TRANSITIONS``); decision
  functions return the new state and the stage changes; ``due_times`` says when the time rules
  will fire. Every decision first applies the time rules up to the event's business time, so
  results do not depend on the sweep cadence.
- ``service.py``: ``apply_events`` (a consumed batch: rows locked in customer-id order,
  each customer's events applied in business-time order, state upserted, history and
  ``crm.lifecycle.stage_changed.v1`` written in the same transaction; six statements per
  batch whatever its size, bound to arrays on the asyncpg connection), ``evaluate`` (the time
  rules set-based in SQL over the stored due columns, chunked), queries, policy versions.
- ``models.py``: ``customer_lifecycles`` (stage columns, the due columns the sweep reads through
  partial indexes, the facts as JSONB), ``stage_transitions`` (history), ``erased_customers``
  (tombstones keep late events from re-creating an erased customer), ``lifecycle_policies``
  (every version), ``evaluation_runs``.

Replay (``crm replay lifecycle``) re-applies the log; the consumer does not order topics against
each other, so a replay is exact when each customer's events are applied in business-time
order: give it a large ``CONSUMER_BATCH_SIZE`` (each batch is sorted per customer). Time rules
that fired after a customer's last event come from sweeps, not from the log: the next sweep
re-derives them (same changes, same dates, published again with new event ids). The stages
reached are the same either way (out-of-order events are handled by the domain).
"""
