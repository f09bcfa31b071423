"""The `Prefer` request header (RFC 7240), as the routers that can answer before the work is
done read it."""

from __future__ import annotations

RESPOND_ASYNC = "respond-async"


def respond_async(prefer: str | None) -> bool:
    """Whether a `Prefer` header asks for `respond-async` (names are case-insensitive; several
    preferences may come comma-separated, each with parameters)."""
    if not prefer:
        return False
    names = (part.split(";")[0].split("=")[0].strip().lower() for part in prefer.split(","))
    return RESPOND_ASYNC in names
