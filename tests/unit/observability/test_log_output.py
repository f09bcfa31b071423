"""One JSON line shape for our log lines and the libraries' stdlib records, filtered by level."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from shared.observability.logging import configure_logging, get_logger


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def fresh_logger() -> Any:
    # A name of its own: structlog caches a logger's configuration on its first use.
    return get_logger(f"test.{uuid.uuid4().hex}")


def test_library_records_and_ours_are_the_same_json_shape(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", level="INFO", fmt="json")
    log = fresh_logger()
    log.info("thing.happened", customer_id="c-1")
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)
    ours, library = lines(capsys)
    assert ours["event"] == "thing.happened" and ours["customer_id"] == "c-1"
    assert library["event"] == "Started server process [42]"
    assert (ours["level"], library["level"]) == ("info", "warning")
    assert library["logger"] == "uvicorn.error" and ours["logger"].startswith("test.")
    for record in (ours, library):
        assert record["service"] == "unit" and record["timestamp"].endswith("Z")


def test_lines_below_the_level_are_not_written(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", level="WARNING", fmt="json")
    log = fresh_logger()
    log.debug("too.fine")
    log.info("http.request", route="/x", status=200)
    logging.getLogger("alembic.runtime.migration").info("Running upgrade")
    log.warning("kept", reason="r")
    logging.getLogger("aiokafka").error("broker gone")
    assert [record["event"] for record in lines(capsys)] == ["kept", "broker gone"]


def test_exceptions_carry_their_traceback_and_the_request_context(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", level="INFO", fmt="json")
    log = fresh_logger()
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("http.unhandled_error", method="GET")
    [record] = lines(capsys)
    assert record["level"] == "error" and record["request_id"] == "req-7"
    assert "Traceback" in record["exception"] and "RuntimeError: boom" in record["exception"]


def test_values_json_cannot_take_directly_are_still_written(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", level="INFO", fmt="json")
    customer = uuid.uuid4()
    log = fresh_logger()
    log.info("counts", statuses={200: 5, 404: 1}, customer_id=customer)
    log.info("huge", value=2**80, email="jane@example.com")
    counts, huge = lines(capsys)
    assert counts["statuses"] == {"200": 5, "404": 1} and counts["customer_id"] == str(customer)
    assert huge["value"] == 2**80 and huge["email"] == "[redacted]"


def test_a_new_configuration_reaches_loggers_already_in_use(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = fresh_logger()
    configure_logging(service="first", level="INFO", fmt="json")
    log.info("one")
    configure_logging(service="second", level="WARNING", fmt="json")
    log.info("two")
    log.warning("three")
    assert [(r["event"], r["service"]) for r in lines(capsys)] == [
        ("one", "first"),
        ("three", "second"),
    ]
