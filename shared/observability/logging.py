"""Structured JSON logs. Personal data never goes into a log line.

A processor drops any key that names a personal field, as a last line of defence; call sites
log ids, never names, e-mails, phones, addresses or free text written by customers.

Our own lines take structlog's native path: a line below LOG_LEVEL costs one comparison, an
emitted one is rendered by orjson and written once. Going through stdlib `logging` and its
`ProcessorFormatter` cost several times more per line, and the access log writes one line per
request. Records of libraries (uvicorn, aiokafka, alembic, asyncio) still come through stdlib
`logging`; a handler renders them with the same processors into the same stream, under the same
lock, so every line of the process is one JSON object of the same shape.

`configure_logging` may run again (tests do): the level, the processors and the stream are
looked up when a line is written, so loggers that structlog cached before follow it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from typing import Any, ClassVar, Final

import orjson
import structlog
from structlog.typing import EventDict, Processor

PERSONAL_KEYS = frozenset(
    {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "display_name",
        "address",
        "addresses",
        "street",
        "postal_code",
        "description",
        "feedback",
        "message",
        "subject_text",
        "q",
    }
)

# One lock for every line of the process: ours and the stdlib handler's.
_OUTPUT_LOCK: Final = threading.RLock()


def _drop_personal(_: Any, __: str, event_dict: EventDict) -> EventDict:
    for key in PERSONAL_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def _write_line(line: str) -> None:
    # sys.stderr looked up per line: what a test captures, or what the process was given.
    with _OUTPUT_LOCK:
        stream = sys.stderr
        # A closed stderr (at shutdown) must not fail the request or job that logs.
        with contextlib.suppress(OSError, ValueError):
            stream.write(line + "\n")
            stream.flush()


def _dumps(value: Any, **kw: Any) -> str:
    """orjson, several times faster than `json`; `json` for what orjson refuses (huge ints)."""
    try:
        return orjson.dumps(
            value, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS
        ).decode()
    except TypeError:
        return json.dumps(value, **kw)


class LineLogger:
    """What structlog's bound loggers write to: each rendered line, whatever its level (the
    bound logger has filtered by level already). `name` feeds the `logger` field."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or "root"

    def msg(self, line: str) -> None:
        _write_line(line)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _line_logger(*args: Any) -> LineLogger:
    return LineLogger(args[0] if args else None)


class BoundLogger(structlog.BoundLoggerBase):
    """structlog's bound logger, with the threshold of the last `configure_logging` read at each
    call (structlog's level-filtering classes fix it when a logger is first used)."""

    threshold: ClassVar[int] = logging.NOTSET

    def _log(self, level: int, method: str, event: str, args: tuple[Any, ...], kw: Any) -> Any:
        if level < BoundLogger.threshold:
            return None
        return self._proxy_to_logger(method, event % args if args else event, **kw)

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._log(logging.DEBUG, "debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._log(logging.INFO, "info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._log(logging.WARNING, "warning", event, args, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._log(logging.ERROR, "error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._log(logging.ERROR, "error", event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._log(logging.CRITICAL, "critical", event, args, kw)

    warn = warning
    fatal = critical
    msg = info


# The one processor chain, changed in place: cached loggers hold this very list.
_PROCESSORS: list[Processor] = []


class _LineHandler(logging.Handler):
    """Stdlib records of libraries, rendered by the ProcessorFormatter, into the same lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_line(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(*, service: str, level: str = "INFO", fmt: str = "json") -> None:
    def add_service(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_personal,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        rendering: list[Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer()  # formats exc_info itself
        rendering = [renderer]
    _PROCESSORS[:] = [*shared, *rendering]
    BoundLogger.threshold = logging.getLevelNamesMapping()[level]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=BoundLogger,
        logger_factory=_line_logger,
        cache_logger_on_first_use=True,
    )
    handler = _LineHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log prints query strings (search terms can be e-mails): we log requests ourselves.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.error").propagate = True
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return,unused-ignore]
