"""Settings common to every service (pydantic-settings), validated at start-up: fail fast."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-insecure-secret-change-me-0123456789"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class ServiceSettings(BaseSettings):
    """Each service subclasses this and adds its own `database_url` (e.g. PROFILE_DATABASE_URL)."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    service_name: str = "crm"
    crm_env: Environment = Field(Environment.development, validation_alias="CRM_ENV")
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:54320/crm"
    db_pool_size: int = Field(10, ge=1, le=200, validation_alias="DB_POOL_SIZE")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    # "auto": on when the broker supports InitProducerId (Apache Kafka), off otherwise (Tansu).
    kafka_enable_idempotence: Literal["auto", "true", "false"] = Field(
        "auto", validation_alias="KAFKA_ENABLE_IDEMPOTENCE"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: str | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: str | None = Field(None, validation_alias="KAFKA_SSL_CAFILE")
    # Tansu acts on group membership only after the session timeout: `crm up` shortens it there.
    kafka_session_timeout_ms: int = Field(
        30000, ge=1000, le=300000, validation_alias="KAFKA_SESSION_TIMEOUT_MS"
    )
    consumer_batch_size: int = Field(500, ge=1, le=10_000, validation_alias="CONSUMER_BATCH_SIZE")
    # A partial batch waits this long for more events: fewer, larger transactions under load
    # (each has a fixed cost in round trips and CPU) for at most this much latency per hop.
    consumer_batch_linger_ms: int = Field(
        10, ge=0, le=1000, validation_alias="CONSUMER_BATCH_LINGER_MS"
    )
    # Consumers that only keep read models up to date (profile's 360 projections, complaints'
    # customers and tiers) are off the path of a purchase's stage and value: they wait longer,
    # and the fewer, larger transactions leave the CPU to the consumers on that path.
    consumer_read_model_linger_ms: int = Field(
        200, ge=0, le=5000, validation_alias="CONSUMER_READ_MODEL_LINGER_MS"
    )
    # Offsets are committed at most this often (and at once past a dead letter, on revocation
    # and on stop): each commit is a broker round trip on the hop's path, and what a crash makes
    # a consumer redo is dropped by its inbox.
    consumer_commit_interval_ms: int = Field(
        1000, ge=0, le=60_000, validation_alias="CONSUMER_COMMIT_INTERVAL_MS"
    )
    consumer_max_attempts: int = Field(3, ge=1, le=20, validation_alias="CONSUMER_MAX_ATTEMPTS")
    # Redeliveries come from what a consumer had not committed (seconds) and from a relay that
    # publishes again (minutes): a week is ample. (Offsets must not expire: see deploy/README.md.)
    inbox_retention_hours: int = Field(
        168, ge=1, le=87_600, validation_alias="INBOX_RETENTION_HOURS"
    )
    # A client's retries of one request come within minutes; a day is the common promise.
    idempotency_key_retention_hours: int = Field(
        24, ge=1, le=87_600, validation_alias="IDEMPOTENCY_KEY_RETENTION_HOURS"
    )
    # How far after the server's clock an `as_of` given to the rules (lifecycle's evaluate,
    # complaints' SLA check, scoring's recompute) may lie: what they record would be dated in
    # the future and published. Clock skew by default; a simulation or test stack raises it.
    max_future_as_of_seconds: int = Field(
        300, ge=0, le=100 * 366 * 86_400, validation_alias="MAX_FUTURE_AS_OF_SECONDS"
    )
    housekeeping_interval_seconds: int = Field(
        600, ge=10, le=86_400, validation_alias="HOUSEKEEPING_INTERVAL_SECONDS"
    )

    jwt_secret: str = Field(DEV_JWT_SECRET, validation_alias="JWT_SECRET")
    jwt_jwks_url: str | None = Field(None, validation_alias="JWT_JWKS_URL")
    jwt_issuer: str | None = Field(None, validation_alias="JWT_ISSUER")
    jwt_audience: str | None = Field(None, validation_alias="JWT_AUDIENCE")

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CORS_ORIGINS"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LOG_LEVEL"
    )
    log_format: Literal["json", "console"] = Field("json", validation_alias="LOG_FORMAT")

    @model_validator(mode="before")
    @classmethod
    def _split_origins(cls, values: dict[str, object]) -> dict[str, object]:
        for key in ("cors_origins", "CORS_ORIGINS"):
            raw = values.get(key)
            if isinstance(raw, str):
                values[key] = [o.strip() for o in raw.split(",") if o.strip()]
        return values

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "jwt_jwks_url",
        "jwt_issuer",
        "jwt_audience",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `JWT_JWKS_URL=` (a blank line in .env, an empty ConfigMap value) means unset: as "" it
        # passed the production check below while tokens were verified with the dev secret.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _fail_fast(self) -> Self:
        if not self.database_url.startswith("postgresql+asyncpg://"):
            raise ValueError(
                f"{self.service_name.upper()}_DATABASE_URL must start with postgresql+asyncpg://"
            )
        if not self.kafka_bootstrap_servers.strip():
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS must name at least one broker (host:port)")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL=SASL_* needs KAFKA_SASL_MECHANISM, "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if self.crm_env is Environment.production:
            if self.jwt_jwks_url is None and (
                self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32
            ):
                raise ValueError(
                    "CRM_ENV=production needs JWT_JWKS_URL, or a JWT_SECRET of at least 32 "
                    "characters that is not the development default"
                )
            if "*" in self.cors_origins:
                raise ValueError("CORS_ORIGINS='*' is not allowed in production: list the origins")
        elif len(self.jwt_secret) < 16:
            raise ValueError("JWT_SECRET must be at least 16 characters")
        return self
