"""Complaints service settings."""

from pydantic import Field

from shared.settings import ServiceSettings


class ComplaintsSettings(ServiceSettings):
    service_name: str = "complaints"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_complaints",
        validation_alias="COMPLAINTS_DATABASE_URL",
    )
