"""Rows to protobuf messages: the one place that knows both.

Also computes the fields the seed's responses have that no column holds
(storage.md): node_type, is_downstream_of_pause, duration,
percentage_complete and the embedded workflow version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy import Row

from spur.runs.v1 import run_pb2

from ..errors import DataLoss
from ..store.models import RunStatus, TaskStatus
from ..store.runs import AnyRow, RunRecord
from ..store.statements import TASK_COLUMNS
from .workflow import WorkflowGraph

# PySpur's statuses and ours share their names (Run.Status, Task.Status).
RUN_STATUS = {s: run_pb2.Run.Status.Value(s.name) for s in RunStatus}
# A request's RunStatus (ListRuns' status filter) -> the status PySpur stores.
STORED_RUN_STATUS = {number: status for status, number in RUN_STATUS.items()}
TASK_STATUS = {s: run_pb2.Task.Status.Value(s.name) for s in TaskStatus}
EMPTY_GRAPH = WorkflowGraph()

# add_tasks unpacks task rows in this order: a change of the columns must
# change it too (checked here, at import, not found as shifted fields).
_TASK_ORDER = (
    "_intid",
    "id",
    "run_id",
    "node_id",
    "parent_task_id",
    "status",
    "inputs",
    "outputs",
    "error",
    "start_time",
    "end_time",
    "subworkflow",
    "subworkflow_output",
)
if tuple(c.key for c in TASK_COLUMNS) != _TASK_ORDER:
    raise RuntimeError("store.statements.TASK_COLUMNS no longer match convert.add_tasks")

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    RepeatedTasks = RepeatedCompositeFieldContainer[run_pb2.Task]


_EPOCH = datetime(1970, 1, 1)


def naive_utc(value: datetime) -> datetime:
    """`value` as the naive UTC datetime PySpur stores (storage.md)."""
    if value.tzinfo is not None:  # a timestamptz column, in a database we did not make
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def set_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Store a naive datetime, read as UTC (storage.md). Three times faster
    than Timestamp.FromDatetime, which runs once per task and run."""
    if value.tzinfo is not None:
        value = naive_utc(value)
    delta = value - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1_000


def set_value(target: struct_pb2.Value, value: Any) -> None:
    """Store any JSON value in a google.protobuf.Value."""
    kind = type(value)
    if kind is dict:
        # An empty dict sets no field, and the Value would stay unset (read
        # back as null): SetInParent keeps {} as {}. A field set below marks
        # the struct present by itself, so a non-empty one needs no call.
        if value:
            _fill_fields(target.struct_value.fields, value)
        else:
            target.struct_value.SetInParent()
    elif kind is list:
        if value:
            _fill_values(target.list_value.values, value)
        else:
            target.list_value.SetInParent()  # [] stays [], as above
    else:
        _set_other(target, value)


def _set_other(target: struct_pb2.Value, value: Any) -> None:
    """Any JSON value, subclasses and tuples included (the slow path)."""
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        # (NaN and the infinities that PySpur's json.dumps may have stored
        # arrive here as None: engine.load_json.)
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, dict):
        target.struct_value.SetInParent()
        _fill_fields(target.struct_value.fields, value)
    elif isinstance(value, list | tuple):
        target.list_value.SetInParent()
        _fill_values(target.list_value.values, value)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


# JSON to Struct with one Python step per value: the type of each value picks
# its field directly (a str, a dict, a number come first, the most common in
# PySpur's columns), where Struct.update made two calls and an isinstance
# chain per value (measured: 2.6 -> 1.8 µs per task document; a list page of
# 10 holds ~120 of them).
def _fill_fields(fields: Any, value: dict[str, Any]) -> None:
    for key, item in value.items():
        kind = type(item)
        if kind is str:
            fields[key].string_value = item
        elif kind is dict:
            if item:  # SetInParent only for {} (set_value)
                _fill_fields(fields[key].struct_value.fields, item)
            else:
                fields[key].struct_value.SetInParent()
        elif kind is int or kind is float:
            fields[key].number_value = item
        elif kind is bool:
            fields[key].bool_value = item
        elif kind is list:
            if item:
                _fill_values(fields[key].list_value.values, item)
            else:
                fields[key].list_value.SetInParent()
        else:
            _set_other(fields[key], item)


def _fill_values(values: Any, items: list[Any] | tuple[Any, ...]) -> None:
    add = values.add
    for item in items:
        kind = type(item)
        if kind is str:
            add(string_value=item)
        elif kind is dict:
            if item:  # SetInParent only for {} (set_value)
                _fill_fields(add().struct_value.fields, item)
            else:
                add().struct_value.SetInParent()
        elif kind is int or kind is float:
            add(number_value=item)
        elif kind is bool:
            add(bool_value=item)
        else:
            _set_other(add(), item)


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (for messages)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


def _set_struct(
    target: struct_pb2.Struct, value: Any, owner: str, owner_id: str, column: str
) -> None:
    if not isinstance(value, dict):
        # PySpur types these columns as JSON objects, and a Struct holds
        # nothing else: say so (DATA_LOSS) instead of guessing. (The message
        # is built here, not by every caller for every row.)
        raise DataLoss(f"{owner} {owner_id}: {column} holds {json_kind(value)}, not a JSON object")
    target.SetInParent()  # a stored {} is an empty Struct, not an unset field
    _fill_fields(target.fields, value)


class VersionLookup(Protocol):
    """What fill_run reads of the version cache (api/versions.py), by
    (id, definition_hash): the version, its graph, its bytes as a Run's
    field (api/spliced.py) and definition_problem's answer; and the version
    without its definition."""

    def get(
        self, key: tuple[str, str] | None
    ) -> tuple[run_pb2.WorkflowVersion, WorkflowGraph, bytes, str | None] | None: ...

    def basic(self, key: tuple[str, str] | None) -> run_pb2.WorkflowVersion | None: ...

    def basic_field(
        self, key: tuple[str, str] | None
    ) -> tuple[run_pb2.WorkflowVersion, bytes] | None: ...


def graph_of(row: Row[Any]) -> WorkflowGraph:
    return WorkflowGraph.from_definition(row.definition)


def version_to_message(row: Row[Any], problem: str | None) -> run_pb2.WorkflowVersion:
    """The version of `row`; its definition only where `problem`
    (definition_problem's answer for it) is None."""
    message = run_pb2.WorkflowVersion(
        id=row.id,
        workflow_id=row.workflow_id,
        version=row.version,
        name=row.name,
        definition_hash=row.definition_hash,
    )
    if row.description is not None:
        message.description = row.description
    if problem is None:
        _set_struct(message.definition, row.definition, "workflow version", row.id, "definition")
    if row.created_at is not None:
        set_timestamp(message.created_at, row.created_at)
    if row.updated_at is not None:
        set_timestamp(message.updated_at, row.updated_at)
    return message


def definition_problem(row: Row[Any]) -> str | None:
    """Why the definition of version `row` cannot be served (a Struct holds
    only a JSON object; PySpur's column holds any JSON), or None. Its runs
    are still served without it (RUN_VIEW_BASIC), and their tasks."""
    if not isinstance(row.definition, dict):
        what = f"{json_kind(row.definition)}, not a JSON object"
    elif _too_large(row.definition):
        what = f"a JSON object with {_TOO_LARGE}"
    else:
        return None
    return (
        f"its workflow version {row.id} has a definition that is {what}; "
        "RUN_VIEW_BASIC leaves it out"
    )


# A JSON number is a double in google.protobuf.Value; PySpur's json.dumps
# writes any Python int, and one beyond a double's range (~1.8e308) has no
# double at all. (One below it but beyond 2**53 is served rounded, as every
# double-based JSON reader rounds it: api.md.)
_TOO_LARGE = "a number too large for a double"
# JSON text may escape half of a UTF-16 pair ("\ud800"): Python's json reads
# it as a lone surrogate, which no protobuf string (UTF-8) holds.
_NOT_UNICODE = "a string with a lone surrogate escape (\\ud800 to \\udfff), not Unicode text"


def _too_large(value: Any) -> bool:
    """Whether a JSON value holds an integer that no double can hold."""
    kind = type(value)
    if kind is dict:
        return any(_too_large(item) for item in value.values())
    if kind is list or kind is tuple:
        return any(_too_large(item) for item in value)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return True
    return False


def add_tasks(
    target: RepeatedTasks,
    rows: Iterable[AnyRow],
    paused_nodes: frozenset[str],
    graph: WorkflowGraph,
) -> None:
    """Append the Task messages of `rows` to `target`, built in place: a
    message built alone and then added is copied once more (a list page's
    60 tasks, then its 10 runs)."""
    try:
        _add_tasks(target, rows, paused_nodes, graph)
    except OverflowError:
        # Found while setting a number (set_value) of the task added last:
        # the message is made here, off the path of every other call.
        raise DataLoss(f"task {target[-1].id}: a JSON column holds {_TOO_LARGE}") from None
    except UnicodeEncodeError:  # see _NOT_UNICODE
        raise DataLoss(f"task {target[-1].id}: a JSON column holds {_NOT_UNICODE}") from None


def _add_tasks(
    target: RepeatedTasks,
    rows: Iterable[AnyRow],
    paused_nodes: frozenset[str],
    graph: WorkflowGraph,
) -> None:
    downstream = graph.downstream_of(paused_nodes) if paused_nodes else frozenset()
    node_types = graph.node_types
    add = target.add
    for row in rows:
        # One unpacking in store.statements.TASK_COLUMNS' order (a task row
        # of the hot reads or SQLAlchemy's Row) rather than 13 attribute
        # reads: a list page converts ~60 tasks.
        (
            _intid,
            task_id,
            run_id,
            node_id,
            parent_task_id,
            status,
            inputs,
            outputs,
            error,
            start_time,
            end_time,
            subworkflow,
            subworkflow_output,
        ) = row
        task = add(
            id=task_id,
            run_id=run_id,
            node_id=node_id,
            node_type=node_types.get(node_id, ""),
            status=TASK_STATUS[status],
        )
        if node_id in downstream:  # false is proto3's default: set only true
            task.is_downstream_of_pause = True
        if start_time is not None:
            set_timestamp(task.start_time, start_time)
        if end_time is not None:
            set_timestamp(task.end_time, end_time)
        if inputs is not None:
            set_value(task.inputs, inputs)
        if outputs is not None:
            set_value(task.outputs, outputs)
        if error is not None:
            task.error = error
        if parent_task_id is not None:
            task.parent_task_id = parent_task_id
        if subworkflow is not None:
            _set_struct(task.subworkflow, subworkflow, "task", task_id, "subworkflow")
        if subworkflow_output is not None:
            set_value(task.subworkflow_output, subworkflow_output)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def run_to_message(
    record: RunRecord,
    versions: VersionLookup,
    now: Callable[[], datetime] = utc_now,
    *,
    basic: bool = False,
) -> run_pb2.Run:
    """The Run message of `record` (see fill_run)."""
    run = run_pb2.Run()
    fill_run(run, record, versions, now, basic=basic)
    return run


def fill_run(
    run: run_pb2.Run,
    record: RunRecord,
    versions: VersionLookup,
    now: Callable[[], datetime] = utc_now,
    *,
    basic: bool = False,
    splice: bool = False,
) -> tuple[run_pb2.WorkflowVersion, bytes] | None:
    """Set the fields of `record` on the empty `run`, in place (a response's
    own field: no copy). `basic` (RUN_VIEW_BASIC): the workflow version
    without its definition; the record carries no tasks then, so tasks,
    task_count and percentage_complete stay empty. With `splice`, the whole
    workflow version is not copied into `run` but returned, with its bytes
    (encode_run's fallback); otherwise None."""
    row = record.row
    spliced: tuple[run_pb2.WorkflowVersion, bytes] | None = None
    entry = versions.get(record.version_key)
    graph = entry[1] if entry is not None else EMPTY_GRAPH
    run.id = row.id
    run.workflow_id = row.workflow_id
    run.status = RUN_STATUS[row.status]
    run.run_type = row.run_type
    if record.task_count:
        run.task_count = record.task_count
        # PySpur's formula, to its last bit (RunResponseSchema).
        run.percentage_complete = record.completed_count / record.task_count * 100
    add_tasks(run.tasks, record.tasks, record.paused_nodes, graph)
    if row.workflow_version_id is not None:
        run.workflow_version_id = row.workflow_version_id
        if basic:
            version = versions.basic(record.version_key)
        else:
            if entry is not None and entry[3] is not None:
                raise DataLoss(f"run {row.id}: {entry[3]}")
            version = entry[0] if entry is not None else None
            if splice and entry is not None:
                spliced = (entry[0], entry[2])
        if version is not None and spliced is None:
            run.workflow_version.CopyFrom(version)
    if row.parent_run_id is not None:
        run.parent_run_id = row.parent_run_id
    if row.output_file_id is not None:
        run.output_file_id = row.output_file_id
    if row.input_dataset_id is not None:
        run.input_dataset_id = row.input_dataset_id
    if row.start_time is not None:
        set_timestamp(run.start_time, row.start_time)
        run.duration = run_duration(
            row.start_time, row.end_time if row.end_time is not None else now()
        )
    if row.end_time is not None:
        set_timestamp(run.end_time, row.end_time)
    column = "initial_inputs"
    try:
        if row.initial_inputs is not None:
            _set_struct(run.initial_inputs, row.initial_inputs, "run", row.id, column)
        column = "outputs"
        if row.outputs is not None:
            set_value(run.outputs, row.outputs)
    except OverflowError:  # see _TOO_LARGE
        raise DataLoss(f"run {row.id}: {column} holds {_TOO_LARGE}") from None
    except UnicodeEncodeError:  # see _NOT_UNICODE
        raise DataLoss(f"run {row.id}: {column} holds {_NOT_UNICODE}") from None
    return spliced


def run_duration(start: datetime, end: datetime) -> float:
    """Seconds from start to end (now, for a run that has not ended).
    Timestamps are stored without a zone and read as UTC (storage.md)."""
    try:
        return (end - start).total_seconds()
    except TypeError:  # one of them has an offset (a database we did not make)
        return (naive_utc(end) - naive_utc(start)).total_seconds()
