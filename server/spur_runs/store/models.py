"""SQLAlchemy models of the PySpur tables this service reads.

They mirror PySpur 0.1.18's own models (pyspur.models.*) column for column:
same table and column names, ids computed by the database from `_intid`
("R" || _intid ...), PostgreSQL enum types `runstatus` / `taskstatus`. The
service can therefore be pointed at a database PySpur made and serve it as it
is; on an empty database the Alembic migrations create these tables from here.

Two foreign keys of PySpur's `runs` table (to `datasets` and `output_files`)
are left out: those tables belong to parts of PySpur this service does not
serve, and our migrations do not create them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Computed,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RunStatus(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PAUSED = "PAUSED"
    CANCELED = "CANCELED"


class TaskStatus(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    PAUSED = "PAUSED"


class Base(DeclarativeBase):
    metadata = MetaData()


class Workflow(Base):
    __tablename__ = "workflows"

    _intid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement="auto")
    id: Mapped[str] = mapped_column(String, Computed("'S' || _intid"), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String, unique=True, nullable=False)
    description: Mapped[str | None] = mapped_column(String)
    definition: Mapped[Any] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class WorkflowVersion(Base):
    __tablename__ = "workflow_versions"

    _intid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement="auto")
    id: Mapped[str] = mapped_column(String, Computed("'SV' || _intid"), nullable=False, unique=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    workflow_id: Mapped[str] = mapped_column(
        String, ForeignKey("workflows.id"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String, nullable=False)
    description: Mapped[str | None] = mapped_column(String)
    definition: Mapped[Any] = mapped_column(JSON, nullable=False)
    definition_hash: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class Run(Base):
    __tablename__ = "runs"

    _intid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement="auto")
    id: Mapped[str] = mapped_column(String, Computed("'R' || _intid"), nullable=False, unique=True)
    workflow_id: Mapped[str] = mapped_column(
        String, ForeignKey("workflows.id"), nullable=False, index=True
    )
    workflow_version_id: Mapped[str] = mapped_column(
        String, ForeignKey("workflow_versions.id"), nullable=False, index=True
    )
    parent_run_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("runs.id"), nullable=True, index=True
    )
    status: Mapped[RunStatus] = mapped_column(
        Enum(RunStatus, name="runstatus"), nullable=False, default=RunStatus.PENDING
    )
    run_type: Mapped[str] = mapped_column(String, nullable=False)
    initial_inputs: Mapped[Any] = mapped_column(JSON, nullable=True)
    input_dataset_id: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    start_time: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    outputs: Mapped[Any] = mapped_column(JSON, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String, nullable=True)


class Task(Base):
    __tablename__ = "tasks"

    _intid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement="auto")
    id: Mapped[str] = mapped_column(String, Computed("'T' || _intid"), nullable=False, unique=True)
    run_id: Mapped[str] = mapped_column(String, ForeignKey("runs.id"), nullable=False)
    node_id: Mapped[str] = mapped_column(String, nullable=False)
    parent_task_id: Mapped[str | None] = mapped_column(
        String, ForeignKey("tasks.id"), nullable=True
    )
    status: Mapped[TaskStatus] = mapped_column(
        Enum(TaskStatus, name="taskstatus"), nullable=False, default=TaskStatus.PENDING
    )
    inputs: Mapped[Any] = mapped_column(JSON, nullable=True)
    outputs: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(String, nullable=True)
    start_time: Mapped[datetime | None] = mapped_column(DateTime)
    end_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    subworkflow: Mapped[Any] = mapped_column(JSON, nullable=True)
    subworkflow_output: Mapped[Any] = mapped_column(JSON, nullable=True)


# Indexes that our queries need and PySpur does not create. Declared here, they
# attach to the tables above (so `Base.metadata.create_all` in a scratch
# database makes them too), but migration 0001 creates exactly PySpur's
# schema and 0002, 0003, 0004 add these, additively and idempotently, to any database;
# the server warns at start-up when one is missing (see schema_check.py).
SERVICE_INDEXES: tuple[Index, ...] = (
    # A run's tasks, oldest first, and paging through them.
    Index("ix_spur_runs_tasks_run_id", Task.run_id, Task._intid),
    # ListRuns: newest start_time first, ties by _intid (keyset pagination).
    Index("ix_spur_runs_runs_start_time", Run.start_time, Run._intid),
    # GetChildRuns: a parent's children, newest first.
    Index("ix_spur_runs_runs_parent_start_time", Run.parent_run_id, Run.start_time, Run._intid),
    # ListRuns filtered by workflow_id, or by one status: the matching runs,
    # newest first, from one index range (migration 0003).
    Index("ix_spur_runs_runs_workflow_start_time", Run.workflow_id, Run.start_time, Run._intid),
    Index("ix_spur_runs_runs_status_start_time", Run.status, Run.start_time, Run._intid),
    # DeleteRun: the foreign key check of each deleted task looks for the
    # tasks that reference it; without this, a scan of all tasks (0004).
    Index("ix_spur_runs_tasks_parent_task_id", Task.parent_task_id),
    # ListRuns?parent_only=true: the top-level runs only, newest first.
    # PostgreSQL cannot order by the parent index above under `IS NULL`.
    Index(
        "ix_spur_runs_runs_top_start_time",
        Run.start_time,
        Run._intid,
        postgresql_where=Run.parent_run_id.is_(None),
        sqlite_where=Run.parent_run_id.is_(None),
    ),
)
