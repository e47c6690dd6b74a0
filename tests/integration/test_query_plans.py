"""The list queries are served by indexes, walking from the cursor: a keyset
page costs the same at any depth. Checked on the query plans (tiny test
tables make timings meaningless; bench/ measures 1,000,000 runs)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, event, text

from factories import add_run, add_workflow
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus

T0 = datetime(2026, 11, 2, 9, 0, 0)


def plan(conn: Connection, sql: str, params: object) -> str:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[arg-type]
        return "\n".join(str(r[-1]) for r in rows)
    # Tiny tables make a sequential scan cheapest; ask for the plan the
    # planner picks when scanning is not free, as on a large table.
    conn.execute(text("SET LOCAL enable_seqscan = off"))
    rows = conn.exec_driver_sql(f"EXPLAIN {sql}", params)  # type: ignore[arg-type]
    return "\n".join(str(r[0]) for r in rows)


def test_keyset_pages_walk_the_index_without_sorting(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        parent = add_run(s, wf)
        for i in range(12):
            add_run(
                s, wf, start_time=T0 + timedelta(minutes=i), parent_run_id=parent if i % 2 else None
            )
    captured: list[tuple[str, object]] = []
    token = stub.ListRuns(pb.ListRunsRequest(page_size=3)).next_page_token
    child_token = stub.GetChildRuns(
        pb.GetChildRunsRequest(run_id=parent, page_size=2)
    ).next_page_token
    from sqlalchemy import event

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM runs" in statement and "ORDER BY runs.start_time DESC" in statement:
            captured.append((statement, parameters))

    event.listen(server.db.engine, "before_cursor_execute", grab)
    try:
        stub.ListRuns(pb.ListRunsRequest(page_size=3, page_token=token))
        stub.GetChildRuns(
            pb.GetChildRunsRequest(run_id=parent, page_size=2, page_token=child_token)
        )
    finally:
        event.remove(server.db.engine, "before_cursor_execute", grab)
    assert len(captured) == 2
    with db.read() as conn:
        for statement, params in captured:
            shown = plan(conn, statement, params)
            assert "ix_spur_runs_runs_" in shown, shown
            assert "TEMP B-TREE" not in shown and "Sort" not in shown, shown
            assert "MULTI-INDEX OR" not in shown and "BitmapOr" not in shown, shown
            # The cursor bounds the index scan: it starts at the cursor
            # instead of filtering every newer run on the way there.
            if conn.dialect.name == "sqlite":
                assert "start_time<?" in shown, shown
            else:
                assert "Index Cond" in shown and "start_time <=" in shown, shown


@pytest.mark.slow
def test_filtered_pages_walk_an_index_without_sorting(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    """ListRuns filtered by workflow_id, one status or parent_only: page 2
    starts an index range at the cursor (migration 0003's indexes and 0002's
    parent index), never a full scan nor a sort of the matching runs."""
    with db.write() as s:
        first, second = add_workflow(s, "first"), add_workflow(s, "second")
        parent = add_run(s, first)
        for i in range(24):
            add_run(
                s,
                first if i % 3 else second,
                status=RunStatus.FAILED if i % 4 == 0 else RunStatus.COMPLETED,
                start_time=T0 + timedelta(minutes=i),
                parent_run_id=parent if i % 2 else None,
            )
    filters = {
        "workflow_id": (
            {"workflow_id": second[0], "parent_only": False},
            "ix_spur_runs_runs_workflow_start_time",
        ),
        "status": (
            {"status": [run_pb2.Run.FAILED], "parent_only": False},
            "ix_spur_runs_runs_status_start_time",
        ),
        "parent_only": ({"parent_only": True}, "ix_spur_runs_runs_"),
    }
    for name, (fields, index) in filters.items():
        token = stub.ListRuns(pb.ListRunsRequest(page_size=2, **fields)).next_page_token
        captured: list[tuple[str, object]] = []

        def grab(conn, cursor, statement, parameters, context, executemany, captured=captured):  # type: ignore[no-untyped-def]
            if "FROM runs" in statement and "ORDER BY runs.start_time DESC" in statement:
                captured.append((statement, parameters))

        event.listen(server.db.engine, "before_cursor_execute", grab)
        try:
            page = stub.ListRuns(pb.ListRunsRequest(page_size=2, page_token=token, **fields))
        finally:
            event.remove(server.db.engine, "before_cursor_execute", grab)
        assert len(page.runs) == 2 and len(captured) == 1, name
        ((statement, params),) = captured
        with db.read() as conn:
            shown = plan(conn, statement, params)
        assert index in shown, (name, shown)
        assert "TEMP B-TREE" not in shown and "Sort" not in shown, (name, shown)
        assert "SCAN runs" not in shown and "Seq Scan on runs" not in shown, (name, shown)
        if conn.dialect.name == "sqlite":
            assert "start_time<?" in shown, (name, shown)  # from the cursor
        else:
            assert "Index Cond" in shown and "start_time <=" in shown, (name, shown)


@pytest.mark.slow
def test_get_run_reads_run_and_tasks_through_indexes(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    """GetRun's one statement finds the run by its unique id and its tasks by
    the (run_id, _intid) index: no scan of either table, whatever its size."""
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=[("llm", TaskStatus.COMPLETED)] * 3)
    captured: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    event.listen(server.db.engine, "before_cursor_execute", grab)
    try:
        assert len(stub.GetRun(pb.GetRunRequest(run_id=run_id)).run.tasks) == 3
    finally:
        event.remove(server.db.engine, "before_cursor_execute", grab)
    (statement, params), *_ = [c for c in captured if "AS walk" in c[0]]
    with db.read() as conn:
        shown = plan(conn, statement, params)
    if conn.dialect.name == "sqlite":
        assert "SCAN runs" not in shown and "SCAN tasks" not in shown, shown
        assert "ix_spur_runs_tasks_run_id" in shown, shown
    else:
        assert "Seq Scan" not in shown, shown
        assert "ix_spur_runs_tasks_run_id" in shown, shown
