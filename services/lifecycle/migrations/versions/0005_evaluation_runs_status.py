"""evaluation_runs: a status, written when a run starts and after each chunk

A run used to be recorded once it had finished: a large backfill was a request waited on for
as long as it took (~50 s per million changes), and a run cut short left its moves with no
record. Now a run is recorded when it starts (or, asked for with `Prefer: respond-async`, when
it is asked for, for the worker to run), its counts are written in each chunk's transaction,
and its status says where it stands. Existing runs all finished.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
SWEEP = "lifecycle-sweep"  # requested_by of the scheduled sweep's runs


def upgrade() -> None:
    op.add_column("evaluation_runs", sa.Column("status", sa.String(20), nullable=True))
    op.add_column("evaluation_runs", sa.Column("trigger", sa.String(20), nullable=True))
    op.add_column("evaluation_runs", sa.Column("requested_at", TS, nullable=True))
    op.add_column("evaluation_runs", sa.Column("updated_at", TS, nullable=True))
    op.add_column(
        "evaluation_runs", sa.Column("chunks", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "evaluation_runs",
        sa.Column("last_pass", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("evaluation_runs", sa.Column("error", sa.String(), nullable=True))
    op.execute(
        sa.text(
            "UPDATE evaluation_runs SET status = 'succeeded', requested_at = started_at,"
            " updated_at = finished_at,"
            " trigger = CASE WHEN requested_by = :sweep THEN 'schedule' ELSE 'request' END"
        ).bindparams(sweep=SWEEP)
    )
    for column in ("status", "trigger", "requested_at"):
        op.alter_column("evaluation_runs", column, nullable=False)
    for column in ("started_at", "finished_at", "policy_version"):
        op.alter_column("evaluation_runs", column, nullable=True)
    op.alter_column("evaluation_runs", "moved", server_default=sa.text("'[]'"))
    op.create_index(
        "ix_evaluation_runs_status_requested_at", "evaluation_runs", ["status", "requested_at"]
    )
    op.create_index(
        "ix_evaluation_runs_requested_at_run_id", "evaluation_runs", ["requested_at", "run_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_evaluation_runs_requested_at_run_id", table_name="evaluation_runs")
    op.drop_index("ix_evaluation_runs_status_requested_at", table_name="evaluation_runs")
    # Runs that never finished cannot be kept by the old table (every column was required).
    op.execute("DELETE FROM evaluation_runs WHERE status <> 'succeeded'")
    op.alter_column("evaluation_runs", "moved", server_default=None)
    for column in ("started_at", "finished_at", "policy_version"):
        op.alter_column("evaluation_runs", column, nullable=False)
    for column in ("error", "last_pass", "chunks", "updated_at", "requested_at", "trigger"):
        op.drop_column("evaluation_runs", column)
    op.drop_column("evaluation_runs", "status")
