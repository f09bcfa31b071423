"""Lifecycle service settings."""

from pydantic import Field

from shared.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    service_name: str = "lifecycle"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_lifecycle",
        validation_alias="LIFECYCLE_DATABASE_URL",
    )
