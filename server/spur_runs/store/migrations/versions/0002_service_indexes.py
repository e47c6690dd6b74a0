"""service_indexes: the indexes our queries need and PySpur does not create.

Additive and idempotent (migrations/index_ops.py: CREATE INDEX
CONCURRENTLY on PostgreSQL, which blocks none of PySpur's writes, and
rebuilds an index an interrupted build left INVALID; CREATE INDEX IF NOT
EXISTS on SQLite): run on a database PySpur made, this is all that changes
in it.
The list is frozen here as it was when this revision was written; it must
equal spur_runs.models.SERVICE_INDEXES (a test checks), and an index added
there later needs a new revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from spur_runs.store.migrations.index_ops import IndexSpec, create_indexes, drop_indexes

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns)
INDEXES: tuple[IndexSpec, ...] = (
    # A run's tasks, oldest first (tasks.run_id has no index in PySpur).
    ("ix_spur_runs_tasks_run_id", "tasks", ("run_id", "_intid")),
    # ListRuns: newest first, ties broken by _intid (keyset pagination).
    ("ix_spur_runs_runs_start_time", "runs", ("start_time", "_intid")),
    # GetChildRuns: a parent's children, newest first.
    ("ix_spur_runs_runs_parent_start_time", "runs", ("parent_run_id", "start_time", "_intid")),
)


def upgrade() -> None:
    create_indexes(INDEXES)


def downgrade() -> None:
    drop_indexes(INDEXES)
