"""Profile service settings (fail fast on bad values)."""

from __future__ import annotations

from datetime import timedelta
from typing import Self

from pydantic import Field, model_validator

from services.profile import domain
from shared.settings import ServiceSettings


class ProfileSettings(ServiceSettings):
    service_name: str = "profile"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_profile",
        validation_alias="PROFILE_DATABASE_URL",
    )
    base_currency: str = Field(
        "USD",
        pattern=r"^[A-Z]{3}$",
        validation_alias="BASE_CURRENCY",
        description="ISO 4217 code of the deployment's only currency; others are refused",
    )
    default_phone_region: str | None = Field(
        None,
        pattern=r"^[A-Z]{2}$",
        validation_alias="PROFILE_DEFAULT_PHONE_REGION",
        description="ISO 3166 alpha-2 region for phone numbers given without +country code",
    )
    max_clock_skew_seconds: int = Field(
        300,
        ge=0,
        le=86_400,
        validation_alias="PROFILE_MAX_CLOCK_SKEW_SECONDS",
        description="How far in the future a business time may lie (other systems' clocks drift)",
    )
    custom_attributes_max_bytes: int = Field(
        domain.MAX_CUSTOM_ATTRIBUTES_BYTES,
        ge=256,
        le=1024 * 1024,
        validation_alias="PROFILE_CUSTOM_ATTRIBUTES_MAX_BYTES",
    )
    import_chunk_orders: int = Field(
        2000,
        ge=1,
        le=50_000,
        validation_alias="PROFILE_IMPORT_CHUNK_ORDERS",
        description="Orders per transaction during a bulk import (also the progress step)",
    )
    import_max_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        validation_alias="PROFILE_IMPORT_MAX_BYTES",
        description="Largest CSV accepted by POST /v1/imports/purchases",
    )

    @property
    def max_clock_skew(self) -> timedelta:
        return timedelta(seconds=self.max_clock_skew_seconds)

    @model_validator(mode="after")
    def _known_phone_region(self) -> Self:
        import phonenumbers

        region = self.default_phone_region
        if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"PROFILE_DEFAULT_PHONE_REGION={region} is not a region phonenumbers knows"
            )
        return self
