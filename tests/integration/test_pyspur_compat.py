"""A database PySpur made, rows written with PySpur's own ORM classes
(`pip install --no-deps pyspur==0.1.18`), served unchanged through the RPCs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from pyspur_peer import (
    add_pyspur_workflow,
    pyspur_0_1_5_schema,
    pyspur_migrations,
    pyspur_schema,
)
from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.engine import normalize_url
from spur_runs.store.schema_check import missing_indexes

pytest.importorskip("pyspur.models.base_model")


@pytest.fixture
def pyspur_url(database_url: str) -> str:
    pyspur_schema(database_url)
    return database_url


@pytest.fixture
def pyspur_stub(pyspur_url: str) -> Iterator[RunServiceStub]:
    server = start_server(pyspur_url)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield RunServiceStub(channel)
    server.stop(grace=1)


def write_with_pyspur(url: str) -> dict[str, str]:
    from pyspur.models.run_model import RunModel, RunStatus
    from pyspur.models.task_model import TaskModel, TaskStatus

    start = datetime(2026, 11, 20, 8, 30)
    engine = create_engine(normalize_url(url))
    with Session(engine) as session:
        workflow, version = add_pyspur_workflow(session)
        parent = RunModel(
            workflow_id=workflow.id,
            workflow_version_id=version.id,
            status=RunStatus.PAUSED,
            run_type="batch",
            initial_inputs={"input_node": {"question": "refund?"}},
            start_time=start,
        )
        session.add(parent)
        session.flush()
        for n, (node, status) in enumerate(
            [
                ("input_node", TaskStatus.COMPLETED),
                ("llm", TaskStatus.COMPLETED),
                ("router", TaskStatus.COMPLETED),
                ("approval", TaskStatus.PAUSED),
                ("summarize", TaskStatus.PENDING),
            ]
        ):
            session.add(
                TaskModel(
                    run_id=parent.id,
                    node_id=node,
                    status=status,
                    inputs={"step": n},
                    outputs={"ok": True} if status == TaskStatus.COMPLETED else None,
                    start_time=start + timedelta(seconds=n),
                )
            )
        child = RunModel(
            workflow_id=workflow.id,
            workflow_version_id=version.id,
            parent_run_id=parent.id,
            status=RunStatus.COMPLETED,
            run_type="interactive",
            start_time=start + timedelta(minutes=1),
            end_time=start + timedelta(minutes=2),
            outputs={"output": {"answer": "yes"}},
        )
        session.add(child)
        session.commit()
        ids = {
            "parent": parent.id,
            "child": child.id,
            "workflow": workflow.id,
            "version": version.id,
        }
    engine.dispose()
    return ids


@pytest.mark.slow
def test_rows_written_by_pyspur_are_served(pyspur_url: str, pyspur_stub: RunServiceStub) -> None:
    ids = write_with_pyspur(pyspur_url)
    run = pyspur_stub.GetRun(pb.GetRunRequest(run_id=ids["parent"])).run
    assert run.id == ids["parent"] and run.workflow_id == ids["workflow"]
    assert run.workflow_version.id == ids["version"]
    assert run.workflow_version.definition_hash == "abc123"
    assert run.status == run_pb2.Run.PAUSED and run.run_type == "batch"
    assert json_format.MessageToDict(run.initial_inputs) == {"input_node": {"question": "refund?"}}
    assert [t.node_type for t in run.tasks] == [
        "InputNode",
        "SingleLLMCallNode",
        "RouterNode",
        "HumanInterventionNode",
        "SingleLLMCallNode",
    ]
    assert [t.is_downstream_of_pause for t in run.tasks] == [False] * 4 + [True]
    assert run.percentage_complete == pytest.approx(60.0)

    listed = pyspur_stub.ListRuns(pb.ListRunsRequest(parent_only=False)).runs
    assert [r.id for r in listed] == [ids["child"], ids["parent"]]
    # Unset, parent_only lists top-level runs, as PySpur's router does.
    assert [r.id for r in pyspur_stub.ListRuns(pb.ListRunsRequest()).runs] == [ids["parent"]]
    children = pyspur_stub.GetChildRuns(pb.GetChildRunsRequest(run_id=ids["parent"])).runs
    assert [r.id for r in children] == [ids["child"]]
    assert children[0].duration == pytest.approx(60.0)
    tasks = pyspur_stub.GetRunTasks(pb.GetRunTasksRequest(run_id=ids["parent"])).tasks
    assert len(tasks) == 5

    pyspur_stub.DeleteRun(pb.DeleteRunRequest(run_id=ids["parent"]))
    assert not pyspur_stub.ListRuns(pb.ListRunsRequest(parent_only=False)).runs


@pytest.mark.slow
def test_pyspur_database_lacks_our_indexes_until_migrate(pyspur_url: str) -> None:
    from spur_runs.store.migrate import migrate

    engine = create_engine(normalize_url(pyspur_url))
    assert "ix_spur_runs_tasks_run_id" in missing_indexes(engine)
    before = {t: inspect(engine).get_columns(t) for t in inspect(engine).get_table_names()}
    engine.dispose()
    migrate(pyspur_url)
    engine = create_engine(normalize_url(pyspur_url))
    assert missing_indexes(engine) == []
    after = {
        t: inspect(engine).get_columns(t)
        for t in inspect(engine).get_table_names()
        if t != "spur_runs_alembic_version"
    }
    engine.dispose()
    assert repr(after) == repr(before)
    # PySpur still writes to it.
    write_with_pyspur(pyspur_url)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")
def test_a_status_pyspurs_migrations_left_out_filters_to_no_run(postgres_url: str) -> None:
    """PySpur's own migrations (what `pyspur serve` runs on PostgreSQL) make
    `runstatus` without CANCELED: 000 has four labels and 007 adds PAUSED
    only. Filtering by CANCELED there matches no run, alone or with other
    statuses, counted too; it was INTERNAL (PostgreSQL refused the value)."""
    from pyspur.models.run_model import RunModel, RunStatus

    pyspur_migrations(postgres_url)
    engine = create_engine(normalize_url(postgres_url))
    with Session(engine) as session:
        workflow, version = add_pyspur_workflow(session)
        failed = RunModel(
            workflow_id=workflow.id,
            workflow_version_id=version.id,
            status=RunStatus.FAILED,
            run_type="interactive",
            start_time=datetime(2026, 11, 20, 8, 30),
        )
        session.add(failed)
        session.commit()
        failed_id = failed.id
    engine.dispose()
    server = start_server(postgres_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            for statuses, expected in [
                ([run_pb2.Run.CANCELED], []),
                ([run_pb2.Run.CANCELED, run_pb2.Run.FAILED], [failed_id]),
            ]:
                for view in (run_pb2.RUN_VIEW_BASIC, run_pb2.RUN_VIEW_FULL):
                    request = pb.ListRunsRequest(
                        status=statuses, view=view, include_total_size=True
                    )
                    answer = stub.ListRuns(request)
                    assert [run.id for run in answer.runs] == expected
                    assert answer.total_size == len(expected)
    finally:
        server.stop(grace=1)


def write_what_pyspur_0_1_5_can(url: str) -> dict[str, str]:
    """A completed run with a child and five tasks of the statuses PySpur
    0.1.5's types hold (no PAUSED), written by PySpur's own classes."""
    from pyspur.models.run_model import RunModel, RunStatus
    from pyspur.models.task_model import TaskModel, TaskStatus

    start = datetime(2026, 11, 20, 8, 30)
    engine = create_engine(normalize_url(url))
    with Session(engine) as session:
        workflow, version = add_pyspur_workflow(session)

        def run(**fields: object) -> str:
            row = RunModel(
                workflow_id=workflow.id,
                workflow_version_id=version.id,
                status=RunStatus.COMPLETED,
                run_type="interactive",
                **fields,
            )
            session.add(row)
            session.flush()
            return str(row.id)

        parent = run(start_time=start, end_time=start + timedelta(minutes=2))
        child = run(parent_run_id=parent, start_time=start + timedelta(minutes=1))
        statuses = ["COMPLETED", "COMPLETED", "FAILED", "CANCELED", "PENDING"]
        for n, (node, status) in enumerate(
            zip(["input_node", "llm", "router", "approval", "summarize"], statuses, strict=True)
        ):
            session.add(
                TaskModel(
                    run_id=parent,
                    node_id=node,
                    status=TaskStatus[status],
                    start_time=start + timedelta(seconds=n),
                )
            )
        session.commit()
    engine.dispose()
    return {"parent": parent, "child": child}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")
def test_pyspur_0_1_5s_database_is_refused_until_pyspurs_migrations_add_paused(
    postgres_url: str,
) -> None:
    """PySpur 0.1.5's migrations stop at 006: `taskstatus` without PAUSED.
    GetRunTasks past a first page and WatchRun compare tasks.status with
    PAUSED, which PostgreSQL refused there: both failed INTERNAL (HTTP 500),
    after start-up had said nothing. Start-up now refuses it in one line
    that names the fix; `migrate` still adds our indexes. PySpur's own
    revisions (what upgrading PySpur runs) bring it to 007 (PySpur 0.1.6),
    009 (0.1.8 to 0.1.13) and 010, and at each every RPC answers."""
    from spur_runs.config import ConfigError
    from spur_runs.store.engine import shown_url
    from spur_runs.store.migrate import migrate
    from spur_runs.store.schema_check import require_tables

    pyspur_0_1_5_schema(postgres_url)
    ids = write_what_pyspur_0_1_5_can(postgres_url)
    migrate(postgres_url)
    with pytest.raises(ConfigError) as refused:
        require_tables(postgres_url)
    assert str(refused.value) == (
        f"{shown_url(postgres_url)} lacks the task status(es) PAUSED in its enum type "
        "taskstatus: PySpur schema revision 006 is older than 010, PySpur 0.1.18's: upgrade "
        "PySpur, whose migrations add them, then start again"
    )
    for revision in ("007", "009", "010"):
        pyspur_migrations(postgres_url, revision)
        require_tables(postgres_url)
        server = start_server(postgres_url)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = RunServiceStub(channel)
                first = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=ids["parent"], page_size=2))
                rest = stub.GetRunTasks(
                    pb.GetRunTasksRequest(
                        run_id=ids["parent"], page_size=2, page_token=first.next_page_token
                    )
                )
                assert [t.node_id for t in rest.tasks] == ["router", "approval"]
                [watched] = stub.WatchRun(pb.WatchRunRequest(run_id=ids["parent"]), timeout=10)
                assert watched.run.percentage_complete == pytest.approx(40.0)
                for statuses, expected in [
                    ([run_pb2.Run.PAUSED], []),
                    ([run_pb2.Run.COMPLETED], [ids["child"], ids["parent"]]),
                ]:
                    request = pb.ListRunsRequest(
                        status=statuses, parent_only=False, include_total_size=True
                    )
                    assert [r.id for r in stub.ListRuns(request).runs] == expected
                children = stub.GetChildRuns(pb.GetChildRunsRequest(run_id=ids["parent"])).runs
                assert [r.id for r in children] == [ids["child"]]
        finally:
            server.stop(grace=1)
    server = start_server(postgres_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            RunServiceStub(channel).DeleteRun(pb.DeleteRunRequest(run_id=ids["parent"]))
    finally:
        server.stop(grace=1)
    engine = create_engine(normalize_url(postgres_url))
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM runs")) == 0
    engine.dispose()
