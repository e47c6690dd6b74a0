"""pyspur_schema: the PySpur tables this service serves.

On an empty database it creates `workflows`, `workflow_versions`, `runs` and
`tasks` exactly as spur_runs.models declares them (which mirror PySpur
0.1.18's models): integer `_intid` keys, string ids computed from them,
PySpur's unique constraints, foreign keys and indexes under the names
SQLAlchemy gives them (ix_<table>_<column>), and on PostgreSQL the native enum
types `runstatus` and `taskstatus`.

On a database PySpur made (a `runs` table is there) it creates and alters
nothing: PySpur owns that schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("spur_runs.migrate")

TABLES = ("workflows", "workflow_versions", "runs", "tasks")

RUN_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "PAUSED", "CANCELED")
TASK_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELED", "PAUSED")


def _pyspur_schema_present() -> bool:
    """True when PySpur (or an earlier run of ours) made the tables already.

    A database that has some of our tables but no `runs` is neither empty nor
    PySpur's: we refuse to guess rather than half-create a schema in it.
    """
    if context.is_offline_mode():
        # `spur-runs migrate --sql` looked at the database before (migrate.py);
        # without that, the script is for an empty database.
        return bool(context.config.attributes.get("pyspur_schema_present", False))
    present = set(sa.inspect(op.get_bind()).get_table_names()) & set(TABLES)
    if "runs" in present:
        return True
    if present:
        raise RuntimeError(
            f"the database has the table(s) {', '.join(sorted(present))} but no `runs` table: "
            "it is neither empty nor a database PySpur made; spur-runs migrate will not "
            "create a schema next to it"
        )
    return False


def _id(expression: str) -> sa.Column[str]:
    """The public id computed from `_intid`, e.g. 'R' || _intid.

    STORED on PostgreSQL, as SQLAlchemy renders the models there up to PG 17
    (PG 18 would make it VIRTUAL, and a virtual column cannot be UNIQUE);
    VIRTUAL on SQLite, as the models and PySpur make it there.
    """
    persisted = True if op.get_context().dialect.name == "postgresql" else None
    return sa.Column(
        "id", sa.String(), sa.Computed(expression, persisted=persisted), nullable=False
    )


def upgrade() -> None:
    if _pyspur_schema_present():
        log.info("found PySpur's tables (runs, ...): schema left as it is, nothing created")
        return

    op.create_table(
        "workflows",
        sa.Column("_intid", sa.Integer(), nullable=False),
        _id("'S' || _intid"),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("_intid"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_workflows_created_at", "workflows", ["created_at"])
    op.create_index("ix_workflows_updated_at", "workflows", ["updated_at"])

    op.create_table(
        "workflow_versions",
        sa.Column("_intid", sa.Integer(), nullable=False),
        _id("'SV' || _intid"),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("definition_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"]),
        sa.PrimaryKeyConstraint("_intid"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_workflow_versions_version", "workflow_versions", ["version"])
    op.create_index("ix_workflow_versions_workflow_id", "workflow_versions", ["workflow_id"])
    op.create_index("ix_workflow_versions_created_at", "workflow_versions", ["created_at"])
    op.create_index("ix_workflow_versions_updated_at", "workflow_versions", ["updated_at"])

    op.create_table(
        "runs",
        sa.Column("_intid", sa.Integer(), nullable=False),
        _id("'R' || _intid"),
        sa.Column("workflow_id", sa.String(), nullable=False),
        sa.Column("workflow_version_id", sa.String(), nullable=False),
        sa.Column("parent_run_id", sa.String(), nullable=True),
        # A native enum type `runstatus` on PostgreSQL (created with the
        # table), VARCHAR(9) on SQLite: as SQLAlchemy renders models.RunStatus.
        sa.Column("status", sa.Enum(*RUN_STATUSES, name="runstatus"), nullable=False),
        sa.Column("run_type", sa.String(), nullable=False),
        sa.Column("initial_inputs", sa.JSON(), nullable=True),
        sa.Column("input_dataset_id", sa.String(), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("output_file_id", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"]),
        sa.ForeignKeyConstraint(["workflow_version_id"], ["workflow_versions.id"]),
        sa.ForeignKeyConstraint(["parent_run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("_intid"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_runs_workflow_id", "runs", ["workflow_id"])
    op.create_index("ix_runs_workflow_version_id", "runs", ["workflow_version_id"])
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])
    op.create_index("ix_runs_input_dataset_id", "runs", ["input_dataset_id"])
    op.create_index("ix_runs_start_time", "runs", ["start_time"])

    op.create_table(
        "tasks",
        sa.Column("_intid", sa.Integer(), nullable=False),
        _id("'T' || _intid"),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=False),
        sa.Column("parent_task_id", sa.String(), nullable=True),
        sa.Column("status", sa.Enum(*TASK_STATUSES, name="taskstatus"), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("subworkflow", sa.JSON(), nullable=True),
        sa.Column("subworkflow_output", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["parent_task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("_intid"),
        sa.UniqueConstraint("id"),
    )
    log.info("created the tables %s", ", ".join(TABLES))


def downgrade() -> None:
    # Whether 0001 created these tables or found PySpur's is not recorded, and
    # dropping PySpur's tables would destroy its data: refuse.
    raise RuntimeError(
        "spur-runs will not downgrade below 0001: the tables workflows, workflow_versions, "
        "runs and tasks may be PySpur's own, holding its data; drop them by hand if they "
        "really are to go"
    )
