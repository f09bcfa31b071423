"""API fuzzing: schemathesis against each service's OpenAPI (see fuzzing.py)."""
