"""Complaints service settings."""

from datetime import timedelta

from pydantic import Field

from shared.settings import ServiceSettings


class ComplaintsSettings(ServiceSettings):
    service_name: str = "complaints"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_complaints",
        validation_alias="COMPLAINTS_DATABASE_URL",
    )
    max_clock_skew_seconds: int = Field(
        300,
        ge=0,
        le=86_400,
        validation_alias="COMPLAINTS_MAX_CLOCK_SKEW_SECONDS",
        description="How far ahead of the service's clock an intake's received_at may lie (the "
        "sender's clock drifts); it is then recorded as received now",
    )
    sla_check_interval_seconds: float = Field(
        60.0, gt=0, le=3600, validation_alias="COMPLAINTS_SLA_CHECK_INTERVAL_SECONDS"
    )
    # Advisory locks per customer live in the shared lock table: keep batches well under its size.
    sla_check_batch_size: int = Field(
        500, ge=1, le=2000, validation_alias="COMPLAINTS_SLA_CHECK_BATCH_SIZE"
    )

    @property
    def max_clock_skew(self) -> timedelta:
        return timedelta(seconds=self.max_clock_skew_seconds)
