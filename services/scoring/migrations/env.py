"""Alembic environment of the scoring database (one history per service)."""

from services.scoring.models import Base
from shared.db import run_alembic_env

run_alembic_env(Base.metadata)
