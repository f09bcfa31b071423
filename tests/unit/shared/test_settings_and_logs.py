"""Fail-fast settings and personal data kept out of logs."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from shared.observability.logging import configure_logging, get_logger
from shared.settings import ServiceSettings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"crm_env": "production"}, "JWT_JWKS_URL"),
        ({"crm_env": "production", "jwt_secret": "short-but-16-chars!"}, "at least 32"),
        (
            {"crm_env": "production", "jwt_jwks_url": "https://idp/jwks", "cors_origins": "*"},
            "CORS_ORIGINS",
        ),
        ({"database_url": "postgresql://x@y/z"}, r"must start with postgresql\+asyncpg://"),
        ({"kafka_bootstrap_servers": " "}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"kafka_security_protocol": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"jwt_secret": "tiny"}, "at least 16"),
        ({"consumer_batch_size": 0}, "greater than or equal to 1"),
    ],
)
def test_unsafe_or_bad_settings_fail_fast(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServiceSettings(**values)  # type: ignore[arg-type]


def test_production_settings_accept_a_jwks_url_and_listed_origins() -> None:
    s = ServiceSettings(
        crm_env="production",
        jwt_jwks_url="https://idp/jwks",
        cors_origins="https://a.example, https://b.example",
    )  # type: ignore[arg-type]
    assert s.cors_origins == ["https://a.example", "https://b.example"]


def test_logs_are_json_and_redact_personal_fields(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(service="unit", level="INFO", fmt="json")
        get_logger("t").info(
            "customer.updated", customer_id="c-1", email="jane@example.com", phone="+4412345"
        )
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    record = json.loads(line)
    assert (
        record["event"] == "customer.updated"
        and record["service"] == "unit"
        and record["customer_id"] == "c-1"
    )
    assert "jane@example.com" not in line and "+4412345" not in line
    assert record["email"] == "[redacted]"
