"""api/_wire (C, api/_wire_src/) against protobuf's own messages: every JSON value and task row
it writes parses to what api/convert.py builds through upb (set_value,
add_tasks), for generated documents and rows too; what it does not write as
convert.py would, it refuses, and convert.py then says why (DataLoss)."""

from __future__ import annotations

import gc
import math
import sys
import time
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from test_convert_values import DOCUMENTS

from spur.runs.v1 import run_pb2
from spur_runs.api import _wire, convert, wire
from spur_runs.api.versions import VersionCache
from spur_runs.api.workflow import WorkflowGraph
from spur_runs.errors import DataLoss
from spur_runs.store.models import RunStatus, TaskStatus
from spur_runs.store.runs import RunRecord
from spur_runs.store.statements import RunRow, TaskRow

T0 = datetime(2026, 11, 2, 9, 0, 0, 123456)


def _value(document: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    convert.set_value(value, document)
    return value


def _row(n: int = 0, **columns: Any) -> tuple[Any, ...]:
    """A task row in store.statements.TASK_COLUMNS' order."""
    row = {
        "_intid": n,
        "id": f"T{n}",
        "run_id": "R1",
        "node_id": f"node{n % 3}",
        "parent_task_id": None,
        "status": TaskStatus.COMPLETED,
        "inputs": {"q": "x", "n": n},
        "outputs": {"a": [1, {}, []]},
        "error": None,
        "start_time": T0,
        "end_time": T0 + timedelta(seconds=n),
        "subworkflow": None,
        "subworkflow_output": None,
    }
    row.update(columns)
    return tuple(row.values())


GRAPH = WorkflowGraph({"node0": "InputNode", "node1": "LLMNode"}, {"node0": ("node1", "node2")})


def _tasks(rows: list[tuple[Any, ...]], paused: frozenset[str] = frozenset()) -> bytes:
    """What convert.add_tasks builds, as a Run's tasks fields."""
    run = run_pb2.Run()
    convert.add_tasks(run.tasks, rows, paused, GRAPH)
    return run.SerializeToString()


def _wired(rows: list[tuple[Any, ...]], paused: frozenset[str] = frozenset()) -> bytes | None:
    return wire.tasks_field(rows, paused, GRAPH)


@pytest.mark.parametrize("document", DOCUMENTS, ids=repr)
def test_a_value_is_the_one_set_value_builds(document: Any) -> None:
    data = _wire.encode_value(document)
    assert struct_pb2.Value.FromString(data) == _value(document)
    # Maps aside (whose order upb does not keep), the very same bytes.
    if not isinstance(document, dict):
        assert data == _value(document).SerializeToString()


def test_numbers_strings_and_odd_values() -> None:
    for document in [
        0,
        -0.0,
        1e308,
        2**53 + 1,
        -(2**63),
        10**300,
        math.inf,
        -math.inf,
        "",
        "é€😀",
        "\x00",
        {"": ""},
        {"é": {"😀": [None]}},
        [True, False, None, 0, 0.5, "s"],
        (1, "tuple"),  # as set_value takes it: a list
    ]:
        assert struct_pb2.Value.FromString(_wire.encode_value(document)) == _value(document)
    nan = struct_pb2.Value.FromString(_wire.encode_value(math.nan))
    assert math.isnan(nan.number_value)


def test_subclasses_of_str_and_float_are_written_as_their_json_type() -> None:
    class Text(str):
        pass

    class Number(float):
        pass

    document = {"a": Text("x"), "b": [Number(2.5)]}
    assert struct_pb2.Value.FromString(_wire.encode_value(document)) == _value(document)


class _Mapping(dict):  # type: ignore[type-arg]
    pass


def test_other_subclasses_are_left_to_convert() -> None:
    """Even one that overrides nothing: dict, list, tuple and int are read
    from their storage, which only their own types guarantee is what
    set_value reads. convert.py then builds the task as a message."""
    for document in ({"a": _Mapping()}, _Mapping(), [True, _Float(1)]):
        with pytest.raises(_wire.Refused, match="not one of JSON's own types"):
            _wire.encode_value(document)
    rows = [_row(0, inputs=_Mapping(a=1))]
    assert _wired(rows) is None


class _Float(int):
    def __float__(self) -> float:
        return 99.0


class _Items(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        return [("z", 1)]


class _Iter(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter([7])


class _TupleIter(tuple):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter([7])


@pytest.mark.parametrize(
    "document",
    [
        _Float(1),
        {"k": [_Float(1)]},
        _Items(a=2),
        {"k": _Items(a=2)},
        _Iter([1, 2]),
        _TupleIter((1,)),
    ],
    ids=repr,
)
def test_subclasses_read_otherwise_are_as_set_value_reads_them(document: Any) -> None:
    """set_value reads an int through __float__ (upb), a dict subclass
    through items(), a list or tuple one by iterating it: where those are
    overridden, the C encoder must not read the object's own storage."""
    with pytest.raises(_wire.Refused):
        _wire.encode_value(document)


def test_a_subworkflow_read_otherwise_is_as_add_tasks_reads_it() -> None:
    rows = [_row(0, subworkflow=_Items(a=2))]
    assert _wired(rows) is None


@pytest.mark.parametrize(
    "document, error",
    [
        (10**400, OverflowError),  # no double holds it
        ("\ud800", UnicodeEncodeError),  # a lone surrogate
        ({"k": "\udfff"}, UnicodeEncodeError),
        ({"\ud800": 1}, UnicodeEncodeError),
        ({1: "x"}, _wire.Refused),  # not JSON
        ({"a": {1, 2}}, _wire.Refused),
        ([b"bytes"], _wire.Refused),
        (object(), _wire.Refused),
    ],
    ids=[
        "huge",
        "surrogate",
        "surrogate-in-object",
        "surrogate-key",
        "int-key",
        "set",
        "bytes",
        "object",
    ],
)
def test_what_it_refuses(document: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        _wire.encode_value(document)


def test_deep_nesting_raises_and_does_not_crash() -> None:
    document: Any = []
    for _ in range(sys.getrecursionlimit() + 100):
        document = [document]
    with pytest.raises(_wire.Refused, match="nested too deeply"):
        _wire.encode_value(document)
    # Deeper than protobuf's parser goes (100 messages: 33 objects), as
    # set_value builds it; past 128 levels it leaves the value to convert.py
    # (which serves what Python's recursion reaches: test_deep_json.py).
    deep: Any = {}
    for _ in range(127):  # 128 objects
        deep = {"a": deep}
    assert _wire.encode_value(deep) == _value(deep).SerializeToString()
    with pytest.raises(_wire.Refused, match="nested too deeply"):
        _wire.encode_value({"a": deep})


def test_tasks_are_the_ones_add_tasks_builds() -> None:
    rows = [
        _row(0),
        _row(1, status=TaskStatus.RUNNING, end_time=None, outputs=None),
        _row(2, status=TaskStatus.PENDING, start_time=None, end_time=None, inputs=None),
        _row(3, error="", parent_task_id="T1", subworkflow={}, subworkflow_output=[]),
        _row(4, error="boom é", subworkflow={"nodes": [{"id": "x"}]}, subworkflow_output="s"),
        _row(5, id="", run_id="", node_id=""),  # proto3: empty strings are not written
        _row(6, node_id="unknown"),  # no node type: ""
        _row(7, inputs={}, outputs=[]),  # {} and [] stay such
        _row(8, inputs=None, outputs=None, start_time=datetime(1970, 1, 1)),  # a zero Timestamp
    ]
    for paused in (frozenset(), frozenset({"node0"})):
        data = _wired(rows, paused)
        assert data is not None
        assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(_tasks(rows, paused))
    assert _wired([]) == b""


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1),
        datetime(1969, 12, 31, 23, 59, 59, 500000),  # before 1970: negative seconds
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(2000, 2, 29, 12),
        datetime(2026, 11, 2, 9, tzinfo=UTC),
        datetime(2026, 11, 2, 9, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 2, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3))),
    ],
    ids=str,
)
def test_timestamps(moment: datetime) -> None:
    rows = [_row(0, start_time=moment, end_time=moment)]
    data = _wired(rows)
    assert data is not None
    assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(_tasks(rows))


class _Offset(tzinfo):
    """A tzinfo whose utcoffset() is Python code: `then` runs in it."""

    def __init__(self, then: Any, offset: timedelta | None = timedelta(0)) -> None:
        self.then = then
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        self.then()
        return self.offset


_KEPT: list[Any] = []


def _free(holder: list[Any] | dict[Any, Any], key: Any) -> None:
    """Drop holder[key] (a str no one else holds) and reuse its memory."""
    holder[key] = "y"
    gc.collect()
    _KEPT.extend("z" * 400 + str(i) for i in range(50))  # the freed memory, written over


def _long(text: str) -> str:
    return text * 400 + str(len(_KEPT))  # a new str, held only by its row


def _list_row_id_freed() -> None:
    # a list row's id, replaced (and freed) by its own start_time's utcoffset
    row = list(_row(0, id=_long("x")))
    row[9] = datetime(2026, 1, 1, tzinfo=_Offset(lambda: _free(row, 1)))
    data = _wired([row])  # type: ignore[list-item]
    assert data is not None
    assert run_pb2.Run.FromString(data).tasks[0].id.startswith("xxx")


def _node_type_freed() -> None:
    # a node type, dropped from node_types by the row's start_time's utcoffset
    types = {"node0": _long("t")}
    clear = _Offset(lambda: types.clear() or _free([None], 0))
    row = _row(0, start_time=datetime(2026, 1, 1, tzinfo=clear))
    data = _wire.encode_tasks([row], types, frozenset(), wire._TASK_STATUS_BY_NUMBER)
    assert run_pb2.Run.FromString(data).tasks[0].node_type.startswith("ttt")


def _document_grown() -> None:
    # a document of the first row, grown by the second row's utcoffset
    document: list[Any] = [1]
    grow = _Offset(lambda: document.extend(["z" * 100] * 1000))
    rows = [_row(0, inputs=document), _row(1, start_time=datetime(2026, 1, 1, tzinfo=grow))]
    data = _wired(rows)
    assert data is not None
    assert len(run_pb2.Run.FromString(data).tasks[0].inputs.list_value.values) == len(document)


def _rows_emptied() -> None:
    # the list of rows, emptied by its first row's utcoffset
    many: list[Any] = []
    empty = _Offset(lambda: many.clear() or gc.collect())
    many.extend([_row(0, start_time=datetime(2026, 1, 1, tzinfo=empty)), _row(1), _row(2)])
    data = _wire.encode_tasks(many, {}, frozenset(), wire._TASK_STATUS_BY_NUMBER)
    assert len(run_pb2.Run.FromString(data).tasks) == 3


def _run_row_id_freed() -> None:
    # a list run row's id, replaced by its start_time's utcoffset
    run_row: list[Any] = [0, _long("r"), "S1", None, None, "RUNNING", "interactive"]
    run_row += [None, None, datetime(2026, 1, 1, tzinfo=_Offset(lambda: _free(run_row, 1)))]
    run_row += [None, None, None, "h1"]
    data, _ = _wire.encode_run(run_row, 1, None, b"", 0, 0.0, None)
    assert run_pb2.Run.FromString(data).id.startswith("rrr")


@pytest.mark.parametrize(
    "case",
    [_list_row_id_freed, _node_type_freed, _document_grown, _rows_emptied, _run_row_id_freed],
)
def test_python_code_run_on_the_way_changes_no_column_already_read(case: Any) -> None:
    """A tzinfo's utcoffset or a status's __hash__ is Python code, run in
    the middle of the first pass: a column whose UTF-8 was taken before it
    is neither freed (read after its free), nor a list measured before it
    grown (written past the bytes' end). Before the fix: a crash, garbage,
    or (AddressSanitizer) a use after free or a heap overflow."""
    case()


class _Overridden(datetime):
    """A datetime whose utcoffset() is not its tzinfo's (astimezone, and so
    convert.set_timestamp, asks the tzinfo)."""

    def utcoffset(self) -> Any:
        return self.tzinfo.offset  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "moment",
    [
        # no double-counted offset, no overflow (timedelta's largest)
        _Overridden(2026, 1, 1, tzinfo=_Offset(lambda: None, timedelta(days=999999999))),
        _Overridden(2026, 1, 1, tzinfo=_Offset(lambda: None, "nonsense")),  # type: ignore[arg-type]
        # moved out of a Timestamp's (and datetime's) years by the offset
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
        # an aware datetime of no offset: astimezone reads it as local time
        datetime(2026, 1, 1, tzinfo=_Offset(lambda: None, None)),
    ],
    ids=["huge-offset", "not-a-timedelta", "before-year-1", "after-year-9999", "no-offset"],
)
def test_odd_offsets_are_written_as_set_timestamp_moves_them(
    moment: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        rows = [_row(0, start_time=moment)]
        data = _wired(rows)
        try:
            built = _tasks(rows)
        except (DataLoss, TypeError, ValueError):
            assert data is None  # refused: add_tasks raises as it did
            return
        assert data is None or run_pb2.Run.FromString(data) == run_pb2.Run.FromString(built)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "columns",
    [
        {"inputs": {"n": 10**400}},
        {"outputs": "\ud800"},
        {"subworkflow": ["not", "an", "object"]},
        {"subworkflow_output": {"x": 10**400}},
    ],
    ids=repr,
)
def test_a_row_it_refuses_is_built_by_add_tasks_which_says_why(columns: dict[str, Any]) -> None:
    rows = [_row(0), _row(1, **columns)]
    # No reference is left behind on the way out of an error.
    documents = [v for v in rows[1] if isinstance(v, dict | list | datetime)]
    counts = [sys.getrefcount(v) for v in documents]
    assert _wired(rows) is None
    assert [sys.getrefcount(v) for v in documents] == counts
    with pytest.raises(DataLoss, match="task T1"):
        _tasks(rows)


@pytest.mark.parametrize(
    "rows",
    [
        [("too", "short")],
        [_row(0, id=None)],
        [_row(0, error=5)],
        [_row(0, status="COMPLETED")],  # not a TaskStatus
        [_row(0, start_time="2026-11-02")],
    ],
    ids=repr,
)
def test_rows_of_the_wrong_shape_are_refused(rows: list[Any]) -> None:
    assert _wired(rows) is None


def test_the_module_is_built_from_this_source() -> None:
    """An editable install builds the module in place: one built from an
    older source would go on serving after the source changed."""
    sources = Path(wire.__file__).with_name("_wire_src").iterdir()
    source = max(sources, key=lambda path: path.stat().st_mtime)
    assert Path(_wire.__file__).stat().st_mtime >= source.stat().st_mtime, (
        f"{source} changed after api/_wire was built: pip install -e . again"
    )


# --- generated documents and rows ---------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_generated_values(document: Any) -> None:
    assert struct_pb2.Value.FromString(_wire.encode_value(document)) == _value(document)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=6),
                "node_id": st.sampled_from(["node0", "node1", "node2", "other"]),
                "status": st.sampled_from(list(TaskStatus)),
                "inputs": st.none() | json_values,
                "outputs": st.none() | json_values,
                "error": st.none() | st.text(max_size=20),
                "parent_task_id": st.none() | st.text(max_size=6),
                "start_time": st.none() | moments,
                "end_time": st.none() | moments,
                "subworkflow": st.none() | st.dictionaries(st.text(max_size=4), json_values),
                "subworkflow_output": st.none() | json_values,
            }
        ),
        max_size=6,
    ),
    st.sampled_from([frozenset(), frozenset({"node0"}), frozenset({"node1", "node2"})]),
)
def test_generated_rows(columns: list[dict[str, Any]], paused: frozenset[str]) -> None:
    rows = [_row(n, **c) for n, c in enumerate(columns)]
    data = _wired(rows, paused)
    assert data is not None
    assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(_tasks(rows, paused))


# --- whole runs (wire.encode_run) --------------------------------------------------


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
    rows = [TaskRow(_row(n)) for n in range(tasks)]
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
    record.tasks[1] = TaskRow(_row(1, outputs=deep))
    moment = datetime(2026, 11, 2, 9, 30)
    encoded_run = wire.encode_run(record, cache, lambda: moment)
    built = run_pb2.Run()
    convert.fill_run(built, record, cache, lambda: moment, splice=True)
    # Too deep for protobuf's parser: compared as bytes, version cut out.
    assert encoded_run.without_version() == built.SerializeToString()
