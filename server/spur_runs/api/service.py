"""The RunService servicer. Each method is thin: validate the request, open
one conn scope, call storage, convert, return. Errors are raised as
errors.ServiceError (or whatever storage raised) and turned into statuses in
one place, rpc.errors.ErrorHook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1 import run_service_pb2_grpc

from ..errors import InvalidArgument, ResourceExhausted, Unavailable
from ..store import runs
from ..store.db import Database
from ..store.models import RunStatus
from . import convert, filters, paging, rules, wire
from .spliced import Spliced
from .versions import VersionCache
from .watch import WatchHub

M = TypeVar("M")

# ListRuns calls whose cost grows with the table, whatever their page size: a
# page-number page more than this many runs deep (the database walks every
# run before it), or a total count. A review, 2026-12-04: 16 such calls at
# once (page=2147483647, 222k runs) made an honest GetRun take 2.4 s, not
# 3 ms. They take one of `heavy_reads` slots (half the RPC threads), waiting
# at most HEAVY_SLOT_WAIT_S; page tokens cost the same at any depth.
HEAVY_OFFSET = 1_000
HEAVY_SLOT_WAIT_S = 0.5


def validate_run_id(value: str, field: str = "run_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not rules.RUN_ID.matches(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidArgument(field, f"must be a run id such as R42, got {shown!r}")
    return value


@dataclass(frozen=True)
class ListQuery:
    """A ListRuns request, checked: the page runs.list_runs is asked for."""

    size: int
    where: runs.RunFilter
    basic: bool  # RUN_VIEW_BASIC
    scope: str  # what its page tokens are bound to
    after: runs.RunCursor | None
    offset: int


def list_query(request: pb.ListRunsRequest) -> ListQuery:
    """Check a ListRuns request (InvalidArgument) and say which page it asks for."""
    size = rules.LIST_PAGE_SIZE.check(_optional(request, "page_size"), "page_size")
    page = rules.PAGE.check(_optional(request, "page"), "page")
    where = filters.run_filter(request)
    scope = filters.list_scope(where)
    after = None
    if request.page_token:
        if page > 1:
            raise InvalidArgument("page", "cannot be combined with page_token")
        after = runs.RunCursor(*paging.decode_run_cursor(scope, request.page_token))
    offset = (page - 1) * size
    return ListQuery(size, where, filters.is_basic(request.view), scope, after, offset)


def _optional(request: Any, field: str) -> int | None:
    """A proto3 `optional` int32 field: None when unset, so that an explicit
    0 is told apart from "use the default" (and rejected)."""
    return int(getattr(request, field)) if request.HasField(field) else None


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """`splice`: GetRun, ListRuns and GetChildRuns may answer a
    spliced.Spliced, whose workflow versions are bytes put in place when it
    is serialized (the server asks for that: rpc/encode.py serializes it,
    gateway/render.py renders it). Without it, messages."""

    def __init__(
        self,
        db: Database,
        versions: VersionCache | None = None,
        hub: WatchHub | None = None,
        *,
        splice: bool = False,
        heavy_reads: int | None = None,
    ) -> None:
        self._db = db
        self._versions = versions or VersionCache()
        self._hub = hub
        self._splice = splice
        self._heavy_limit = heavy_reads
        self._heavy = threading.BoundedSemaphore(heavy_reads) if heavy_reads else None

    def _answer(
        self,
        response: M,
        records: list[runs.RunRecord],
        *,
        basic: bool = False,
        failed: bool = False,
    ) -> M | Spliced:
        """`response` (without runs) with the runs of `records`: as bytes
        written in C beside it (a Spliced) when the server asked for that,
        otherwise built into it as messages. `failed`: the run's status is
        FAILED (GetRunStatus)."""
        if self._splice:
            return Spliced(
                response,
                [
                    wire.encode_run(record, self._versions, basic=basic, failed=failed)
                    for record in records
                ],
            )
        message: Any = response
        for record in records:
            run = message.runs.add() if hasattr(message, "runs") else message.run
            convert.fill_run(run, record, self._versions, basic=basic)
            if failed:
                run.status = convert.RUN_STATUS[RunStatus.FAILED]
        return response

    def _load_versions(self, keys: list[tuple[str, str] | None]) -> None:
        """Cache the workflow versions of `keys` that are not cached, read
        after a one-statement read: immutable rows need not come from its
        snapshot. No connection is taken when all are cached; a miss reads
        in a transaction (read_one bounds only hot statements by the
        caller's deadline)."""
        if self._versions.missing(keys):
            with self._db.read() as conn:
                self._versions.load(conn, keys)

    def _read_run(
        self, run_id: str, *, basic: bool = False, poll: bool = False
    ) -> tuple[runs.RunRecord, bool]:
        """GetRun's read of a run and, with `poll`, whether PySpur's status
        poll reports it FAILED (runs.has_failed_and_none_unfinished)."""
        try:
            # One statement, no transaction around it (the common case): all
            # the run's tasks are in the record, so the poll reads no more.
            with self._db.read_one() as conn:
                record = runs.get_run(conn, run_id, with_tasks=not basic, single_statement=True)
                failed = poll and runs.has_failed_and_none_unfinished(conn, record)
        except runs.MoreStatementsNeeded:
            # A run with more tasks than one message holds: its counts come
            # from more statements, which must share the list's snapshot.
            with self._db.read() as conn:
                record = runs.get_run(conn, run_id, with_tasks=not basic)
                failed = poll and runs.has_failed_and_none_unfinished(conn, record)
        self._load_versions([record.version_key])
        return record, failed

    def GetRun(  # type: ignore[override] # or a Spliced of it
        self, request: pb.GetRunRequest, context: grpc.ServicerContext
    ) -> pb.GetRunResponse | Spliced:
        basic = filters.is_basic(request.view)
        record, _ = self._read_run(validate_run_id(request.run_id), basic=basic)
        return self._answer(pb.GetRunResponse(), [record], basic=basic)

    def GetRunStatus(  # type: ignore[override] # or a Spliced of it
        self, request: pb.GetRunStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetRunStatusResponse | Spliced:
        record, failed = self._read_run(validate_run_id(request.run_id), poll=True)
        # `failed`: PySpur's poll marks it so (and stores it; this call never writes).
        return self._answer(pb.GetRunStatusResponse(), [record], failed=failed)

    def ListRuns(  # type: ignore[override] # or a Spliced of it
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse | Spliced:
        query = list_query(request)
        slots = self._heavy
        if slots is None or not (query.offset > HEAVY_OFFSET or request.include_total_size):
            return self._list_runs(request, query)
        if not slots.acquire(timeout=HEAVY_SLOT_WAIT_S):
            raise ResourceExhausted(
                f"{self._heavy_limit} page-number pages deeper than {HEAVY_OFFSET} runs or "
                "total counts are being read, the most this server reads at once; page by "
                "page_token (as cheap at any depth), or retry shortly"
            )
        try:
            return self._list_runs(request, query)
        finally:
            slots.release()

    def _list_runs(
        self, request: pb.ListRunsRequest, query: ListQuery
    ) -> pb.ListRunsResponse | Spliced:
        total = None
        page = None
        if not (query.basic or request.include_total_size):
            # The common page in one statement, no transaction around it.
            with self._db.read_one() as conn:
                page = runs.list_runs_in_one_statement(
                    conn,
                    limit=query.size,
                    after=query.after,
                    offset=query.offset,
                    filters=query.where,
                )
            if page is not None:
                self._load_versions([r.version_key for r in page[0]])
        if page is not None:
            records, more = page
        else:
            with self._db.read() as conn:
                records, more = runs.list_runs(
                    conn,
                    limit=query.size,
                    after=query.after,
                    offset=query.offset,
                    filters=query.where,
                    with_tasks=not query.basic,
                )
                self._versions.load(conn, (r.version_key for r in records))
                if request.include_total_size:
                    # In the page's snapshot: the count agrees with the page.
                    total = min(runs.count_runs(conn, query.where), 2**31 - 1)
        response = pb.ListRunsResponse(
            next_page_token=_next_run_token(query.scope, records, more), total_size=total
        )
        return self._answer(response, records, basic=query.basic)

    def GetRunTasks(
        self, request: pb.GetRunTasksRequest, context: grpc.ServicerContext
    ) -> pb.GetRunTasksResponse:
        run_id = validate_run_id(request.run_id)
        size = rules.TASKS_PAGE_SIZE.check(_optional(request, "page_size"), "page_size")
        scope = f"tasks:{run_id}"
        after = (
            paging.decode_intid_cursor(scope, request.page_token) if request.page_token else None
        )
        with self._db.read() as conn:
            run = runs.get_run_row(conn, run_id)
            key = runs.version_key(run)
            self._versions.load(conn, [key])
            rows, paused, more = runs.list_tasks(conn, run_id, limit=size, after_intid=after)
        entry = self._versions.get(key)
        graph = entry[1] if entry is not None else convert.EMPTY_GRAPH
        response = pb.GetRunTasksResponse(
            next_page_token=paging.encode_intid_cursor(scope, rows[-1]._intid) if more else ""
        )
        convert.add_tasks(response.tasks, rows, paused, graph)
        return response

    def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRunResponse:
        run_id = validate_run_id(request.run_id)
        with self._db.write() as conn:
            runs.delete_run(conn, run_id)
        return pb.DeleteRunResponse()

    def GetChildRuns(  # type: ignore[override] # or a Spliced of it
        self, request: pb.GetChildRunsRequest, context: grpc.ServicerContext
    ) -> pb.GetChildRunsResponse | Spliced:
        run_id = validate_run_id(request.run_id)
        size = rules.CHILDREN_PAGE_SIZE.check(_optional(request, "page_size"), "page_size")
        basic = filters.is_basic(request.view)
        scope = f"children:{run_id}"
        after = (
            runs.RunCursor(*paging.decode_run_cursor(scope, request.page_token))
            if request.page_token
            else None
        )
        with self._db.read() as conn:
            runs.require_run(conn, run_id)
            records, more = runs.list_runs(
                conn, limit=size, after=after, parent_run_id=run_id, with_tasks=not basic
            )
            self._versions.load(conn, (r.version_key for r in records))
        response = pb.GetChildRunsResponse(next_page_token=_next_run_token(scope, records, more))
        return self._answer(response, records, basic=basic)

    def WatchRun(  # type: ignore[override] # grpc's non-blocking form
        self,
        request: pb.WatchRunRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None],
    ) -> None:
        """Non-blocking (see watch.py): sends the current state and returns;
        the hub sends the rest. Errors raised here come before any message."""
        run_id = validate_run_id(request.run_id)
        if self._hub is None:
            raise Unavailable("this server does not serve WatchRun")
        self._hub.watch(run_id, context, send_response_callback)

    # grpc calls it with a send callback and frees its thread when it returns.
    WatchRun.experimental_non_blocking = True  # type: ignore[attr-defined]


def _next_run_token(scope: str, records: list[runs.RunRecord], more: bool) -> str:
    if not more or not records:
        return ""
    last = records[-1].row
    return paging.encode_run_cursor(scope, last.start_time, last._intid)
