"""api/_wire's whole runs (wire.encode_run) against convert.fill_run: the
same Run, its version where protobuf puts it, and what it refuses built by
fill_run, which says why (DataLoss) or serves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from wire_rows import T0, task_row

from spur.runs.v1 import run_pb2
from spur_runs.api import convert, wire
from spur_runs.api.versions import VersionCache
from spur_runs.errors import DataLoss
from spur_runs.store.models import RunStatus
from spur_runs.store.runs import RunRecord
from spur_runs.store.statements import RunRow, TaskRow


def _version_row(definition: Any = None) -> Any:
    return SimpleNamespace(
        id="V1",
        workflow_id="S1",
        version=3,
        name="flow",
        description=None,
        definition={"nodes": [{"id": "node0", "node_type": "InputNode"}], "links": []}
        if definition is None
        else definition,
        definition_hash="h1",
        created_at=T0,
        updated_at=None,
    )


def _record(tasks: int = 3, **columns: Any) -> RunRecord:
    """A run row in store.statements.RUN_COLUMNS' order, and its tasks."""
    row = {
        "_intid": 1,
        "id": "R1",
        "workflow_id": "S1",
        "workflow_version_id": "V1",
        "parent_run_id": None,
        "status": RunStatus.RUNNING,
        "run_type": "interactive",
        "initial_inputs": {"input_node": {"q": "é"}},
        "input_dataset_id": None,
        "start_time": T0,
        "end_time": T0 + timedelta(minutes=1),
        "outputs": None,
        "output_file_id": None,
        "version_hash": "h1",
    }
    row.update(columns)
    rows = [TaskRow(task_row(n)) for n in range(tasks)]
    return RunRecord(RunRow(tuple(row.values())), rows, tasks, max(tasks - 1, 0))


@pytest.fixture
def in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode_run must write the run in C, not build it as a message."""

    def refused(*args: Any) -> Any:
        raise AssertionError("api/_wire refused the run")

    monkeypatch.setattr(wire, "_encoded_by_messages", refused)


def _both(record: RunRecord, cache: VersionCache, **options: Any) -> tuple[Any, Any]:
    """(encode_run's Run, fill_run's) at the same moment, with versions."""
    moment = datetime(2026, 11, 2, 9, 30)
    encoded_run = wire.encode_run(record, cache, lambda: moment, **options)
    built = run_pb2.Run()
    failed = options.pop("failed", False)
    convert.fill_run(built, record, cache, lambda: moment, **options)
    if failed:
        built.status = run_pb2.Run.Status.FAILED
    return run_pb2.Run.FromString(encoded_run.data), built


@pytest.mark.parametrize(
    "columns",
    [
        {},
        {"end_time": None},  # lasts until now
        {"start_time": None, "end_time": None},
        {"parent_run_id": "R0", "output_file_id": "", "input_dataset_id": "D1"},
        {"outputs": {"a": [1, None, {}]}, "initial_inputs": {}},
        {"outputs": [], "initial_inputs": None},
        {"workflow_version_id": None},
        {"id": "", "workflow_id": "", "run_type": ""},
        {"status": RunStatus.PENDING, "start_time": datetime(1960, 1, 1, tzinfo=UTC)},
    ],
    ids=repr,
)
@pytest.mark.parametrize("tasks", [0, 1, 6])
@pytest.mark.usefixtures("in_c")
def test_a_run_is_the_one_fill_run_builds(columns: dict[str, Any], tasks: int) -> None:
    cache = VersionCache()
    cache.add([_version_row()])
    record = _record(tasks, **columns)
    for options in ({}, {"basic": True}, {"failed": True}):
        encoded_run, built = _both(record, cache, **options)
        assert encoded_run == built, options


@pytest.mark.usefixtures("in_c")
def test_the_version_is_where_protobuf_puts_it_and_can_be_cut_out() -> None:
    cache = VersionCache()
    cache.add([_version_row()])
    encoded_run = wire.encode_run(_record(), cache)
    whole = run_pb2.Run.FromString(encoded_run.data)
    assert whole.workflow_version.name == "flow"
    # After fields 1 to 3, as protobuf writes it (a map's entries aside,
    # whose order upb does not keep, the rest is compared as messages).
    field = encoded_run.version[1] if encoded_run.version else b""
    assert encoded_run.data[encoded_run.cut :].startswith(field)
    head = run_pb2.Run(id="R1", workflow_id="S1", workflow_version_id="V1")
    assert encoded_run.data[: encoded_run.cut] == head.SerializeToString()
    bare = run_pb2.Run.FromString(encoded_run.without_version())
    assert not bare.HasField("workflow_version")
    whole.ClearField("workflow_version")
    assert bare == whole


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"initial_inputs": ["a", "list"]}, "run R1: initial_inputs holds an array"),
        ({"outputs": {"n": 10**400}}, "run R1: outputs holds a number too large"),
        ({"outputs": "\ud800"}, "run R1: outputs holds a string with a lone surrogate"),
    ],
    ids=["inputs-array", "huge", "surrogate"],
)
def test_a_run_it_refuses_is_data_loss_as_fill_run_says(
    columns: dict[str, Any], message: str
) -> None:
    cache = VersionCache()
    cache.add([_version_row()])
    with pytest.raises(DataLoss, match=message):
        wire.encode_run(_record(**columns), cache)


def test_a_version_whose_definition_cannot_be_served() -> None:
    cache = VersionCache()
    cache.add([_version_row(definition=["not", "an", "object"])])
    with pytest.raises(DataLoss, match="run R1: its workflow version V1 has a definition"):
        wire.encode_run(_record(), cache)
    encoded_run, built = _both(_record(), cache, basic=True)  # served without it
    assert encoded_run == built


def test_a_run_with_a_task_it_refuses_is_built_as_a_message() -> None:
    """Deep JSON (past the C encoder's 128 levels, within Python's reach)
    is served, as fill_run builds it."""
    cache = VersionCache()
    cache.add([_version_row()])
    deep: Any = "leaf"
    for _ in range(150):
        deep = [deep]
    record = _record(2)
    record.tasks[1] = TaskRow(task_row(1, outputs=deep))
    moment = datetime(2026, 11, 2, 9, 30)
    encoded_run = wire.encode_run(record, cache, lambda: moment)
    built = run_pb2.Run()
    convert.fill_run(built, record, cache, lambda: moment, splice=True)
    # Too deep for protobuf's parser: compared as bytes, version cut out.
    assert encoded_run.without_version() == built.SerializeToString()
