"""Domain-facing exceptions; the HTTP edge turns them into RFC 9457 problem+json in one place."""

from __future__ import annotations

from typing import Any


class CrmError(Exception):
    """Base of every error a use case may raise on purpose."""

    status: int = 400
    title: str = "Bad request"
    slug: str = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotRetryable(Exception):
    """Mixed into an error that the same input raises every time (a consumed event no rule can
    use): a consumer dead-letters the event at once, with the reason, instead of retrying it."""


class NotFound(CrmError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(CrmError):
    status, title, slug = 409, "Conflict", "conflict"


class PreconditionFailed(CrmError):
    status, title, slug = 412, "Precondition failed", "precondition-failed"


class PreconditionRequired(CrmError):
    status, title, slug = 428, "Precondition required", "precondition-required"


class Unauthorized(CrmError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(CrmError):
    status, title, slug = 403, "Forbidden", "forbidden"


class ServiceUnavailable(CrmError):
    status, title, slug = 503, "Service unavailable", "service-unavailable"


class InvalidInput(CrmError):
    """422 with field errors: `errors=[FieldError(...)]` names each field and the reason."""

    status, title, slug = 422, "Unprocessable content", "validation-error"

    def __init__(self, detail: str, *, errors: list[dict[str, str]] | None = None, **extra: Any):
        super().__init__(detail, **extra)
        self.errors = errors or []

    @classmethod
    def field(cls, field: str, reason: str) -> InvalidInput:
        return cls(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])
