"""Reads and deletes of runs over PySpur's tables. Knows SQLAlchemy,
nothing of gRPC.

Every function takes a session scope (a Core connection inside a transaction)
and never commits: the caller owns the transaction (db.Database.read / write).
The statements are in statements.py; the hot reads run them on the DBAPI
cursor (hot.py). Costs are bounded by what a response shows: a run's tasks
are read with the run in one statement whatever their number (two more for
a run with more than TASKS_PER_RUN); a page of runs with its tasks is one
statement too (list_runs_in_one_statement), or, for the pages that one
cannot finish, two in a transaction (list_runs: the page, then all its
tasks in one batched statement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Row, column, delete, func, inspect, select, table
from sqlalchemy import exc as sa_exc

from ..errors import Aborted, FailedPrecondition, NotFound
from . import hot, libpq, run_tree
from .models import Run, RunStatus, Task, TaskStatus, WorkflowVersion
from .statements import (
    INTID_BY_ID,
    NO_FILTER,
    PAUSED_NODES,
    RUN_BY_ID,
    RUN_COLUMNS,
    TASK_COLUMNS,
    TASKS_OF_RUN,
    TASKS_OF_RUN_AFTER,
    TASKS_PER_LISTED_RUN,
    TASKS_PER_RUN,
    VERSION_COLUMNS,
    RunCursor,
    RunFilter,
    RunRow,
    TaskRow,
    count_query,
    page_queries,
    page_with_tasks,
    run_with_tasks,
    runs_select,
    tasks_of_runs,
)

__all__ = [
    "NO_FILTER",
    "TASKS_PER_LISTED_RUN",
    "TASKS_PER_RUN",
    "AnyRow",
    "MoreStatementsNeeded",
    "RunCursor",
    "RunFilter",
    "RunRecord",
    "count_runs",
    "delete_run",
    "get_run",
    "get_run_row",
    "get_runs",
    "get_versions",
    "has_failed_and_none_unfinished",
    "list_runs",
    "list_tasks",
    "require_run",
    "version_key",
]

# A result row read by attribute (row.id, row.status): the RunRow and TaskRow
# tuples of statements.py, or SQLAlchemy's Row.
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


def get_run_row(conn: Connection, run_id: str) -> AnyRow:
    """The run's row without its tasks; NotFound when there is no such run."""
    rows = RUN_BY_ID.rows(conn, {"run_id": run_id})
    if not rows:
        raise NotFound(f"run {run_id} not found")
    return RunRow(rows[0])


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
    params = {"run_id": run_id, "task_limit": TASKS_PER_RUN + 1}
    rows = run_with_tasks(conn.dialect.name).rows(conn, params)
    if not rows:
        raise NotFound(f"run {run_id} not found")
    split = len(RUN_COLUMNS)
    record = RunRecord(RunRow(rows[0][:split]))
    record.tasks = [TaskRow(t) for t in TASKS_OF_RUN.unpack(conn.dialect, rows[0][split])]
    if _count(record, TASKS_PER_RUN):
        if single_statement:
            raise MoreStatementsNeeded(run_id)
        _count_tasks(conn, [record])
    return record


def get_runs(conn: Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    """The runs of `run_ids` that exist, as get_run reads them (tasks capped
    at TASKS_PER_RUN, counts over all of them), in two statements whatever
    their number; the caller keeps `run_ids` to a sane size."""
    rows = list(conn.execute(runs_select().where(Run.id.in_(run_ids))))
    return _attach_tasks(conn, rows, TASKS_PER_RUN)


def require_run(conn: Connection, run_id: str) -> int:
    """The run's _intid; NotFound when there is no such run."""
    rows = INTID_BY_ID.rows(conn, {"run_id": run_id})
    if not rows:
        raise NotFound(f"run {run_id} not found")
    return int(rows[0][0])


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
    cursor, params = _page_params(conn, after, parent_run_id, filters)
    timed, untimed, timed_count = page_queries(filters.shape, parent_run_id is not None, cursor)
    want = limit + 1  # one more than the page tells whether another follows
    rows: list[tuple[Any, ...]] = []
    if timed is not None:
        rows = timed.rows(conn, {**params, "offset": offset, "limit": want})
        if not rows and offset:
            # The offset lies past the timed runs: continue into the rest.
            offset -= conn.execute(timed_count, params).scalar_one()
        else:
            offset = 0
    if len(rows) < want and not filters.timed_only:
        more = {**params, "offset": offset, "limit": want - len(rows)}
        rows.extend(untimed.rows(conn, more))
    page = [RunRow(row) for row in rows[:limit]]
    if with_tasks:
        records = _attach_tasks(conn, page, TASKS_PER_LISTED_RUN)
    else:
        records = [RunRecord(row) for row in page]
    return records, len(rows) > limit


def list_runs_in_one_statement(
    conn: Connection,
    *,
    limit: int,
    after: RunCursor | None = None,
    offset: int = 0,
    parent_run_id: str | None = None,
    filters: RunFilter = NO_FILTER,
) -> tuple[list[RunRecord], bool] | None:
    """list_runs(..., with_tasks=True) in one statement (statements.
    page_with_tasks), which is one snapshot by itself (db.Database.read_one).
    None, having read one page of timed runs, when the page needs more
    statements: it goes on into the runs without a start_time (or its
    offset lies past the timed ones), or a run has more than
    TASKS_PER_LISTED_RUN tasks (counted over all of them); list_runs in a
    transaction then reads it again."""
    cursor, params = _page_params(conn, after, parent_run_id, filters)
    dialect = conn.dialect
    statement = page_with_tasks(filters.shape, parent_run_id is not None, cursor, dialect.name)
    if statement is None:
        return None
    want = limit + 1  # one more than the page tells whether another follows
    params.update(offset=offset, limit=want, task_limit=TASKS_PER_LISTED_RUN + 1)
    split = len(RUN_COLUMNS)
    rows = statement.rows(conn, params)  # a row per run, its tasks packed
    if len(rows) < want and not filters.timed_only:
        return None
    page: list[RunRecord] = []
    for row in rows[:limit]:  # the run past the page only says that more follow
        record = RunRecord(RunRow(row[:split]))
        record.tasks = [TaskRow(task) for task in TASKS_OF_RUN.unpack(dialect, row[split])]
        page.append(record)
    if any(_count(record, TASKS_PER_LISTED_RUN) for record in page):
        return None
    return page, len(rows) > limit


def _page_params(
    conn: Connection, after: RunCursor | None, parent_run_id: str | None, filters: RunFilter
) -> tuple[str, dict[str, Any]]:
    """The kind of cursor a page continues from (page_queries' `cursor`) and
    the parameters its statements share: the filters', the parent's, the
    cursor's."""
    params = _filter_params(conn, filters)
    params["parent_run_id"] = parent_run_id
    if after is None:
        return "none", params
    params["after_time"], params["after_intid"] = after.start_time, after.intid
    return ("timed" if after.start_time is not None else "untimed"), params


def count_runs(conn: Connection, filters: RunFilter = NO_FILTER) -> int:
    """How many runs match `filters` (ListRuns' total_size): one COUNT."""
    return int(conn.execute(count_query(filters.shape), _filter_params(conn, filters)).scalar_one())


# conn.info key: set once the database's runstatus type has every RunStatus.
_ALL_RUN_STATUSES = "spur_runs.all_run_statuses"
_STATUS_LABELS = "SELECT unnest(enum_range(NULL::runstatus))::text"
_STATUS_LABELS_LIBPQ = libpq.Prepared(_STATUS_LABELS)


def _filter_params(conn: Connection, filters: RunFilter) -> dict[str, Any]:
    """filters.params(), with each status the database's `runstatus` type
    lacks bound as NULL (matches no run). PySpur 0.1.18's own migrations make
    that type without CANCELED (000 creates four labels, 007 adds PAUSED
    only), and PostgreSQL refuses a value outside the type: the whole
    ListRuns would fail INTERNAL where no run can have that status. The
    statement and its index stay the same; only the value changes."""
    if (
        not filters.statuses
        or conn.dialect.name != "postgresql"
        or conn.info.get(_ALL_RUN_STATUSES)
    ):
        return filters.params()
    known = run_status_labels(conn)
    if known >= {status.value for status in RunStatus}:
        # Labels are never removed: a complete type stays complete. An
        # incomplete one is read again, so a label PySpur's next migration
        # adds is seen at once.
        conn.info[_ALL_RUN_STATUSES] = True
    return filters.params(known)


def run_status_labels(conn: Connection) -> set[str]:
    """The labels of PostgreSQL's `runstatus` type in this database. Through
    hot.fetch, as the page's own statement: in Database.read_one a caller's
    deadline bounds only such statements (libpq.py)."""
    return {row[0] for row in hot.fetch(conn, _STATUS_LABELS, {}, _STATUS_LABELS_LIBPQ)}


def list_tasks(
    conn: Connection, run_id: str, *, limit: int, after_intid: int | None = None
) -> tuple[list[AnyRow], frozenset[str], bool]:
    """A page of a run's tasks, oldest first, the node ids of the run's PAUSED
    tasks, and whether more tasks follow."""
    if after_intid is None:
        rows = TASKS_OF_RUN.rows(conn, {"run_id": run_id, "limit": limit + 1})
    else:
        params = {"run_id": run_id, "limit": limit + 1, "after": after_intid}
        rows = TASKS_OF_RUN_AFTER.rows(conn, params)
    more = len(rows) > limit
    page: list[AnyRow] = [TaskRow(row) for row in rows[:limit]]
    if after_intid is None and not more:
        # The page holds all of the run's tasks: its paused ones are all
        # there is (the common case; one statement fewer).
        paused = frozenset(t.node_id for t in page if t.status is TaskStatus.PAUSED)
    else:
        paused = frozenset(row[0] for row in PAUSED_NODES.rows(conn, {"run_id": run_id}))
    return page, paused, more


def _attach_tasks(conn: Connection, rows: Sequence[AnyRow], cap: int) -> list[RunRecord]:
    """Load the tasks of all `rows` in one statement, at most `cap` per run;
    counts of runs beyond the cap come from one more aggregate statement."""
    records = {row.id: RunRecord(row) for row in rows}
    if not records:
        return []
    run_ids = list(records)
    if len(run_ids) == 1:
        tasks = TASKS_OF_RUN.rows(conn, {"run_id": run_ids[0], "limit": cap + 1})
    else:
        params: dict[str, Any] = {f"run_{i}": run_id for i, run_id in enumerate(run_ids)}
        params["limit"] = cap + 1
        tasks = tasks_of_runs(len(run_ids)).rows(conn, params)
        tasks.sort(key=_by_intid)  # each run's tasks oldest first
    for values in tasks:
        task: AnyRow = TaskRow(values)
        records[task.run_id].tasks.append(task)
    cut = [record for record in records.values() if _count(record, cap)]
    if cut:
        _count_tasks(conn, cut)
    return list(records.values())


_by_intid = itemgetter(0)  # TASK_COLUMNS[0] is Task._intid
_status_of = itemgetter([c.key for c in TASK_COLUMNS].index("status"))


def _count(record: RunRecord, cap: int) -> bool:
    """Keep the first `cap` tasks of `record` and count them; True when some
    were cut (their counts then come from _count_tasks)."""
    cut = len(record.tasks) > cap
    if cut:
        del record.tasks[cap:]
    record.task_count = len(record.tasks)
    # By index, in C (list.count, map): a generator over the tasks' named
    # fields was ~4% of GetRun's time holding the interpreter lock.
    statuses = list(map(_status_of, record.tasks))
    record.completed_count = statuses.count(TaskStatus.COMPLETED)
    if TaskStatus.PAUSED in statuses:
        record.paused_nodes = frozenset(
            t.node_id for t in record.tasks if t.status is TaskStatus.PAUSED
        )
    return cut


_UNFINISHED = frozenset((TaskStatus.PENDING, TaskStatus.RUNNING))


def has_failed_and_none_unfinished(conn: Connection, record: RunRecord) -> bool:
    """Whether the run of `record` (get_run's, FULL) has a FAILED task and
    no PENDING or RUNNING one, among all of its tasks: PySpur's status poll
    marks such a run FAILED. Its tasks are at hand unless get_run cut them;
    then one statement reads the statuses of all of them, in the caller's
    transaction (the snapshot the record came from)."""
    if len(record.tasks) >= record.task_count:
        statuses = set(map(_status_of, record.tasks))
    else:
        statuses = set(
            conn.scalars(select(Task.status).where(Task.run_id == record.row.id).distinct())
        )
    return TaskStatus.FAILED in statuses and statuses.isdisjoint(_UNFINISHED)


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
    when the run is its own ancestor (run_tree.py); Aborted, deleting
    nothing, when another writer changed the tree meanwhile (retry).
    """
    # FailedPrecondition on a parent cycle; Aborted when PySpur moved a run
    # of the tree meanwhile. Locked until the caller's transaction ends.
    run_ids = run_tree.lock_subtree(conn, run_id)
    if not run_ids:
        raise NotFound(f"run {run_id} not found")
    _refuse_if_referenced(conn, run_ids)
    _refuse_if_tasks_outside_point_in(conn, run_ids)
    # Children before their parents (subtree's order is parents first), in
    # chunks: one IN list of a batch's every run broke the drivers' limits on
    # bound parameters (65,535 for PostgreSQL) and the delete could never
    # run. A chunk's runs are deleted after all of their descendants, so no
    # statement leaves a row pointing at a deleted one.
    children_first = run_ids[::-1]
    chunks = [children_first[i : i + DELETE_CHUNK] for i in range(0, len(run_ids), DELETE_CHUNK)]
    deleted = 0
    try:
        for chunk in chunks:
            conn.execute(delete(Task).where(Task.run_id.in_(chunk)))
        for chunk in chunks:
            deleted += conn.execute(delete(Run).where(Run.id.in_(chunk))).rowcount  # type: ignore[attr-defined]
    except sa_exc.IntegrityError as error:
        # PostgreSQL names the table whose row still points at the tree.
        # Runs or tasks: the checks above found none outside it, so another
        # writer (PySpur starting a task or a child run) added it since,
        # which a retry reads with the tree. (SQLite's BEGIN IMMEDIATE lets
        # no other writer in.) Another table (one of PySpur's that this API
        # does not own): no retry mends that.
        referencing = getattr(getattr(error.orig, "diag", None), "table_name", None)
        if referencing in (Run.__tablename__, Task.__tablename__):
            raise Aborted(
                f"run {run_id}: {referencing} rows that reference it were added while it was "
                "being deleted (PySpur is still writing to it); nothing was deleted. Retry."
            ) from None
        raise FailedPrecondition(
            f"run {run_id} is still referenced by rows of "
            f"{repr(referencing) if referencing else 'another table'}; nothing was deleted"
        ) from None
    if not deleted:
        # Deleted by a concurrent call between our lookup and our delete.
        raise NotFound(f"run {run_id} not found")
    return int(deleted)


# Tables of a PySpur database, other than runs and tasks, whose rows point at
# a run. The Runs API does not own them: a delete that would leave them
# dangling (or destroy them) is refused.
REFERENCING_TABLES = (("messages", "run_id"),)

# Runs per DELETE (and per reference check): far below every driver's limit
# of bound parameters, few enough statements for a batch of 100,000 runs.
DELETE_CHUNK = 1000


_PARENT_TASK = Task.__table__.alias("parent_task")


def _refuse_if_tasks_outside_point_in(conn: Connection, run_ids: list[str]) -> None:
    """FailedPrecondition when a task of a run outside the tree has its
    parent_task_id on a task of the tree: deleting would break it, and
    unlike a row added meanwhile (Aborted, above) no retry mends that."""
    tree = set(run_ids)
    for start in range(0, len(run_ids), DELETE_CHUNK):
        chunk = run_ids[start : start + DELETE_CHUNK]
        rows = conn.execute(
            select(Task.id, Task.run_id, _PARENT_TASK.c.id)
            .join(_PARENT_TASK, Task.parent_task_id == _PARENT_TASK.c.id)
            .where(_PARENT_TASK.c.run_id.in_(chunk))
        )
        for task_id, run_id, parent_id in rows:
            if run_id not in tree:
                raise FailedPrecondition(
                    f"task {task_id} of run {run_id}, outside the runs being deleted, has "
                    f"task {parent_id} as its parent_task_id; nothing was deleted"
                )


def _refuse_if_referenced(conn: Connection, run_ids: list[str]) -> None:
    inspector = inspect(conn)
    for name, column_name in REFERENCING_TABLES:
        if not inspector.has_table(name):
            continue
        ref = table(name, column(column_name)).c[column_name]
        found = None
        for start in range(0, len(run_ids), DELETE_CHUNK):
            chunk = run_ids[start : start + DELETE_CHUNK]
            found = conn.execute(
                select(ref, func.count()).where(ref.in_(chunk)).group_by(ref).limit(1)
            ).first()
            if found is not None:
                break
        if found is not None:
            raise FailedPrecondition(
                f"run {found[0]} is referenced by {found[1]} row(s) of table {name!r} "
                f"(column {column_name!r}); delete or detach them first. Nothing was deleted."
            )
