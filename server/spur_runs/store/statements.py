"""The statements of the Runs API's reads over PySpur's tables, built once.

Fixed statements are built at import, with bound parameters: building a
select() costs more than SQLite takes to run it. Those of the hot reads
(GetRun, list pages, tasks) are hot.Statements, run on the DBAPI cursor
(hot.py); list pages' statements are built once per form of request
(page_queries). List pages use keyset conditions that the indexes in
models.SERVICE_INDEXES serve (a deep page costs what the first one costs).
An expanding IN (`IN :list`) renders SQL that depends on the list's length,
so the hot statements that need one are built once per length instead.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Text,
    bindparam,
    cast,
    func,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, FromClause, Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import ScalarSelect

from .hot import Statement, row_type
from .models import Run, RunStatus, Task, TaskStatus, WorkflowVersion
from .row_decoding import packed_as_text

# Most tasks embedded in one Run message: GetRun, and each run of a list page.
# Beyond it, Run.task_count tells the client to page with GetRunTasks.
TASKS_PER_RUN = 1000
TASKS_PER_LISTED_RUN = 100

# The list's packed statements (page_queries) sort by the indexes of
# start_time and _intid here.
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
if (RUN_COLUMNS[0], RUN_COLUMNS[9]) != (Run._intid, Run.start_time):
    raise RuntimeError("page_queries' sort_by no longer matches RUN_COLUMNS")

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

# Rows of the hot statements, read by attribute (row.id, row.status), with
# the names of a run row and of a task row (what api/convert.py reads).
RunRow = row_type("RunRow", [c.key for c in RUN_COLUMNS])
TaskRow = row_type("TaskRow", [c.key for c in TASK_COLUMNS])


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
        """Which filters are set (for statuses, how many): what the
        statement's text depends on (the values are bound parameters, see
        params)."""
        return (
            self.workflow_id is not None,
            len(self.statuses),
            self.run_type is not None,
            self.parent_only,
            self.start_after is not None,
            self.start_before is not None,
        )

    def params(self, known_statuses: Collection[str] | None = None) -> dict[str, Any]:
        """The values of the parameters that conditions(self.shape) binds. A
        status whose value is not among `known_statuses` (the labels of a
        database type that lacks some: store/runs.py) is bound as NULL,
        which matches no run."""
        params: dict[str, Any] = {
            "f_workflow_id": self.workflow_id,
            "f_run_type": self.run_type,
            "f_start_after": self.start_after,
            "f_start_before": self.start_before,
        }
        # Sorted: the same filter gives the same parameters.
        for i, status in enumerate(sorted(self.statuses, key=lambda s: s.value)):
            known = known_statuses is None or status.value in known_statuses
            params[f"f_status_{i}"] = status if known else None
        return params


# (workflow_id set, number of statuses, run_type, parent_only, start_after, start_before)
FilterShape = tuple[bool, int, bool, bool, bool, bool]


def conditions(shape: FilterShape) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a filter shape, with bound parameters."""
    workflow_id, statuses, run_type, parent_only, start_after, start_before = shape
    where: list[ColumnElement[bool]] = []
    if workflow_id:
        where.append(Run.workflow_id == bindparam("f_workflow_id"))
    if statuses:
        where.append(
            Run.status.in_(
                [bindparam(f"f_status_{i}", type_=Run.status.type) for i in range(statuses)]
            )
        )
    if run_type:
        where.append(Run.run_type == bindparam("f_run_type"))
    if parent_only:
        where.append(Run.parent_run_id.is_(None))
    if start_after:
        where.append(Run.start_time >= bindparam("f_start_after", type_=Run.start_time.type))
    if start_before:
        where.append(Run.start_time < bindparam("f_start_before", type_=Run.start_time.type))
    return where


NO_FILTER = RunFilter()


@dataclass(frozen=True)
class RunCursor:
    """Position after which a run listing continues (see paging.py)."""

    start_time: datetime | None
    intid: int


def runs_select() -> Select[Any]:
    return select(*RUN_COLUMNS).outerjoin(
        WorkflowVersion, WorkflowVersion.id == Run.workflow_version_id
    )


# A page token's _intid is compared as a BIGINT: paging.py accepts any
# 64-bit position, and PostgreSQL refuses to cast one beyond PySpur's 32-bit
# keys to INTEGER (int4 < int8 is still served by the integer index).
_CURSOR_ID = BigInteger()

RUN_BY_ID = Statement(runs_select().where(Run.id == bindparam("run_id")), sort_by=0)
INTID_BY_ID = Statement(select(Run._intid).where(Run.id == bindparam("run_id")))
_TASKS_OF_RUN = (
    select(*TASK_COLUMNS)
    .where(Task.run_id == bindparam("run_id"))
    .order_by(Task._intid)
    .limit(bindparam("limit"))
)
# Task rows are packed on SQLite (hot.Statement), back in _intid order
# (TASK_COLUMNS[0]).
TASKS_OF_RUN = Statement(_TASKS_OF_RUN, sort_by=0)
TASKS_OF_RUN_AFTER = Statement(
    select(*TASK_COLUMNS)
    .where(Task.run_id == bindparam("run_id"), Task._intid > bindparam("after", type_=_CURSOR_ID))
    .order_by(Task._intid)
    .limit(bindparam("limit")),
    sort_by=0,
)
PAUSED_NODES = Statement(
    select(Task.node_id).where(
        Task.run_id == bindparam("run_id"),
        Task.status == bindparam("paused", TaskStatus.PAUSED, type_=Task.status.type),
    )
)


@functools.cache
def tasks_of_runs(count: int) -> Statement:
    """The first `limit` tasks of each of `count` runs (run_0..), in one
    statement: a UNION ALL of one LIMITed walk of the (run_id, _intid) index
    per run, each of which stops at its limit. The order of the runs' rows
    among each other is not given (runs.py sorts them). A row_number()
    window over all their tasks took 280 µs in SQLite for a page of 10
    runs of 6 tasks; this, 160 µs."""
    walks = [
        select(*TASK_COLUMNS)
        .where(Task.run_id == bindparam(f"run_{i}"))
        .order_by(Task._intid)
        .limit(bindparam("limit"))
        .subquery(f"run_{i}")
        for i in range(count)
    ]
    return Statement(union_all(*(walk.select() for walk in walks)), sort_by=0)  # type: ignore[arg-type]


def _packed_tasks(runs: FromClause, dialect: str) -> ScalarSelect[Any]:
    """The first `task_limit` tasks of each run of `runs` (the runs table or
    a page of it, in the enclosing statement), oldest first, as one JSON array of
    TASK_COLUMNS arrays (TASKS_OF_RUN.unpack reads it): a correlated walk of
    the (run_id, _intid) index that stops at its limit. One value per run:
    a run's columns come once, not once per task row, and a page of runs
    is one row per run. SQLite's json_group_array gives the array as text
    (sqlite3 lets go of the interpreter lock for every row it steps to:
    hot.Statement); PostgreSQL's json_agg as json, which psycopg parses in
    one call (its task JSON columns inside, no call per value)."""
    walk = (
        select(*TASK_COLUMNS)
        .where(Task.run_id == runs.c.id)
        .order_by(Task._intid)
        .limit(bindparam("task_limit"))
        .correlate(runs)
        .subquery("walk")
    )
    if dialect == "sqlite":
        # json_array refuses a BLOB (row_decoding.packed_as_text): as text.
        values = (cast(c, Text) if packed_as_text(c.type) else c for c in walk.c)
        packed = func.json_group_array(func.json_array(*values))
    else:
        packed = func.coalesce(func.json_agg(func.json_build_array(*walk.c)), text("'[]'::json"))
    return select(packed).scalar_subquery()


@functools.cache
def run_with_tasks(dialect: str) -> Statement:
    """GetRun's one statement: the run (RUN_COLUMNS) and its first
    `task_limit` tasks packed (_packed_tasks), one row."""
    return Statement(
        runs_select()
        .add_columns(_packed_tasks(Run.__table__, dialect).label("tasks"))
        .where(Run.id == bindparam("run_id")),
        sort_by=0,  # one row; packed on SQLite all the same (hot.Statement)
    )


class _SameInstant(FunctionElement[bool]):
    """Whether a stored start_time (left) is the instant of a bound one
    (right). PostgreSQL compares timestamps. SQLite's text may be written in
    another format than the bound value's (page_queries), so both are read
    by julianday() (to the millisecond); text julianday cannot read counts
    as the same instant, as the stored run's place is all there is then."""

    type = Boolean()
    inherit_cache = True
    name = "same_instant"


@compiles(_SameInstant)
def _same_instant(element: _SameInstant, compiler: SQLCompiler, **kw: Any) -> str:
    stored, bound = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"{stored} = {bound}"


@compiles(_SameInstant, "sqlite")
def _same_instant_sqlite(element: _SameInstant, compiler: SQLCompiler, **kw: Any) -> str:
    stored, bound = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"coalesce(julianday({stored}) = julianday({bound}), 1)"


@functools.cache
def page_queries(
    shape: FilterShape, with_parent: bool, cursor: str
) -> tuple[Statement | None, Statement, Select[Any]]:
    """list_runs' statements for one form of request, built once: building a
    select() and its cache key costs more than SQLite takes to run it. There
    are at most 2**5 x 7 filter shapes x 2 x 3 cursor kinds. Returns the
    query of the runs with a start_time (None when the cursor is past them),
    the query of the runs without one, and the count of the former."""
    where = conditions(shape)
    if with_parent:
        where.append(Run.parent_run_id == bindparam("parent_run_id"))
    has_time = Run.start_time.is_not(None)
    timed: Select[Any] | None = None
    if cursor != "untimed":
        timed = runs_select().where(has_time, *where)
        if cursor == "timed":
            # (start_time, _intid) < (t, i), written so that both planners
            # see the plain range `start_time <= t` and walk the index from
            # the cursor. The textbook `start_time < t OR (start_time = t AND
            # _intid < i)` makes SQLite merge two index scans and sort
            # everything older than the cursor: 1.1 s for page 2 of 1M runs.
            intid = bindparam("after_intid", type_=_CURSOR_ID)
            # The cursor run's start_time as it is stored, where it still is:
            # ORDER BY compares SQLite's text as text, and a time written in
            # another format than SQLAlchemy's ("...:00" without its
            # microseconds, a "T", an offset: not PySpur, another tool) must
            # be compared as that text, or a page starts over at its own
            # last run, forever. The token's time (bound as SQLAlchemy writes
            # it) for a cursor run deleted since, or one whose _intid is now
            # another run's: SQLite gives a deleted newest run's rowid to the
            # next run (PySpur's schema has no AUTOINCREMENT), and a page
            # token then went on from the new run's place, repeating or
            # skipping runs (a hostile review, 2026-12-03). So the stored
            # time counts only where it is the token's instant (_SameInstant).
            # An index lookup, once.
            cursor_run = Run.__table__.alias("cursor_run")
            after_time = bindparam("after_time", type_=Run.start_time.type)
            stored = (
                select(cursor_run.c.start_time)
                .where(
                    cursor_run.c._intid == intid,
                    _SameInstant(cursor_run.c.start_time, after_time),
                )
                .scalar_subquery()
            )
            at = func.coalesce(stored, after_time)
            timed = timed.where(Run.start_time <= at, or_(Run.start_time < at, Run._intid < intid))
        timed = (
            timed.order_by(Run.start_time.desc(), Run._intid.desc())
            .offset(bindparam("offset"))
            .limit(bindparam("limit"))
        )
    untimed = runs_select().where(Run.start_time.is_(None), *where)
    if cursor == "untimed":
        untimed = untimed.where(Run._intid < bindparam("after_intid", type_=_CURSOR_ID))
    untimed = (
        untimed.order_by(Run._intid.desc()).offset(bindparam("offset")).limit(bindparam("limit"))
    )
    timed_count = select(func.count()).select_from(Run).where(has_time, *where)
    # Packed on SQLite (hot.Statement), back in ORDER BY's order: start_time
    # (RUN_COLUMNS[9]) and _intid ([0]), newest first.
    return (
        None if timed is None else Statement(timed, sort_by=(9, 0), reverse=True),
        Statement(untimed, sort_by=0, reverse=True),
        timed_count,
    )


@functools.cache
def page_with_tasks(
    shape: FilterShape, with_parent: bool, cursor: str, dialect: str
) -> Statement | None:
    """A page of timed runs (page_queries' first query, whose parameters it
    takes) with the first `task_limit` tasks of each packed (_packed_tasks),
    a row per run, in ONE statement, one snapshot by itself: no transaction
    around it (Database.read_one), where the page and its tasks took two in
    one (PostgreSQL: BEGIN, two statements and ROLLBACK, four round trips).
    On SQLite the page is packed too (hot.Statement), back in its order.
    None for the untimed cursor."""
    timed = page_queries(shape, with_parent, cursor)[0]
    if timed is None:
        return None
    page = timed.statement.subquery("page")
    statement = select(*page.c, _packed_tasks(page, dialect).label("tasks"))
    if dialect == "sqlite":
        return Statement(statement, sort_by=(9, 0), reverse=True)
    return Statement(statement.order_by(page.c.start_time.desc(), page.c._intid.desc()))


@functools.cache
def count_query(shape: FilterShape) -> Select[Any]:
    return select(func.count()).select_from(Run).where(*conditions(shape))
