"""api/_wire when Python code runs in the middle of its first pass (a
tzinfo's utcoffset, a garbage collection): no column already read is freed
or changed under it; and datetimes whose offsets astimezone treats its own
way (found by a helper's fuzzing under AddressSanitizer and UBSan)."""

from __future__ import annotations

import gc
import time
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from wire_rows import task_row, upb_tasks, wired

from spur.runs.v1 import run_pb2
from spur_runs.api import _wire, wire
from spur_runs.errors import DataLoss


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
    row = list(task_row(0, id=_long("x")))
    row[9] = datetime(2026, 1, 1, tzinfo=_Offset(lambda: _free(row, 1)))
    data = wired([row])  # type: ignore[list-item]
    assert data is not None
    assert run_pb2.Run.FromString(data).tasks[0].id.startswith("xxx")


def _node_type_freed() -> None:
    # a node type, dropped from node_types by the row's start_time's utcoffset
    types = {"node0": _long("t")}
    clear = _Offset(lambda: types.clear() or _free([None], 0))
    row = task_row(0, start_time=datetime(2026, 1, 1, tzinfo=clear))
    data = _wire.encode_tasks([row], types, frozenset(), wire._TASK_STATUS_BY_NUMBER)
    assert run_pb2.Run.FromString(data).tasks[0].node_type.startswith("ttt")


def _document_grown() -> None:
    # a document of the first row, grown by the second row's utcoffset
    document: list[Any] = [1]
    grow = _Offset(lambda: document.extend(["z" * 100] * 1000))
    rows = [task_row(0, inputs=document), task_row(1, start_time=datetime(2026, 1, 1, tzinfo=grow))]
    data = wired(rows)
    assert data is not None
    assert len(run_pb2.Run.FromString(data).tasks[0].inputs.list_value.values) == len(document)


def _rows_emptied() -> None:
    # the list of rows, emptied by its first row's utcoffset
    many: list[Any] = []
    empty = _Offset(lambda: many.clear() or gc.collect())
    many.extend(
        [task_row(0, start_time=datetime(2026, 1, 1, tzinfo=empty)), task_row(1), task_row(2)]
    )
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
        rows = [task_row(0, start_time=moment)]
        data = wired(rows)
        try:
            built = upb_tasks(rows)
        except (DataLoss, TypeError, ValueError):
            assert data is None  # refused: add_tasks raises as it did
            return
        assert data is None or run_pb2.Run.FromString(data) == run_pb2.Run.FromString(built)
    finally:
        monkeypatch.undo()
        time.tzset()
