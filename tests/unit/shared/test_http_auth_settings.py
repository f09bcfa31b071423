"""The auth settings as operators write them: a blank variable (`JWT_JWKS_URL=` in a .env file,
an empty ConfigMap value) means unset, never an empty URL, issuer or audience."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.http.auth import TokenVerifier, issue_dev_token
from shared.settings import ServiceSettings


def test_a_blank_jwks_url_does_not_let_production_verify_with_the_development_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_ENV", "production")
    monkeypatch.setenv("JWT_JWKS_URL", "")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(ValidationError, match="JWT_JWKS_URL"):
        ServiceSettings()


@pytest.mark.parametrize("blank", ["", "  "])
def test_blank_issuer_and_audience_are_not_required_claims(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    monkeypatch.setenv("JWT_ISSUER", blank)
    monkeypatch.setenv("JWT_AUDIENCE", blank)
    settings = ServiceSettings()
    assert settings.jwt_issuer is None and settings.jwt_audience is None
    token = issue_dev_token(settings, scopes=["customers:read"])
    assert TokenVerifier(settings).verify(token).has("customers:read")


def test_blank_kafka_security_options_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SSL_CAFILE"):
        monkeypatch.setenv(name, "")
    settings = ServiceSettings()
    assert settings.kafka_sasl_mechanism is None and settings.kafka_ssl_cafile is None
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "")
    with pytest.raises(ValidationError, match="KAFKA_SASL_MECHANISM"):
        ServiceSettings()
