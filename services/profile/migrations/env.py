"""Alembic environment of the profile database (one history per service)."""

from services.profile.models import Base
from shared.db import run_alembic_env

run_alembic_env(Base.metadata)
