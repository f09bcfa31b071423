"""Lifecycle service settings."""

from pydantic import Field

from shared.settings import ServiceSettings


class LifecycleSettings(ServiceSettings):
    service_name: str = "lifecycle"
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:54320/crm_lifecycle",
        validation_alias="LIFECYCLE_DATABASE_URL",
    )
    # How often the scheduled sweep applies the time rules (one replica at a time).
    sweep_interval_seconds: float = Field(
        60.0, gt=0, le=86_400, validation_alias="LIFECYCLE_SWEEP_INTERVAL_SECONDS"
    )
    # Customers moved per sweep transaction: bounds how long a consumer batch can wait for a
    # customer the sweep holds, and how many sweep events the relay publishes before the
    # batches' (the scheduled sweep pauses between chunks as long as a chunk took).
    sweep_chunk_size: int = Field(
        1_000, ge=100, le=1_000_000, validation_alias="LIFECYCLE_SWEEP_CHUNK_SIZE"
    )
    # How often the worker looks for runs asked for with `Prefer: respond-async` (and for runs
    # a stopped process left unfinished).
    evaluation_poll_seconds: float = Field(
        2.0, gt=0, le=3_600, validation_alias="LIFECYCLE_EVALUATION_POLL_SECONDS"
    )
    # How long the scheduled sweeps that moved nobody stay listed (one a minute; the sweeps
    # that moved customers, and requested runs, stay for good).
    empty_sweep_retention_hours: int = Field(
        168, ge=1, le=87_600, validation_alias="LIFECYCLE_EMPTY_SWEEP_RETENTION_HOURS"
    )
    # How long a low P(alive) score waits for its customer's first lifecycle event (wall clock):
    # scores of customers lifecycle never hears of are deleted after it by the scheduled sweep.
    low_score_retention_days: int = Field(
        30, ge=1, le=3_650, validation_alias="LIFECYCLE_LOW_SCORE_RETENTION_DAYS"
    )
