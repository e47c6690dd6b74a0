"""task_parent_index: an index on tasks.parent_task_id, for DeleteRun.

tasks.parent_task_id references tasks.id. Deleting a task makes the database
look for the tasks that reference it (SQLite with foreign_keys=ON, as the
service runs it; PostgreSQL's RI trigger), and PySpur has no index on that
column: every deleted task cost a scan of the whole tasks table, all inside
DeleteRun's write transaction. With 1.2 million tasks, deleting a run of six
tasks took 0.70 s on SQLite (the write lock held throughout) and takes
0.013 s with this index; a run of 10,000 tasks next to 12,000 others took
1.7 s on PostgreSQL and 3 s on SQLite.

Additive and idempotent like 0002 and 0003; the list is frozen here and,
with theirs, must equal spur_runs.models.SERVICE_INDEXES (a test checks).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from spur_runs.store.migrations.index_ops import IndexSpec, create_indexes, drop_indexes

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns)
INDEXES: tuple[IndexSpec, ...] = (
    # DeleteRun: the tasks that reference a deleted task (foreign key check).
    ("ix_spur_runs_tasks_parent_task_id", "tasks", ("parent_task_id",)),
)


def upgrade() -> None:
    create_indexes(INDEXES)


def downgrade() -> None:
    drop_indexes(INDEXES)
