"""SQL over PySpur's tables. Knows SQLAlchemy, nothing of gRPC.

Every function takes a session scope (a Core connection inside a transaction)
and never commits: the caller owns the transaction (db.Database.read / write).
Fixed statements are built once, at import, with bound parameters: building
a select() costs more than SQLite takes to run it. Costs are bounded by what a response
shows: a run's tasks are read with the run in one more statement whatever
their number, a page of runs reads all its tasks in one batched statement, and
list pages use keyset conditions that the indexes in models.SERVICE_INDEXES
serve (a deep page costs what the first one costs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Row,
    bindparam,
    case,
    column,
    delete,
    func,
    inspect,
    or_,
    select,
    table,
    true,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import ColumnElement, Select

from ..errors import FailedPrecondition, NotFound
from . import run_tree
from .models import Run, RunStatus, Task, TaskStatus, WorkflowVersion

# Most tasks embedded in one Run message: GetRun, and each run of a list page.
# Beyond it, Run.task_count tells the client to page with GetRunTasks.
TASKS_PER_RUN = 1000
TASKS_PER_LISTED_RUN = 100

RUN_COLUMNS = (
    Run._intid,
    Run.id,
    Run.workflow_id,
    Run.workflow_version_id,
    Run.parent_run_id,
    Run.status,
    Run.run_type,
    Run.initial_inputs,
    Run.input_dataset_id,
    Run.start_time,
    Run.end_time,
    Run.outputs,
    Run.output_file_id,
    # Key of the immutable version data (definition parsed once, cached).
    WorkflowVersion.definition_hash.label("version_hash"),
)

TASK_COLUMNS = (
    Task._intid,
    Task.id,
    Task.run_id,
    Task.node_id,
    Task.parent_task_id,
    Task.status,
    Task.inputs,
    Task.outputs,
    Task.error,
    Task.start_time,
    Task.end_time,
    Task.subworkflow,
    Task.subworkflow_output,
)

VERSION_COLUMNS = (
    WorkflowVersion.id,
    WorkflowVersion.workflow_id,
    WorkflowVersion.version,
    WorkflowVersion.name,
    WorkflowVersion.description,
    WorkflowVersion.definition,
    WorkflowVersion.definition_hash,
    WorkflowVersion.created_at,
    WorkflowVersion.updated_at,
)


# A result row read by attribute (row.id, row.status): SQLAlchemy's Row, or
# the RunRow/TaskRow tuples that get_run cuts its joined rows into.
AnyRow = Any


@dataclass
class RunRecord:
    """A run row with what its message needs from the tasks table."""

    row: AnyRow
    tasks: list[AnyRow] = field(default_factory=list)
    task_count: int = 0
    completed_count: int = 0
    # node ids of the run's PAUSED tasks (for is_downstream_of_pause)
    paused_nodes: frozenset[str] = frozenset()

    @property
    def version_key(self) -> tuple[str, str] | None:
        return version_key(self.row)


def version_key(row: AnyRow) -> tuple[str, str] | None:
    """Cache key of a run row's workflow version: (id, definition_hash)."""
    if row.workflow_version_id is None or row.version_hash is None:
        return None
    return (row.workflow_version_id, row.version_hash)


@dataclass(frozen=True)
class RunFilter:
    """ListRuns' filters, ANDed; a field left at its default matches every
    run. Times are naive UTC, as stored (storage.md)."""

    workflow_id: str | None = None
    statuses: frozenset[RunStatus] = frozenset()
    run_type: str | None = None
    parent_only: bool = False
    start_after: datetime | None = None  # inclusive
    start_before: datetime | None = None  # exclusive

    @property
    def timed_only(self) -> bool:
        """Runs without a start_time never match a time filter."""
        return self.start_after is not None or self.start_before is not None

    @property
    def shape(self) -> FilterShape:
        """Which filters are set: what the statement's text depends on (the
        values are bound parameters, see params)."""
        return (
            self.workflow_id is not None,
            bool(self.statuses),
            self.run_type is not None,
            self.parent_only,
            self.start_after is not None,
            self.start_before is not None,
        )

    def params(self) -> dict[str, Any]:
        """The values of the parameters that _conditions(self.shape) binds."""
        return {
            "f_workflow_id": self.workflow_id,
            # Sorted: the same filter gives the same parameters.
            "f_statuses": sorted(self.statuses, key=lambda s: s.value),
            "f_run_type": self.run_type,
            "f_start_after": self.start_after,
            "f_start_before": self.start_before,
        }


# (workflow_id, statuses, run_type, parent_only, start_after, start_before) set?
FilterShape = tuple[bool, bool, bool, bool, bool, bool]


def _conditions(shape: FilterShape) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a filter shape, with bound parameters."""
    workflow_id, statuses, run_type, parent_only, start_after, start_before = shape
    where: list[ColumnElement[bool]] = []
    if workflow_id:
        where.append(Run.workflow_id == bindparam("f_workflow_id"))
    if statuses:
        where.append(Run.status.in_(bindparam("f_statuses", expanding=True)))
    if run_type:
        where.append(Run.run_type == bindparam("f_run_type"))
    if parent_only:
        where.append(Run.parent_run_id.is_(None))
    if start_after:
        where.append(Run.start_time >= bindparam("f_start_after"))
    if start_before:
        where.append(Run.start_time < bindparam("f_start_before"))
    return where


NO_FILTER = RunFilter()


@dataclass(frozen=True)
class RunCursor:
    """Position after which a run listing continues (see paging.py)."""

    start_time: datetime | None
    intid: int


def _runs_select() -> Select[Any]:
    return select(*RUN_COLUMNS).outerjoin(
        WorkflowVersion, WorkflowVersion.id == Run.workflow_version_id
    )


# A page token's _intid is compared as a BIGINT: paging.py accepts any
# 64-bit position, and PostgreSQL refuses to cast one beyond PySpur's 32-bit
# keys to INTEGER (int4 < int8 is still served by the integer index).
_CURSOR_ID = BigInteger()

_RUN_BY_ID = _runs_select().where(Run.id == bindparam("run_id"))
_INTID_BY_ID = select(Run._intid).where(Run.id == bindparam("run_id"))
_TASKS_OF_RUN = (
    select(*TASK_COLUMNS)
    .where(Task.run_id == bindparam("run_id"))
    .order_by(Task._intid)
    .limit(bindparam("limit"))
)
_TASKS_OF_RUN_AFTER = (
    select(*TASK_COLUMNS)
    .where(Task.run_id == bindparam("run_id"), Task._intid > bindparam("after", type_=_CURSOR_ID))
    .order_by(Task._intid)
    .limit(bindparam("limit"))
)
# The first `limit` tasks of each of several runs, in one statement.
_NUMBERED_TASKS = (
    select(
        *TASK_COLUMNS,
        func.row_number().over(partition_by=Task.run_id, order_by=Task._intid).label("n"),
    )
    .where(Task.run_id.in_(bindparam("run_ids", expanding=True)))
    .subquery()
)
_TASKS_OF_RUNS = (
    select(*(_NUMBERED_TASKS.c[c.key] for c in TASK_COLUMNS))
    .where(_NUMBERED_TASKS.c.n <= bindparam("limit"))
    .order_by(_NUMBERED_TASKS.c.run_id, _NUMBERED_TASKS.c._intid)
)
# GetRun's one statement: the run joined with its first tasks, oldest first.
# The tasks are a LIMITed subquery of their own, which walks the (run_id,
# _intid) index and stops at the limit: joined directly, PostgreSQL read and
# sorted all of a run's tasks before the limit (145 ms for 200,000 tasks,
# against 3 ms). The run's own JSON columns come with the first row only (the
# join repeats the rest of the run's columns on every task row: cheap);
# parsed and sent once per task row, a large `outputs` of a run with 1,000
# tasks would cost 1,000 times its size. The first row is found in the page
# itself (a CTE of at most 1,001 rows), not in the tasks table, where the
# planner may walk another index to find a run's first task.
_TASK_PAGE = _TASKS_OF_RUN.cte("task_page")
_FIRST_TASK = select(func.min(_TASK_PAGE.c._intid)).scalar_subquery()
_IS_FIRST = or_(_TASK_PAGE.c._intid.is_(None), _TASK_PAGE.c._intid == _FIRST_TASK)
_RUN_WITH_TASKS = (
    select(
        *(
            case((_IS_FIRST, c), else_=None).label(c.key)
            if c.key in ("initial_inputs", "outputs")
            else c
            for c in RUN_COLUMNS
        ),
        *(_TASK_PAGE.c[c.key].label(f"task_{c.key}") for c in TASK_COLUMNS),
    )
    .select_from(Run)
    .outerjoin(WorkflowVersion, WorkflowVersion.id == Run.workflow_version_id)
    .outerjoin(_TASK_PAGE, true())
    .where(Run.id == bindparam("run_id"))
    .order_by(_TASK_PAGE.c._intid)
)


def _row_type(name: str, keys: Sequence[str]) -> type[tuple[Any, ...]]:
    """A tuple type whose items are also read by name, as namedtuple makes
    them (which refuses names such as `_intid`)."""
    namespace: dict[str, Any] = {"__slots__": ()}
    namespace.update((key, property(itemgetter(i))) for i, key in enumerate(keys))
    return type(name, (tuple,), namespace)


# Rows of that statement, cut in two, with the attribute names of a run row
# and of a task row (what convert reads).
RunRow = _row_type("RunRow", [c.key for c in RUN_COLUMNS])
TaskRow = _row_type("TaskRow", [c.key for c in TASK_COLUMNS])
_PAUSED_NODES = select(Task.node_id).where(
    Task.run_id == bindparam("run_id"), Task.status == TaskStatus.PAUSED
)


def get_run_row(conn: Connection, run_id: str) -> Row[Any]:
    """The run's row without its tasks; NotFound when there is no such run."""
    row = conn.execute(_RUN_BY_ID, {"run_id": run_id}).one_or_none()
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return row


class MoreStatementsNeeded(Exception):
    """get_run(..., single_statement=True) met a run whose counts need more
    statements (more than TASKS_PER_RUN tasks): read it again in a
    transaction (db.Database.read), where they share the snapshot."""


def get_run(
    conn: Connection, run_id: str, *, with_tasks: bool = True, single_statement: bool = False
) -> RunRecord:
    """A run with its first TASKS_PER_RUN tasks, in one statement (which is
    one snapshot without a transaction around it: db.Database.read_one);
    two more for a run with more tasks than that, which count all of them
    (MoreStatementsNeeded instead, with `single_statement`)."""
    if not with_tasks:  # RUN_VIEW_BASIC: no statement reads the tasks table
        return RunRecord(get_run_row(conn, run_id))
    rows = conn.execute(_RUN_WITH_TASKS, {"run_id": run_id, "limit": TASKS_PER_RUN + 1}).all()
    if not rows:
        raise NotFound(f"run {run_id} not found")
    split = len(RUN_COLUMNS)
    record = RunRecord(RunRow(rows[0][:split]))
    if rows[0][split] is not None:  # LEFT JOIN: a run without tasks gives one row of NULLs
        record.tasks = [TaskRow(row[split:]) for row in rows]
    if _count(record, TASKS_PER_RUN):
        if single_statement:
            raise MoreStatementsNeeded(run_id)
        _count_tasks(conn, [record])
    return record


def get_runs(conn: Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    """The runs of `run_ids` that exist, as get_run reads them (tasks capped
    at TASKS_PER_RUN, counts over all of them), in two statements whatever
    their number; the caller keeps `run_ids` to a sane size."""
    rows = list(conn.execute(_runs_select().where(Run.id.in_(run_ids))))
    return _attach_tasks(conn, rows, TASKS_PER_RUN)


def require_run(conn: Connection, run_id: str) -> int:
    """The run's _intid; NotFound when there is no such run."""
    intid = conn.execute(_INTID_BY_ID, {"run_id": run_id}).scalar_one_or_none()
    if intid is None:
        raise NotFound(f"run {run_id} not found")
    return intid


def list_runs(
    conn: Connection,
    *,
    limit: int,
    after: RunCursor | None = None,
    offset: int = 0,
    parent_run_id: str | None = None,
    filters: RunFilter = NO_FILTER,
    with_tasks: bool = True,
) -> tuple[list[RunRecord], bool]:
    """A page of runs, newest start_time first, runs without one last.

    Pages by keyset (`after`) or by `offset`. Returns the page and whether
    more runs follow. Runs with a start_time and runs without one are read by
    two index-friendly queries (one range each) rather than one query whose
    NULLS LAST ordering no index of both databases can serve. Without
    `with_tasks` (RUN_VIEW_BASIC) no statement reads the tasks table.
    """
    cursor = "none" if after is None else ("timed" if after.start_time is not None else "untimed")
    timed, untimed, timed_count = _page_queries(filters.shape, parent_run_id is not None, cursor)
    params = filters.params()
    params["parent_run_id"] = parent_run_id
    if after is not None:
        params["after_time"], params["after_intid"] = after.start_time, after.intid
    want = limit + 1  # one more than the page tells whether another follows
    rows: list[Row[Any]] = []
    if timed is not None:
        rows = list(conn.execute(timed, {**params, "offset": offset, "limit": want}))
        if not rows and offset:
            # The offset lies past the timed runs: continue into the rest.
            offset -= conn.execute(timed_count, params).scalar_one()
        else:
            offset = 0
    if len(rows) < want and not filters.timed_only:
        more = {**params, "offset": offset, "limit": want - len(rows)}
        rows.extend(conn.execute(untimed, more))
    page = rows[:limit]
    if with_tasks:
        records = _attach_tasks(conn, page, TASKS_PER_LISTED_RUN)
    else:
        records = [RunRecord(row) for row in page]
    return records, len(rows) > limit


@functools.cache
def _page_queries(
    shape: FilterShape, with_parent: bool, cursor: str
) -> tuple[Select[Any] | None, Select[Any], Select[Any]]:
    """list_runs' statements for one form of request, built once: building a
    select() and its cache key costs more than SQLite takes to run it. There
    are at most 2**6 filter shapes x 2 x 3 cursor kinds. Returns the query of
    the runs with a start_time (None when the cursor is past them), the query
    of the runs without one, and the count of the former."""
    where = _conditions(shape)
    if with_parent:
        where.append(Run.parent_run_id == bindparam("parent_run_id"))
    has_time = Run.start_time.is_not(None)
    timed: Select[Any] | None = None
    if cursor != "untimed":
        timed = _runs_select().where(has_time, *where)
        if cursor == "timed":
            # (start_time, _intid) < (t, i), written so that both planners
            # see the plain range `start_time <= t` and walk the index from
            # the cursor. The textbook `start_time < t OR (start_time = t AND
            # _intid < i)` makes SQLite merge two index scans and sort
            # everything older than the cursor: 1.1 s for page 2 of 1M runs.
            at = bindparam("after_time", type_=Run.start_time.type)
            intid = bindparam("after_intid", type_=_CURSOR_ID)
            timed = timed.where(Run.start_time <= at, or_(Run.start_time < at, Run._intid < intid))
        timed = (
            timed.order_by(Run.start_time.desc(), Run._intid.desc())
            .offset(bindparam("offset"))
            .limit(bindparam("limit"))
        )
    untimed = _runs_select().where(Run.start_time.is_(None), *where)
    if cursor == "untimed":
        untimed = untimed.where(Run._intid < bindparam("after_intid", type_=_CURSOR_ID))
    untimed = (
        untimed.order_by(Run._intid.desc()).offset(bindparam("offset")).limit(bindparam("limit"))
    )
    timed_count = select(func.count()).select_from(Run).where(has_time, *where)
    return timed, untimed, timed_count


def count_runs(conn: Connection, filters: RunFilter = NO_FILTER) -> int:
    """How many runs match `filters` (ListRuns' total_size): one COUNT."""
    return int(conn.execute(_count_query(filters.shape), filters.params()).scalar_one())


@functools.cache
def _count_query(shape: FilterShape) -> Select[Any]:
    return select(func.count()).select_from(Run).where(*_conditions(shape))


def list_tasks(
    conn: Connection, run_id: str, *, limit: int, after_intid: int | None = None
) -> tuple[list[Row[Any]], frozenset[str], bool]:
    """A page of a run's tasks, oldest first, the node ids of the run's PAUSED
    tasks, and whether more tasks follow."""
    if after_intid is None:
        query, params = _TASKS_OF_RUN, {"run_id": run_id, "limit": limit + 1}
    else:
        query = _TASKS_OF_RUN_AFTER
        params = {"run_id": run_id, "limit": limit + 1, "after": after_intid}
    rows = list(conn.execute(query, params))
    paused = frozenset(conn.execute(_PAUSED_NODES, {"run_id": run_id}).scalars())
    return rows[:limit], paused, len(rows) > limit


def _attach_tasks(conn: Connection, rows: Sequence[Row[Any]], cap: int) -> list[RunRecord]:
    """Load the tasks of all `rows` in one statement, at most `cap` per run;
    counts of runs beyond the cap come from one more aggregate statement."""
    records = {row.id: RunRecord(row) for row in rows}
    if not records:
        return []
    run_ids = list(records)
    if len(run_ids) == 1:
        tasks = conn.execute(_TASKS_OF_RUN, {"run_id": run_ids[0], "limit": cap + 1})
    else:
        tasks = conn.execute(_TASKS_OF_RUNS, {"run_ids": run_ids, "limit": cap + 1})
    for task in tasks:
        records[task.run_id].tasks.append(task)
    cut = [record for record in records.values() if _count(record, cap)]
    if cut:
        _count_tasks(conn, cut)
    return list(records.values())


def _count(record: RunRecord, cap: int) -> bool:
    """Keep the first `cap` tasks of `record` and count them; True when some
    were cut (their counts then come from _count_tasks)."""
    cut = len(record.tasks) > cap
    if cut:
        del record.tasks[cap:]
    record.task_count = len(record.tasks)
    record.completed_count = sum(t.status is TaskStatus.COMPLETED for t in record.tasks)
    record.paused_nodes = frozenset(
        t.node_id for t in record.tasks if t.status is TaskStatus.PAUSED
    )
    return cut


def _count_tasks(conn: Connection, records: list[RunRecord]) -> None:
    """Counts and paused nodes over all tasks of runs whose list was cut."""
    by_id = {r.row.id: r for r in records}
    completed = func.count().filter(Task.status == TaskStatus.COMPLETED)
    for run_id, total, done in conn.execute(
        select(Task.run_id, func.count(), completed)
        .where(Task.run_id.in_(by_id))
        .group_by(Task.run_id)
    ):
        by_id[run_id].task_count, by_id[run_id].completed_count = total, done
    paused: dict[str, set[str]] = {}
    for run_id, node_id in conn.execute(
        select(Task.run_id, Task.node_id).where(
            Task.run_id.in_(by_id), Task.status == TaskStatus.PAUSED
        )
    ):
        paused.setdefault(run_id, set()).add(node_id)
    for run_id, nodes in paused.items():
        by_id[run_id].paused_nodes = frozenset(nodes)


def get_versions(conn: Connection, version_ids: Sequence[str]) -> list[Row[Any]]:
    if not version_ids:
        return []
    return list(
        conn.execute(
            select(*VERSION_COLUMNS).where(WorkflowVersion.id.in_(sorted(set(version_ids))))
        )
    )


def delete_run(conn: Connection, run_id: str) -> int:
    """Delete a run, its child runs (recursively) and all their tasks.

    All or nothing within the caller's transaction. Returns the number of runs
    deleted. NotFound if there is no such run; FailedPrecondition, deleting
    nothing, when rows of other tables still reference one of those runs, or
    when the run is its own ancestor (run_tree.py).
    """
    run_ids = run_tree.subtree(conn, run_id)  # FailedPrecondition on a parent cycle
    if not run_ids:
        raise NotFound(f"run {run_id} not found")
    _refuse_if_referenced(conn, run_ids)
    try:
        conn.execute(delete(Task).where(Task.run_id.in_(run_ids)))
        deleted = conn.execute(delete(Run).where(Run.id.in_(run_ids))).rowcount  # type: ignore[attr-defined]
    except sa_exc.IntegrityError:
        raise FailedPrecondition(
            f"run {run_id} is still referenced by rows of other tables; nothing was deleted"
        ) from None
    if not deleted:
        # Deleted by a concurrent call between our lookup and our delete.
        raise NotFound(f"run {run_id} not found")
    return int(deleted)


# Tables of a PySpur database, other than runs and tasks, whose rows point at
# a run. The Runs API does not own them: a delete that would leave them
# dangling (or destroy them) is refused.
REFERENCING_TABLES = (("messages", "run_id"),)


def _refuse_if_referenced(conn: Connection, run_ids: list[str]) -> None:
    inspector = inspect(conn)
    for name, column_name in REFERENCING_TABLES:
        if not inspector.has_table(name):
            continue
        ref = table(name, column(column_name)).c[column_name]
        found = conn.execute(
            select(ref, func.count()).where(ref.in_(run_ids)).group_by(ref).limit(1)
        ).first()
        if found is not None:
            raise FailedPrecondition(
                f"run {found[0]} is referenced by {found[1]} row(s) of table {name!r} "
                f"(column {column_name!r}); delete or detach them first. Nothing was deleted."
            )
