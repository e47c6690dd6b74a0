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

from ..store.models import RunStatus, TaskStatus
from ..store.runs import AnyRow, RunRecord
from .workflow import WorkflowGraph

# PySpur's statuses and ours share their names (Run.Status, Task.Status).
RUN_STATUS = {s: run_pb2.Run.Status.Value(s.name) for s in RunStatus}
# A request's RunStatus (ListRuns' status filter) -> the status PySpur stores.
STORED_RUN_STATUS = {number: status for status, number in RUN_STATUS.items()}
TASK_STATUS = {s: run_pb2.Task.Status.Value(s.name) for s in TaskStatus}

EMPTY_GRAPH = WorkflowGraph()

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

    RepeatedTasks = RepeatedCompositeFieldContainer[run_pb2.Task]


_EPOCH = datetime(1970, 1, 1)


def set_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """Store a naive datetime, read as UTC (storage.md). Three times faster
    than Timestamp.FromDatetime, which runs once per task and run."""
    if value.tzinfo is not None:  # a timestamptz column, in a database we did not make
        value = value.astimezone(UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1_000


def set_value(target: struct_pb2.Value, value: Any) -> None:
    """Store any JSON value in a google.protobuf.Value."""
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, dict):
        # SetInParent: an empty dict sets no field, and the Value would stay
        # unset (read back as null); {} must stay {}.
        target.struct_value.SetInParent()
        target.struct_value.update(value)
    elif isinstance(value, list | tuple):
        target.list_value.SetInParent()  # [] stays [], as above
        target.list_value.extend(value)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _set_struct(target: struct_pb2.Struct, value: Any) -> None:
    if not isinstance(value, dict):
        # PySpur types these columns as JSON objects; anything else is data
        # we cannot represent faithfully, so say so instead of guessing.
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    target.SetInParent()  # a stored {} is an empty Struct, not an unset field
    target.update(value)


class VersionLookup(Protocol):
    """What fill_run reads of the version cache (api/versions.py), by
    (id, definition_hash): the version and its graph, and the version
    without its definition."""

    def get(
        self, key: tuple[str, str] | None
    ) -> tuple[run_pb2.WorkflowVersion, WorkflowGraph] | None: ...

    def basic(self, key: tuple[str, str] | None) -> run_pb2.WorkflowVersion | None: ...


def graph_of(row: Row[Any]) -> WorkflowGraph:
    return WorkflowGraph.from_definition(row.definition)


def version_to_message(row: Row[Any]) -> run_pb2.WorkflowVersion:
    message = run_pb2.WorkflowVersion(
        id=row.id,
        workflow_id=row.workflow_id,
        version=row.version,
        name=row.name,
        definition_hash=row.definition_hash,
    )
    if row.description is not None:
        message.description = row.description
    _set_struct(message.definition, row.definition)
    if row.created_at is not None:
        set_timestamp(message.created_at, row.created_at)
    if row.updated_at is not None:
        set_timestamp(message.updated_at, row.updated_at)
    return message


def add_tasks(
    target: RepeatedTasks,
    rows: Iterable[AnyRow],
    paused_nodes: frozenset[str],
    graph: WorkflowGraph,
) -> None:
    """Append the Task messages of `rows` to `target`, built in place: a
    message built alone and then added is copied once more (a list page's
    60 tasks, then its 10 runs)."""
    downstream = graph.downstream_of(paused_nodes) if paused_nodes else frozenset()
    node_types = graph.node_types
    add = target.add
    for row in rows:
        task = add(
            id=row.id,
            run_id=row.run_id,
            node_id=row.node_id,
            node_type=node_types.get(row.node_id, ""),
            status=TASK_STATUS[row.status],
            is_downstream_of_pause=row.node_id in downstream,
        )
        if row.start_time is not None:
            set_timestamp(task.start_time, row.start_time)
        if row.end_time is not None:
            set_timestamp(task.end_time, row.end_time)
        if row.inputs is not None:
            set_value(task.inputs, row.inputs)
        if row.outputs is not None:
            set_value(task.outputs, row.outputs)
        if row.error is not None:
            task.error = row.error
        if row.parent_task_id is not None:
            task.parent_task_id = row.parent_task_id
        if row.subworkflow is not None:
            _set_struct(task.subworkflow, row.subworkflow)
        if row.subworkflow_output is not None:
            set_value(task.subworkflow_output, row.subworkflow_output)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def run_to_message(
    record: RunRecord,
    versions: VersionLookup,
    now: Callable[[], datetime] = _utc_now,
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
    now: Callable[[], datetime] = _utc_now,
    *,
    basic: bool = False,
) -> None:
    """Set the fields of `record` on the empty `run`, in place (a response's
    own field: no copy). `basic` (RUN_VIEW_BASIC): the workflow version
    without its definition; the record carries no tasks then, so tasks,
    task_count and percentage_complete stay empty."""
    row = record.row
    entry = versions.get(record.version_key)
    graph = entry[1] if entry is not None else EMPTY_GRAPH
    run.id = row.id
    run.workflow_id = row.workflow_id
    run.status = RUN_STATUS[row.status]
    run.run_type = row.run_type
    if record.task_count:
        run.task_count = record.task_count
        run.percentage_complete = 100.0 * record.completed_count / record.task_count
    add_tasks(run.tasks, record.tasks, record.paused_nodes, graph)
    if row.workflow_version_id is not None:
        run.workflow_version_id = row.workflow_version_id
        if basic:
            version = versions.basic(record.version_key)
        else:
            version = entry[0] if entry is not None else None
        if version is not None:
            run.workflow_version.CopyFrom(version)
    if row.parent_run_id is not None:
        run.parent_run_id = row.parent_run_id
    if row.output_file_id is not None:
        run.output_file_id = row.output_file_id
    if row.input_dataset_id is not None:
        run.input_dataset_id = row.input_dataset_id
    if row.start_time is not None:
        set_timestamp(run.start_time, row.start_time)
        # Timestamps are stored without a zone and read as UTC (storage.md).
        end = row.end_time if row.end_time is not None else now()
        run.duration = (end - row.start_time).total_seconds()
    if row.end_time is not None:
        set_timestamp(run.end_time, row.end_time)
    if row.initial_inputs is not None:
        _set_struct(run.initial_inputs, row.initial_inputs)
    if row.outputs is not None:
        set_value(run.outputs, row.outputs)
