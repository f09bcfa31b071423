"""Infrastructure and the event contract shared by the four services (no business rules)."""
