"""Scoring service settings (the value model's own knobs live in the model policy, via the API)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    service_name: str = "scoring"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_scoring",
        validation_alias="SCORING_DATABASE_URL",
    )
    # The deployment's one currency (the same BASE_CURRENCY profile enforces on purchases);
    # anything in another currency is kept in the ledger but not valued.
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", validation_alias="BASE_CURRENCY")
    nightly_recompute: bool = Field(True, validation_alias="SCORING_NIGHTLY_RECOMPUTE")
    nightly_recompute_hour_utc: int = Field(
        2, ge=0, le=23, validation_alias="SCORING_NIGHTLY_RECOMPUTE_HOUR_UTC"
    )
    # How often the worker looks for requested recomputes (and for the nightly one).
    recompute_poll_seconds: float = Field(
        1.0, gt=0, le=300, validation_alias="SCORING_RECOMPUTE_POLL_SECONDS"
    )
    # Customers written per transaction by a recompute (progress is reported per chunk).
    recompute_chunk_size: int = Field(
        20_000, ge=100, le=200_000, validation_alias="SCORING_RECOMPUTE_CHUNK_SIZE"
    )
    # Chunks a recompute writes at once, each on its own connection (they never share rows).
    recompute_writers: int = Field(2, ge=1, le=8, validation_alias="SCORING_RECOMPUTE_WRITERS")
