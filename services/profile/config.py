"""Profile service settings."""

from pydantic import Field

from shared.settings import ServiceSettings


class ProfileSettings(ServiceSettings):
    service_name: str = "profile"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_profile",
        validation_alias="PROFILE_DATABASE_URL",
    )
    base_currency: str = Field("USD", pattern=r"^[A-Z]{3}$", validation_alias="BASE_CURRENCY")
