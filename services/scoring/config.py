"""Scoring service settings."""

from pydantic import Field

from shared.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    service_name: str = "scoring"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_scoring",
        validation_alias="SCORING_DATABASE_URL",
    )
