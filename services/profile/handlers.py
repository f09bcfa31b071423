"""What the profile service reacts to: HANDLERS = {event type: handler}."""

from shared.messaging.consumer import Handler

HANDLERS: dict[str, Handler] = {}
