"""Pure ASGI middleware: request ids, latency metrics and one access-log line per request.

The access line carries the route template (not the raw path or query string: search terms
can be e-mail addresses), the status and the duration.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.observability import metrics
from shared.observability.logging import get_logger

log = get_logger("crm.access")
REQUEST_ID_HEADER = b"x-request-id"
_QUIET_ROUTES = {"/health/live", "/health/ready", "/metrics"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        request_id = incoming if 0 < len(incoming) <= 128 else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder: dict[str, Any] = {"status": 500}
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                # Answer here, inside the request context, so a 500 carries its request id too.
                log.exception("http.unhandled_error", method=scope["method"])
                if "started" in status_holder:
                    raise
                await _internal_error(send_wrapper, request_id, scope.get("path", ""))
            finally:
                elapsed = time.perf_counter() - started
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                status = status_holder["status"]
                metrics.HTTP_LATENCY.labels(
                    self.service, scope["method"], template, str(status)
                ).observe(elapsed)
                if template not in _QUIET_ROUTES:
                    log.info(
                        "http.request",
                        method=scope["method"],
                        route=template,
                        status=status,
                        duration_ms=round(elapsed * 1000, 2),
                    )


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
