"""Alembic environment of the complaints database (one history per service)."""

from services.complaints.models import Base
from shared.db import run_alembic_env

run_alembic_env(Base.metadata)
