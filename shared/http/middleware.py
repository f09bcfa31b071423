"""Pure ASGI middleware: request ids, latency metrics and one access-log line per request.

The access line carries the route template (not the raw path or query string: search terms
can be e-mail addresses), the status and the duration.
"""

from __future__ import annotations

import os
import time

import orjson
import structlog
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger("crm.access")
REQUEST_ID_HEADER = b"x-request-id"
_QUIET_ROUTES = {"/health/live", "/health/ready", "/metrics"}
_MAX_CACHED_SERIES = 1000


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        # The latency series per (method, route, status): `labels()` costs twice `observe()`.
        self._latency: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID object.
        request_id = incoming if 0 < len(incoming) <= 128 else os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started_response = False
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        # Bound and reset by token: `bound_contextvars` reads the whole context twice per request.
        context = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Answer here, inside the request context, so a 500 carries its request id too.
            log.exception("http.unhandled_error", method=scope["method"])
            if started_response:
                raise
            await _internal_error(send_wrapper, request_id, scope.get("path", ""))
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self._observe(scope["method"], template, status, elapsed)
            if template not in _QUIET_ROUTES:
                log.info(
                    "http.request",
                    method=scope["method"],
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.reset_contextvars(**context)

    def _observe(self, method: str, template: str, status: int, elapsed: float) -> None:
        key = (method, template, status)
        series = self._latency.get(key)
        if series is None:
            series = metrics.HTTP_LATENCY.labels(self.service, method, template, str(status))
            if len(self._latency) < _MAX_CACHED_SERIES:  # garbage methods must not grow it
                self._latency[key] = series
        series.observe(elapsed)


async def _internal_error(send: Send, request_id: str, path: str) -> None:
    body = orjson.dumps(
        {
            "type": "https://crm.example.org/problems/internal-error",
            "title": "Internal error",
            "status": 500,
            "detail": "An unexpected error occurred; quote the request_id when reporting it.",
            "instance": path,
            "request_id": request_id,
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
