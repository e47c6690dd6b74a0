"""service_indexes: the indexes our queries need and PySpur does not create.

Additive and idempotent (CREATE INDEX IF NOT EXISTS, on SQLite and
PostgreSQL): run on a database PySpur made, this is all that changes in it.
The list is frozen here as it was when this revision was written; it must
equal spur_runs.models.SERVICE_INDEXES (a test checks), and an index added
there later needs a new revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("spur_runs.migrate")

# (name, table, columns)
INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # A run's tasks, oldest first (tasks.run_id has no index in PySpur).
    ("ix_spur_runs_tasks_run_id", "tasks", ("run_id", "_intid")),
    # ListRuns: newest first, ties broken by _intid (keyset pagination).
    ("ix_spur_runs_runs_start_time", "runs", ("start_time", "_intid")),
    # GetChildRuns: a parent's children, newest first.
    ("ix_spur_runs_runs_parent_start_time", "runs", ("parent_run_id", "start_time", "_intid")),
)


def _existing(table: str) -> set[str]:
    if context.is_offline_mode():
        return set()
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    for name, table, columns in INDEXES:
        if name in _existing(table):
            log.info("index %s on %s: already there", name, table)
        else:
            log.info("index %s on %s(%s): creating", name, table, ", ".join(columns))
        op.create_index(name, table, list(columns), if_not_exists=True)


def downgrade() -> None:
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table, if_exists=True)
