"""Lifecycle service: the customer life cycle stage as an event-driven state machine."""
