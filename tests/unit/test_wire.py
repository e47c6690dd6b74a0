"""api/_wire (C, api/_wire_src/) against protobuf's own messages: every JSON
value and task row it writes parses to what api/convert.py builds through
upb (set_value, add_tasks), for generated documents and rows too; what it
does not write as convert.py would, it refuses, and convert.py then says
why (DataLoss). Whole runs: test_wire_runs.py; Python code that runs in the
middle of a pass, and odd time zones: test_wire_hostile.py."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_rows import DOCUMENTS, task_row, upb_tasks, upb_value, wired

from spur.runs.v1 import run_pb2
from spur_runs.api import _wire, wire
from spur_runs.errors import DataLoss
from spur_runs.store.models import TaskStatus


@pytest.mark.parametrize("document", DOCUMENTS, ids=repr)
def test_a_value_is_the_one_set_value_builds(document: Any) -> None:
    data = _wire.encode_value(document)
    assert struct_pb2.Value.FromString(data) == upb_value(document)
    # Maps aside (whose order upb does not keep), the very same bytes.
    if not isinstance(document, dict):
        assert data == upb_value(document).SerializeToString()


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
        assert struct_pb2.Value.FromString(_wire.encode_value(document)) == upb_value(document)
    nan = struct_pb2.Value.FromString(_wire.encode_value(math.nan))
    assert math.isnan(nan.number_value)


def test_subclasses_of_str_and_float_are_written_as_their_json_type() -> None:
    class Text(str):
        pass

    class Number(float):
        pass

    document = {"a": Text("x"), "b": [Number(2.5)]}
    assert struct_pb2.Value.FromString(_wire.encode_value(document)) == upb_value(document)


class _Mapping(dict):  # type: ignore[type-arg]
    pass


def test_other_subclasses_are_left_to_convert() -> None:
    """Even one that overrides nothing: dict, list, tuple and int are read
    from their storage, which only their own types guarantee is what
    set_value reads. convert.py then builds the task as a message."""
    for document in ({"a": _Mapping()}, _Mapping(), [True, _Float(1)]):
        with pytest.raises(_wire.Refused, match="not one of JSON's own types"):
            _wire.encode_value(document)
    rows = [task_row(0, inputs=_Mapping(a=1))]
    assert wired(rows) is None


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
    rows = [task_row(0, subworkflow=_Items(a=2))]
    assert wired(rows) is None


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
    assert _wire.encode_value(deep) == upb_value(deep).SerializeToString()
    with pytest.raises(_wire.Refused, match="nested too deeply"):
        _wire.encode_value({"a": deep})


def test_tasks_are_the_ones_add_tasks_builds() -> None:
    rows = [
        task_row(0),
        task_row(1, status=TaskStatus.RUNNING, end_time=None, outputs=None),
        task_row(2, status=TaskStatus.PENDING, start_time=None, end_time=None, inputs=None),
        task_row(3, error="", parent_task_id="T1", subworkflow={}, subworkflow_output=[]),
        task_row(4, error="boom é", subworkflow={"nodes": [{"id": "x"}]}, subworkflow_output="s"),
        task_row(5, id="", run_id="", node_id=""),  # proto3: empty strings are not written
        task_row(6, node_id="unknown"),  # no node type: ""
        task_row(7, inputs={}, outputs=[]),  # {} and [] stay such
        task_row(8, inputs=None, outputs=None, start_time=datetime(1970, 1, 1)),  # a zero Timestamp
    ]
    for paused in (frozenset(), frozenset({"node0"})):
        data = wired(rows, paused)
        assert data is not None
        assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(upb_tasks(rows, paused))
    assert wired([]) == b""


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
    rows = [task_row(0, start_time=moment, end_time=moment)]
    data = wired(rows)
    assert data is not None
    assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(upb_tasks(rows))


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
    rows = [task_row(0), task_row(1, **columns)]
    # No reference is left behind on the way out of an error.
    documents = [v for v in rows[1] if isinstance(v, dict | list | datetime)]
    counts = [sys.getrefcount(v) for v in documents]
    assert wired(rows) is None
    assert [sys.getrefcount(v) for v in documents] == counts
    with pytest.raises(DataLoss, match="task T1"):
        upb_tasks(rows)


@pytest.mark.parametrize(
    "rows",
    [
        [("too", "short")],
        [task_row(0, id=None)],
        [task_row(0, error=5)],
        [task_row(0, status="COMPLETED")],  # not a TaskStatus
        [task_row(0, start_time="2026-11-02")],
    ],
    ids=repr,
)
def test_rows_of_the_wrong_shape_are_refused(rows: list[Any]) -> None:
    assert wired(rows) is None


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
    assert struct_pb2.Value.FromString(_wire.encode_value(document)) == upb_value(document)


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
    rows = [task_row(n, **c) for n, c in enumerate(columns)]
    data = wired(rows, paused)
    assert data is not None
    assert run_pb2.Run.FromString(data) == run_pb2.Run.FromString(upb_tasks(rows, paused))
