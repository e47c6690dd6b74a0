"""Run views (issue 7) on GetRun, ListRuns and GetChildRuns, over gRPC and
HTTP: BASIC leaves tasks and the workflow definition out, FULL has them; a
BASIC page of 100 runs reads no task rows at all.

Moved out of test_filters.py (which had grown past 580 lines) unchanged.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy import insert, select

from calls import bad_request_field, call_error, count_statements
from factories import add_run, add_workflow, all_done
from http_client import Http, start_http_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Run, RunStatus, Task, TaskStatus

T0 = datetime(2026, 11, 2, 9, 0, 0)


def assert_basic(run: run_pb2.Run) -> None:
    assert not run.tasks and run.task_count == 0 and run.percentage_complete == 0
    version = run.workflow_version
    assert version.id == run.workflow_version_id and version.name and version.definition_hash
    assert not version.HasField("definition")


def assert_full(run: run_pb2.Run) -> None:
    assert run.tasks and run.task_count == len(run.tasks) and run.percentage_complete > 0
    assert run.workflow_version.HasField("definition")
    assert run.workflow_version.definition["nodes"]


@pytest.mark.slow
def test_views_on_get_list_and_children(db: Database, migrated_url: str) -> None:
    with db.write() as s:
        workflow = add_workflow(s)
        # Ended: its duration does not grow between two calls.
        parent = add_run(s, workflow, tasks=all_done(), end_time=T0 + timedelta(minutes=1))
        for _ in range(3):
            add_run(s, workflow, parent_run_id=parent, tasks=all_done()[:3])
    server = start_http_server(migrated_url)
    assert server.http_port is not None
    http = Http(server.http_port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            basic, full, unset = (
                run_pb2.RUN_VIEW_BASIC,
                run_pb2.RUN_VIEW_FULL,
                run_pb2.RUN_VIEW_UNSPECIFIED,
            )
            assert_basic(stub.GetRun(pb.GetRunRequest(run_id=parent, view=basic)).run)
            for view in (full, unset):
                assert_full(stub.GetRun(pb.GetRunRequest(run_id=parent, view=view)).run)
                for run in stub.ListRuns(pb.ListRunsRequest(view=view, parent_only=False)).runs:
                    assert_full(run)
                for run in stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent, view=view)).runs:
                    assert_full(run)
            listed = stub.ListRuns(pb.ListRunsRequest(view=basic, parent_only=False)).runs
            children = stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent, view=basic)).runs
            assert len(listed) == 4 and len(children) == 3
            for run in [*listed, *children]:
                assert_basic(run)
            # A BASIC run is the FULL run without what BASIC leaves out.
            whole = stub.GetRun(pb.GetRunRequest(run_id=parent)).run
            whole.ClearField("tasks")
            whole.task_count, whole.percentage_complete = 0, 0
            whole.workflow_version.ClearField("definition")
            assert stub.GetRun(pb.GetRunRequest(run_id=parent, view=basic)).run == whole
            error = call_error(stub.GetChildRuns, pb.GetChildRunsRequest(run_id=parent, view=5))
            assert bad_request_field(error) == "view"
            error = call_error(stub.GetRun, pb.GetRunRequest(run_id=parent, view=-1))
            assert bad_request_field(error) == "view"
        for path in (f"/run/{parent}", f"/run/{parent}/children", "/run"):
            for view in ("RUN_VIEW_BASIC", "1"):
                document = http.get(f"{path}?view={view}").json()
                shown = document if isinstance(document, list) else [document]
                assert shown, path
                for run in shown:
                    assert run["tasks"] == [] and run["task_count"] == 0
                    assert run["workflow_version"]["definition"] is None
                    assert run["workflow_version"]["name"] == "demo"
            document = http.get(f"{path}?view=RUN_VIEW_FULL").json()
            shown = document if isinstance(document, list) else [document]
            assert all(run["tasks"] and run["workflow_version"]["definition"] for run in shown)
            assert http.get(f"{path}?view=RUN_VIEW_NONE").status == 400
    finally:
        http.close()
        server.stop(grace=1)


_TASKS_TABLE = re.compile(r"\btasks\b", re.IGNORECASE)


@pytest.mark.slow
def test_a_basic_page_of_100_runs_with_50_tasks_each_reads_no_task_rows(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    with db.write() as s:
        workflow = add_workflow(s)
        parent = add_run(s, workflow)
        s.execute(
            insert(Run),
            [
                {
                    "workflow_id": workflow[0],
                    "workflow_version_id": workflow[1],
                    "parent_run_id": parent,
                    "status": RunStatus.RUNNING,
                    "run_type": "batch",
                    "start_time": T0 + timedelta(seconds=i),
                }
                for i in range(100)
            ],
        )
        run_ids = s.execute(select(Run.id).where(Run.parent_run_id == parent)).scalars().all()
        s.execute(
            insert(Task),
            [
                {"run_id": run_id, "node_id": "llm", "status": TaskStatus.COMPLETED}
                for run_id in run_ids
                for _ in range(50)
            ],
        )
    basic = run_pb2.RUN_VIEW_BASIC
    calls = {
        "ListRuns": lambda view: (
            stub.ListRuns(pb.ListRunsRequest(page_size=100, view=view, parent_only=False)).runs
        ),
        "GetChildRuns": lambda view: (
            stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent, page_size=100, view=view)).runs
        ),
        "GetRun": lambda view: [stub.GetRun(pb.GetRunRequest(run_id=run_ids[0], view=view)).run],
    }
    for name, call in calls.items():
        with count_statements(server) as statements:
            runs = call(basic)
        assert len(runs) == (1 if name == "GetRun" else 100), name
        assert all(not r.tasks and r.task_count == 0 for r in runs), name
        touching = [s for s in statements if _TASKS_TABLE.search(s)]
        assert statements and not touching, (name, touching)
        # FULL, the default, reads them (the check above can fail).
        with count_statements(server) as statements:
            runs = call(run_pb2.RUN_VIEW_UNSPECIFIED)
        assert any(_TASKS_TABLE.search(s) for s in statements), name
        assert all(r.task_count == 50 for r in runs if r.id != parent), name
