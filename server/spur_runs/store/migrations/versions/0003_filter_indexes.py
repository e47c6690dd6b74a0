"""filter_indexes: indexes for ListRuns' workflow_id and status filters.

With them a filtered page walks the runs it shows, newest first, from an
index range (`workflow_id = ? AND start_time <= cursor`), instead of walking
every run by start_time and filtering, or sorting all of a workflow's runs:
on 200,000 runs the first page of a status only old runs have took 65 ms on
PostgreSQL (36 ms on SQLite) and takes 0.02 ms (0.2 ms). parent_only gets a
partial index of the top-level runs: PostgreSQL cannot order by 0002's
(parent_run_id, start_time, _intid) under `parent_run_id IS NULL` (SQLite
can) and would walk all runs by start_time skipping the children: with nine
children per top-level run, 0.39 ms a page against 0.07 ms, and the gap
grows with the batches. run_type and the time range use the (start_time,
_intid) index: run types are few and common, an index of their own would
cost PySpur's writes more than it saves our reads.

Additive and idempotent like 0002; the list is frozen here and, with 0002's,
must equal spur_runs.models.SERVICE_INDEXES (a test checks).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from spur_runs.store.migrations.index_ops import IndexSpec, create_indexes, drop_indexes

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns), and the predicate of the partial ones below.
INDEXES: tuple[IndexSpec, ...] = (
    # ListRuns?workflow_id=: a workflow's runs, newest first.
    ("ix_spur_runs_runs_workflow_start_time", "runs", ("workflow_id", "start_time", "_intid")),
    # ListRuns?status=: the runs in one status, newest first.
    ("ix_spur_runs_runs_status_start_time", "runs", ("status", "start_time", "_intid")),
    # ListRuns?parent_only=true: the top-level runs, newest first.
    ("ix_spur_runs_runs_top_start_time", "runs", ("start_time", "_intid")),
)
WHERE = {"ix_spur_runs_runs_top_start_time": "parent_run_id IS NULL"}


def upgrade() -> None:
    create_indexes(INDEXES, WHERE)


def downgrade() -> None:
    drop_indexes(INDEXES)
