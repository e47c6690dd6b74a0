"""ListRuns' filters and the views of Get/List/Children: request fields ->
validated values (store/statements.py's RunFilter, a view), and the page token scope a
filter implies. InvalidArgument names the field at fault.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2

from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb

from ..errors import InvalidArgument
from ..store.runs import NO_FILTER, RunFilter
from . import paging
from .convert import STORED_RUN_STATUS
from .rules import RUN_STATUS_FILTER, RUN_TYPE, WORKFLOW_ID

_VIEWS = frozenset(run_pb2.RunView.values())
_EPOCH = datetime(1970, 1, 1)
_MIN_SECONDS = int((datetime(1, 1, 1) - _EPOCH).total_seconds())
_MAX_SECONDS = int((datetime(9999, 12, 31, 23, 59, 59) - _EPOCH).total_seconds())


def is_basic(view: int, field: str = "view") -> bool:
    """True for RUN_VIEW_BASIC; FULL and UNSPECIFIED are the full view."""
    if view not in _VIEWS:
        raise InvalidArgument(field, f"{view} is not a RunView")
    return view == run_pb2.RUN_VIEW_BASIC


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _stored_time(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as the naive UTC datetime it bounds, rounded up to the
    microsecond that the database stores: `start_time >= t` and
    `start_time < t` mean the same for microsecond values with the rounded t."""
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 10**9:
        raise InvalidArgument(
            field, "must be a valid timestamp between 0001-01-01 and 9999-12-31 (UTC)"
        )
    micros = -(-stamp.nanos // 1000)  # ceiling
    value = _EPOCH + timedelta(seconds=stamp.seconds)
    try:
        return value + timedelta(microseconds=micros)
    except OverflowError:  # within the last microsecond of 9999: no stored time is later
        return datetime.max


def run_filter(request: pb.ListRunsRequest) -> RunFilter:
    """The validated filters of a ListRuns request."""
    workflow_id = request.workflow_id or None
    if workflow_id is not None and not WORKFLOW_ID.matches(workflow_id):
        raise InvalidArgument(
            "workflow_id", f"must be a workflow id such as S3, got {_shown(workflow_id)}"
        )
    statuses = set()
    for number in request.status:
        if number not in RUN_STATUS_FILTER.numbers:
            name = (
                run_pb2.Run.Status.Name(number) if number in run_pb2.Run.Status.values() else number
            )
            raise InvalidArgument("status", f"{name} is not a status a run can have")
        statuses.add(STORED_RUN_STATUS[number])
    run_type = request.run_type or None
    if run_type is not None:
        if len(run_type) > RUN_TYPE.max_length:
            raise InvalidArgument("run_type", f"must be at most {RUN_TYPE.max_length} characters")
        if not RUN_TYPE.matches(run_type):
            raise InvalidArgument("run_type", "must not contain control characters")
    after = (
        _stored_time(request.start_time_after, "start_time_after")
        if request.HasField("start_time_after")
        else None
    )
    before = (
        _stored_time(request.start_time_before, "start_time_before")
        if request.HasField("start_time_before")
        else None
    )
    if after is not None and before is not None and after >= before:
        raise InvalidArgument(
            "start_time_before", "must be later than start_time_after (an empty range)"
        )
    return RunFilter(
        workflow_id=workflow_id,
        statuses=frozenset(statuses),
        run_type=run_type,
        # Unset: top-level runs only, as PySpur's router lists them.
        parent_only=request.parent_only if request.HasField("parent_only") else True,
        start_after=after,
        start_before=before,
    )


def list_scope(filters: RunFilter) -> str:
    """Page token scope of ListRuns with `filters`. Unfiltered, it is the
    plain "runs" that tokens had before filters existed, so that those stay
    valid across an upgrade."""
    if filters == NO_FILTER:
        return "runs"
    canonical: dict[str, Any] = {
        "workflow_id": filters.workflow_id,
        "status": sorted(s.value for s in filters.statuses),
        "run_type": filters.run_type,
        "parent_only": filters.parent_only,
        "after": filters.start_after.isoformat() if filters.start_after else None,
        "before": filters.start_before.isoformat() if filters.start_before else None,
    }
    return paging.filtered_scope("runs", canonical)
