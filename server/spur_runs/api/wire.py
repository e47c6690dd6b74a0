"""Runs to wire bytes, in C (api/_wire, built from api/_wire_src/).

GetRun, GetRunStatus, ListRuns and GetChildRuns answer their runs as the
bytes of Run messages that api/_wire writes straight from the rows the hot
reads decode (docs/performance.md, "Twenty-seventh step"); spliced.py puts
them in the answer. They are the messages convert.fill_run builds through
protobuf's Python API (tests/unit/test_wire.py compares the two). A run
that _wire refuses is built by convert.py as a message and encoded, which
serves it or says why it cannot (DataLoss).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from spur.runs.v1 import run_pb2

from ..errors import DataLoss
from ..store.models import RunStatus
from ..store.runs import AnyRow, RunRecord
from ..store.statements import RUN_COLUMNS
from . import _wire
from .convert import (
    EMPTY_GRAPH,
    RUN_STATUS,
    TASK_STATUS,
    VersionLookup,
    fill_run,
    run_duration,
    utc_now,
)
from .spliced import EncodedRun, encoded
from .workflow import WorkflowGraph

# The same by number, for api/_wire_src/ (None where a number has no status).
_TASK_STATUS_BY_NUMBER = tuple(
    next((s for s, n in TASK_STATUS.items() if n == number), None)
    for number in range(max(TASK_STATUS.values()) + 1)
)

# api/_wire_src/ writes a Task's fields by these numbers (and Run.tasks as 10).
_WIRE_LAYOUT = (
    ("id", 1),
    ("run_id", 2),
    ("node_id", 3),
    ("node_type", 4),
    ("status", 5),
    ("start_time", 6),
    ("end_time", 7),
    ("inputs", 8),
    ("outputs", 9),
    ("error", 10),
    ("is_downstream_of_pause", 11),
    ("parent_task_id", 12),
    ("subworkflow", 13),
    ("subworkflow_output", 14),
)
if tuple((f.name, f.number) for f in run_pb2.Task.DESCRIPTOR.fields) != _WIRE_LAYOUT:
    raise RuntimeError("run.proto's Task no longer matches api/_wire_src/")

# ... and a run's columns by their indexes in store.statements.RUN_COLUMNS.
_RUN_ORDER = (
    "_intid",
    "id",
    "workflow_id",
    "workflow_version_id",
    "parent_run_id",
    "status",
    "run_type",
    "initial_inputs",
    "input_dataset_id",
    "start_time",
    "end_time",
    "outputs",
    "output_file_id",
    "version_hash",
)
_RUN_LAYOUT = (
    ("id", 1),
    ("workflow_id", 2),
    ("workflow_version_id", 3),
    ("workflow_version", 4),
    ("status", 5),
    ("start_time", 6),
    ("end_time", 7),
    ("initial_inputs", 8),
    ("outputs", 9),
    ("tasks", 10),
    ("parent_run_id", 11),
    ("run_type", 12),
    ("output_file_id", 13),
    ("input_dataset_id", 14),
    ("message", 15),
    ("duration", 16),
    ("percentage_complete", 17),
    ("task_count", 18),
)
if (
    tuple(c.key for c in RUN_COLUMNS) != _RUN_ORDER
    or tuple((f.name, f.number) for f in run_pb2.Run.DESCRIPTOR.fields) != _RUN_LAYOUT
):
    raise RuntimeError("run.proto's Run or RUN_COLUMNS no longer match api/_wire_src/")

# What api/_wire_src/ does not write as fill_run would: convert.py then builds
# the message, which says why (DataLoss) or serves it. Any other error of
# _wire's is a bug, and fails the call.
_REFUSED = (_wire.Refused, OverflowError, UnicodeEncodeError)

_EPOCH = datetime(1970, 1, 1)


def tasks_field(
    rows: list[AnyRow], paused_nodes: frozenset[str], graph: WorkflowGraph
) -> bytes | None:
    """The Task messages of `rows` as a Run's tasks fields, written by
    api/_wire_src/ (the same messages as add_tasks'), or None for rows it does
    not write as add_tasks would: add_tasks then builds them and says what
    is wrong (DataLoss), or fails as it fails."""
    downstream = graph.downstream_of(paused_nodes) if paused_nodes else frozenset()
    try:
        return _wire.encode_tasks(rows, graph.node_types, downstream, _TASK_STATUS_BY_NUMBER)
    except _REFUSED:
        return None


def encode_run(
    record: RunRecord,
    versions: VersionLookup,
    now: Callable[[], datetime] = utc_now,
    *,
    basic: bool = False,
    failed: bool = False,
) -> EncodedRun:
    """The Run of `record` as bytes, written by api/_wire_src/: the message
    that fill_run builds, with its workflow version (whose bytes are cached
    per version). `failed`: its status is FAILED (GetRunStatus' poll)."""
    row = record.row
    entry = versions.get(record.version_key)
    version: tuple[run_pb2.WorkflowVersion, bytes] | None = None
    if row.workflow_version_id is not None:
        if basic:
            version = versions.basic_field(record.version_key)
        elif entry is not None:
            if entry[3] is not None:
                raise DataLoss(f"run {row.id}: {entry[3]}")
            version = (entry[0], entry[2])
    # A run that has not ended lasts until now: the same now for its
    # message, should the gateway need it built (_build).
    moment = _EPOCH
    duration = None
    if row.start_time is not None:
        if row.end_time is None:
            moment = now()
        duration = run_duration(
            row.start_time, row.end_time if row.end_time is not None else moment
        )
    tasks = b""
    if record.tasks:
        graph = entry[1] if entry is not None else EMPTY_GRAPH
        found_tasks = tasks_field(record.tasks, record.paused_nodes, graph)
        if found_tasks is None:
            return _encoded_by_messages(record, versions, moment, basic, failed)
        tasks = found_tasks
    count = record.task_count
    try:
        data, cut = _wire.encode_run(
            row,
            RUN_STATUS[RunStatus.FAILED if failed else row.status],
            None if version is None else version[1],
            tasks,
            count,
            record.completed_count / count * 100 if count else 0.0,
            duration,
        )
    except _REFUSED:
        return _encoded_by_messages(record, versions, moment, basic, failed)
    return EncodedRun(data, cut, version, partial(_build, record, versions, moment, basic, failed))


def _build(
    record: RunRecord,
    versions: VersionLookup,
    moment: datetime,
    basic: bool,
    failed: bool,
    run: run_pb2.Run,
) -> tuple[run_pb2.WorkflowVersion, bytes] | None:
    """fill_run for encode_run: the same moment, its version left out."""
    version = fill_run(run, record, versions, lambda: moment, basic=basic, splice=not basic)
    if basic and run.HasField("workflow_version"):  # fill_run copied it in
        run.ClearField("workflow_version")
        version = versions.basic_field(record.version_key)
    if failed:
        run.status = RUN_STATUS[RunStatus.FAILED]
    return version


def _encoded_by_messages(
    record: RunRecord, versions: VersionLookup, moment: datetime, basic: bool, failed: bool
) -> EncodedRun:
    """A run that api/_wire_src/ refused, built as a message (which raises
    DataLoss for what it cannot serve), then encoded."""
    run = run_pb2.Run()
    version = _build(record, versions, moment, basic, failed, run)
    return encoded(run, version, partial(_build, record, versions, moment, basic, failed))
