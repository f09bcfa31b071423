"""Alembic environment of the lifecycle database (one history per service)."""

from services.lifecycle.models import Base
from shared.db import run_alembic_env

run_alembic_env(Base.metadata)
