"""The SQL of WatchRun: cheap fingerprints of many runs at once, and the full
runs of those whose fingerprint moved. Knows SQLAlchemy, nothing of gRPC;
takes a connection inside the caller's transaction, like runs.py (whose
batched run and task queries it reuses, so that a watched run is exactly
what GetRun returns).

PySpur's tables have no updated_at or version column, and its engine (another
process, which knows nothing of us) updates rows in place. So a change is
seen by comparing, per run, a fingerprint of what a watcher could see change:
the run's status, times, outputs and output file, and aggregates over its
tasks (how many; their statuses, weighted by task so that two tasks swapping
statuses still move the sum; how many have started and ended and the latest
such times; the sizes of their inputs, outputs, errors and subworkflow
outputs). Sizes rather than contents keep the query cheap: PostgreSQL's
pg_column_size reads the stored (possibly compressed, TOASTed) length without
decompressing a large LLM output. The price: a rewrite of a JSON value to
another of the very same size, with no status or time changing with it, is
not seen until something else of the run changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from . import runs
from .models import Run, Task, TaskStatus

# Run ids per statement: one statement covers 1,000 watchers, far below
# SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
CHUNK = 1000

Fingerprint = tuple[Any, ...]


class stored_size(FunctionElement[int]):  # noqa: N801 - a SQL function's name
    """Bytes a value takes as stored, without reading it when the database
    can tell (PostgreSQL); the text's length on SQLite, where JSON is TEXT."""

    type = Integer()
    inherit_cache = True


@compiles(stored_size)
def _stored_size(element: stored_size, compiler: SQLCompiler, **kw: Any) -> str:
    return f"length({compiler.process(element.clauses, **kw)})"


@compiles(stored_size, "postgresql")
def _stored_size_pg(element: stored_size, compiler: SQLCompiler, **kw: Any) -> str:
    return f"pg_column_size({compiler.process(element.clauses, **kw)})"


_STATUS_CODE = case(
    *((Task.status == status, code) for code, status in enumerate(TaskStatus, 1)), else_=0
)
_TASK_AGGREGATES = (
    select(
        Task.run_id.label("run_id"),
        func.count().label("tasks"),
        func.sum(_STATUS_CODE).label("statuses"),
        func.sum(_STATUS_CODE * (Task._intid % 1009 + 1)).label("weighted"),
        func.max(Task._intid).label("last_task"),
        func.count(Task.start_time).label("started"),
        func.max(Task.start_time).label("last_start"),
        func.count(Task.end_time).label("ended"),
        func.max(Task.end_time).label("last_end"),
        func.sum(stored_size(Task.inputs)).label("inputs"),
        func.sum(stored_size(Task.outputs)).label("outputs"),
        func.sum(stored_size(Task.error)).label("errors"),
        func.sum(stored_size(Task.subworkflow_output)).label("sub_outputs"),
    )
    .where(Task.run_id.in_(bindparam("task_run_ids", expanding=True)))
    .group_by(Task.run_id)
    .subquery("t")
)
# One row per existing run of the chunk: its own columns, then its tasks'
# aggregates (NULLs for a run without tasks). The task side is grouped over
# the index on tasks(run_id, _intid) (models.SERVICE_INDEXES).
_FINGERPRINTS = (
    select(
        Run.id,
        Run.status,
        Run.start_time,
        Run.end_time,
        stored_size(Run.outputs),
        Run.output_file_id,
        *(c for c in _TASK_AGGREGATES.c if c.key != "run_id"),
    )
    .outerjoin(_TASK_AGGREGATES, _TASK_AGGREGATES.c.run_id == Run.id)
    .where(Run.id.in_(bindparam("run_ids", expanding=True)))
)


# A fingerprint's start_time (the row's third column, after the id).
_START = 1
if _FINGERPRINTS.selected_columns[_START + 1].key != "start_time":
    raise RuntimeError("watch_sql._START no longer names start_time")


def same_run(before: Fingerprint, now: Fingerprint) -> bool:
    """Whether two fingerprints of one run id are of one run. On SQLite a
    deleted newest run's id goes to the next run PySpur starts (its schema
    has no AUTOINCREMENT), and a watch of the old run went on with the new
    one's data (a hostile review, 2026-12-03). PySpur sets a run's
    start_time once, when it makes the run: another start_time is another
    run. A time set where there was none is still the same run."""
    return before[_START] is None or before[_START] == now[_START]


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])


def fingerprints(conn: Connection, run_ids: Sequence[str]) -> dict[str, Fingerprint]:
    """Fingerprint by run id, for those of `run_ids` that exist: one
    statement per CHUNK runs."""
    found: dict[str, Fingerprint] = {}
    for chunk in _chunks(run_ids):
        for row in conn.execute(_FINGERPRINTS, {"run_ids": chunk, "task_run_ids": chunk}):
            found[row[0]] = tuple(row[1:])
    return found


def load_runs(conn: Connection, run_ids: Sequence[str]) -> list[runs.RunRecord]:
    """The runs of `run_ids` that exist, as GetRun reads them (tasks capped at
    runs.TASKS_PER_RUN, counts over all of them), in a few batched
    statements whatever their number."""
    records: list[runs.RunRecord] = []
    for chunk in _chunks(run_ids):
        records += runs.get_runs(conn, chunk)
    return records
