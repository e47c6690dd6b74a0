"""RunService through a real server on a loopback port and the generated
stubs, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from calls import bad_request_field, call_error, count_statements
from factories import NODES, add_run, add_workflow, all_done, definition
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.runtime.server import RunsServer
from spur_runs.store.db import Database
from spur_runs.store.models import Run, RunStatus, Task, TaskStatus

T0 = datetime(2026, 11, 2, 9, 0, 0)


# --- GetRun -------------------------------------------------------------------


def test_get_run_has_every_field_of_the_seed(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        run_id = add_run(
            s,
            wf,
            status=RunStatus.COMPLETED,
            start_time=T0,
            end_time=T0 + timedelta(seconds=90.5),
            tasks=all_done(),
            initial_inputs={"input_node": {"question": "why?", "n": 3}},
            outputs={"output": {"answer": "because", "scores": [1, 2.5, None, True]}},
        )
    run = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert run.id == run_id and run.id.startswith("R")
    assert run.workflow_id == wf[0] and run.workflow_version_id == wf[1]
    assert run.status == run_pb2.Run.COMPLETED
    assert run.start_time.ToDatetime() == T0
    assert run.end_time.ToDatetime() == T0 + timedelta(seconds=90.5)
    assert run.duration == pytest.approx(90.5)
    assert json_format.MessageToDict(run.initial_inputs) == {
        "input_node": {"question": "why?", "n": 3}
    }
    assert json_format.MessageToDict(run.outputs) == {
        "output": {"answer": "because", "scores": [1, 2.5, None, True]}
    }
    assert run.run_type == "interactive"
    assert not run.HasField("parent_run_id")
    assert not run.HasField("output_file_id") and not run.HasField("input_dataset_id")
    assert not run.HasField("message")
    assert run.percentage_complete == 100.0 and run.task_count == 6
    version = run.workflow_version
    assert version.id == wf[1] and version.workflow_id == wf[0] and version.version == 1
    assert version.name == "demo" and version.description == "demo v1"
    assert len(version.definition_hash) == 64
    assert json_format.MessageToDict(version.definition) == definition()
    assert version.created_at.ToDatetime() == datetime(2026, 11, 1, 12)
    assert [t.node_id for t in run.tasks] == [n for n, _ in NODES]
    assert [t.node_type for t in run.tasks] == [t for _, t in NODES]
    first = run.tasks[0]
    assert first.run_id == run_id and first.id.startswith("T")
    assert first.status == run_pb2.Task.COMPLETED
    assert json_format.MessageToDict(first.inputs) == {"n": 0}
    assert json_format.MessageToDict(first.outputs) == {"node": "input_node"}
    assert first.start_time.ToDatetime() == T0
    assert not first.HasField("end_time") and not first.HasField("error")
    assert not any(t.is_downstream_of_pause for t in run.tasks)


def test_paused_run_marks_tasks_downstream_of_the_pause(db: Database, stub: RunServiceStub) -> None:
    spec = definition(
        nodes=[*NODES, ("side", "PythonFuncNode")],
        links=[
            ("input_node", "llm"),
            ("llm", "router"),
            ("router", "approval"),
            ("router", "side"),
            ("approval", "summarize"),
            ("summarize", "output"),
        ],
    )
    statuses = {
        "input_node": TaskStatus.COMPLETED,
        "llm": TaskStatus.COMPLETED,
        "router": TaskStatus.COMPLETED,
        "approval": TaskStatus.PAUSED,
        "summarize": TaskStatus.PENDING,
        "output": TaskStatus.PENDING,
        "side": TaskStatus.COMPLETED,
    }
    with db.write() as s:
        wf = add_workflow(s, "paused", spec)
        run_id = add_run(s, wf, status=RunStatus.PAUSED, tasks=list(statuses.items()))
    run = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    downstream = {t.node_id for t in run.tasks if t.is_downstream_of_pause}
    assert downstream == {"summarize", "output"}
    assert run.status == run_pb2.Run.PAUSED
    assert run.percentage_complete == pytest.approx(4 / 7 * 100)
    # A run that has not ended lasts until now.
    assert run.duration > (datetime.now() - T0).total_seconds() - 3600
    assert not run.HasField("end_time")
    tasks = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id)).tasks
    assert {t.node_id for t in tasks if t.is_downstream_of_pause} == downstream


def test_run_without_tasks_or_start_time(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), status=RunStatus.PENDING, start_time=None)
    run = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert run.percentage_complete == 0 and run.task_count == 0 and not run.tasks
    assert not run.HasField("start_time") and not run.HasField("duration")
    assert not run.HasField("initial_inputs") and not run.HasField("outputs")


def test_task_whose_node_is_not_in_the_definition_has_empty_node_type(
    db: Database, stub: RunServiceStub
) -> None:
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=[("ghost", TaskStatus.FAILED)])
    (task,) = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run.tasks
    assert task.node_type == "" and task.error == "boom"
    assert task.status == run_pb2.Task.FAILED


@pytest.mark.slow
@pytest.mark.parametrize(
    "run_id", ["", "X1", "R", "R-0", "R01", "R--1", "r1", "R1 ", "R" + "9" * 30]
)
def test_get_run_rejects_malformed_ids(stub: RunServiceStub, run_id: str) -> None:
    error = call_error(stub.GetRun, pb.GetRunRequest(run_id=run_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(error) == "run_id"


@pytest.mark.slow
def test_get_run_of_missing_run_is_not_found(stub: RunServiceStub) -> None:
    error = call_error(stub.GetRun, pb.GetRunRequest(run_id="R123456"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "R123456" in (error.details() or "")


def test_get_run_reads_json_that_only_pythons_json_module_accepts(
    db: Database, stub: RunServiceStub
) -> None:
    """Python's json.dumps writes NaN and Infinity, so a PySpur database on
    SQLite may hold them; orjson (the fast path of engine.load_json) refuses
    them. PostgreSQL's json type refuses them on insert already."""
    document = (
        '{"score": NaN, "big": Infinity, "small": -Infinity, "huge": 1e400,'
        ' "n": 12345678901234567890123}'
    )
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=[("llm", TaskStatus.COMPLETED)])
    store = text("UPDATE tasks SET outputs = :doc WHERE run_id = :run_id")
    if db.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="json"), db.write() as s:
            s.execute(store, {"doc": document, "run_id": run_id})
        return
    with db.write() as s:
        s.execute(store, {"doc": document, "run_id": run_id})
    got = stub.GetRun(pb.GetRunRequest(run_id=run_id))
    fields = got.run.tasks[0].outputs.struct_value.fields
    # null, as the HTTP face and PySpur's own answers have them: a Value
    # holding NaN or an infinity has no proto3 JSON form, and every client
    # that writes the message as JSON (Go's protojson, Python's json_format,
    # protobuf-es' toJson) failed on the whole answer.
    assert fields["score"].WhichOneof("kind") == "null_value"
    for name in ("big", "small", "huge"):
        assert fields[name].WhichOneof("kind") == "null_value", name
    assert fields["n"].number_value == float(12345678901234567890123)
    json_format.MessageToJson(got)  # raised "Fail to serialize Infinity"


@pytest.mark.slow
def test_get_run_statement_count_does_not_grow_with_tasks(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        small = add_run(s, wf, tasks=[("llm", TaskStatus.COMPLETED)] * 10)
        large = add_run(s, wf, tasks=[("llm", TaskStatus.COMPLETED)] * 1000)
    stub.GetRun(pb.GetRunRequest(run_id=small))  # warms the version cache
    counts = {}
    for run_id in (small, large):
        with count_statements(server) as statements:
            run = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
        counts[run_id] = len(statements)
    assert len(run.tasks) == 1000
    # One statement reads the run and its tasks (db.Database.read_one).
    assert counts[small] == counts[large] == 1, counts


@pytest.mark.slow
def test_get_run_embeds_at_most_1000_tasks_but_counts_all(
    db: Database, stub: RunServiceStub
) -> None:
    tasks = [("llm", TaskStatus.COMPLETED)] * 1000 + [
        ("approval", TaskStatus.PAUSED),
        ("summarize", TaskStatus.PENDING),
    ]
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), status=RunStatus.PAUSED, tasks=tasks)
    run = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    assert len(run.tasks) == 1000 and run.task_count == 1002
    assert run.percentage_complete == pytest.approx(1000 / 1002 * 100)
    # The pause lies beyond the embedded tasks and still counts.
    page = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id, page_size=10, page_token=""))
    token = page.next_page_token
    rest = []
    while token:
        page = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id, page_token=token))
        rest.extend(page.tasks)
        token = page.next_page_token
    assert [t.node_id for t in rest[-2:]] == ["approval", "summarize"]
    assert rest[-1].is_downstream_of_pause and not rest[-2].is_downstream_of_pause


# --- GetRunStatus -------------------------------------------------------------


@pytest.mark.slow
def test_get_run_status_reads_the_tasks_beyond_the_embedded_ones(
    db: Database, stub: RunServiceStub
) -> None:
    """PySpur's poll rule (a FAILED task, none PENDING or RUNNING: FAILED)
    holds over every task of a run, not only the 1,000 its message embeds
    (test_seed_bodies checks the rule itself against PySpur's router)."""
    done = [("llm", TaskStatus.COMPLETED)] * 1000
    with db.write() as s:
        wf = add_workflow(s)
        failed_last = add_run(
            s, wf, status=RunStatus.RUNNING, tasks=[*done, ("summarize", TaskStatus.FAILED)]
        )
        pending_last = add_run(
            s,
            wf,
            status=RunStatus.RUNNING,
            tasks=[("llm", TaskStatus.FAILED), *done, ("summarize", TaskStatus.PENDING)],
        )
    answer = stub.GetRunStatus(pb.GetRunStatusRequest(run_id=failed_last)).run
    assert answer.status == run_pb2.Run.FAILED
    assert len(answer.tasks) == 1000 and answer.task_count == 1001
    assert stub.GetRun(pb.GetRunRequest(run_id=failed_last)).run.status == run_pb2.Run.RUNNING
    answer = stub.GetRunStatus(pb.GetRunStatusRequest(run_id=pending_last)).run
    assert answer.status == run_pb2.Run.RUNNING
    # Nothing was written.
    with db.read() as s:
        assert s.scalar(select(Run.status).where(Run.id == failed_last)) is RunStatus.RUNNING


# --- ListRuns -----------------------------------------------------------------


def _seed_runs(db: Database, starts: list[datetime | None]) -> list[str]:
    with db.write() as s:
        wf = add_workflow(s)
        return [add_run(s, wf, start_time=t, tasks=all_done()[:2]) for t in starts]


def expected_order(db: Database) -> list[str]:
    """Newest start_time first, ties by the newer row, no start_time last."""
    with db.read() as s:
        rows = s.execute(select(Run.id, Run.start_time, Run._intid)).all()
    timed = sorted((r for r in rows if r.start_time), key=lambda r: (r.start_time, r._intid))
    untimed = sorted((r for r in rows if not r.start_time), key=lambda r: r._intid)
    return [r.id for r in reversed(timed)] + [r.id for r in reversed(untimed)]


def test_list_runs_orders_newest_first_ties_by_row_and_null_last(
    db: Database, stub: RunServiceStub
) -> None:
    starts: list[datetime | None] = [
        T0,
        None,
        T0 + timedelta(hours=1),
        T0,
        None,
        T0 - timedelta(days=1),
    ]
    ids = _seed_runs(db, starts)
    listed = [r.id for r in stub.ListRuns(pb.ListRunsRequest(page_size=100)).runs]
    assert listed == [ids[2], ids[3], ids[0], ids[5], ids[4], ids[1]]
    assert listed == expected_order(db)


def test_list_runs_pages_by_number_as_the_seed_does(db: Database, stub: RunServiceStub) -> None:
    starts = [T0 + timedelta(minutes=i) for i in range(23)] + [None, None]
    _seed_runs(db, starts)
    order = expected_order(db)
    first = stub.ListRuns(pb.ListRunsRequest())
    assert [r.id for r in first.runs] == order[:10]  # defaults: page 1, 10 a page
    pages = [
        [r.id for r in stub.ListRuns(pb.ListRunsRequest(page=p, page_size=5)).runs]
        for p in range(1, 7)
    ]
    assert sum(pages, []) == order
    assert pages[-1] == []
    assert len(first.runs[0].tasks) == 2


def test_page_token_walks_every_run_once_while_runs_are_inserted(
    db: Database, stub: RunServiceStub
) -> None:
    starts = [T0 + timedelta(minutes=i % 7) for i in range(30)] + [None] * 5
    _seed_runs(db, starts)
    before = expected_order(db)
    seen: list[str] = []
    token = ""
    with db.write() as s:
        wf = add_workflow(s, "late")
    while True:
        page = stub.ListRuns(pb.ListRunsRequest(page_size=4, page_token=token))
        seen.extend(r.id for r in page.runs)
        # New runs arrive during the walk: newer ones (before the cursor) and
        # ones without a start time (after it).
        with db.write() as s:
            add_run(s, wf, start_time=datetime(2030, 1, 1))
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert len(seen) == len(set(seen)), "a run was listed twice"
    assert [r for r in seen if r in before] == before


def test_list_runs_rejects_bad_paging(stub: RunServiceStub) -> None:
    for request, field in [
        (pb.ListRunsRequest(page_size=101), "page_size"),
        (pb.ListRunsRequest(page_size=-1), "page_size"),
        (pb.ListRunsRequest(page=-3), "page"),
        (pb.ListRunsRequest(page_token="not a token"), "page_token"),
        (pb.ListRunsRequest(page_token="A" * 2000), "page_token"),
    ]:
        error = call_error(stub.ListRuns, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert bad_request_field(error) == field


def test_tampered_or_foreign_page_tokens_are_rejected(db: Database, stub: RunServiceStub) -> None:
    ids = _seed_runs(db, [T0 + timedelta(minutes=i) for i in range(5)])
    with db.write() as s:
        parent = ids[0]
        wf = add_workflow(s, "kids")
        for i in range(3):
            add_run(s, wf, parent_run_id=parent, start_time=T0 + timedelta(seconds=i))
    token = stub.ListRuns(pb.ListRunsRequest(page_size=2)).next_page_token
    assert token
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (tampered, token[:-3]):
        error = call_error(stub.ListRuns, pb.ListRunsRequest(page_token=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A ListRuns token is not a token of another listing.
    error = call_error(stub.GetChildRuns, pb.GetChildRunsRequest(run_id=parent, page_token=token))
    assert bad_request_field(error) == "page_token"
    child_token = stub.GetChildRuns(
        pb.GetChildRunsRequest(run_id=parent, page_size=1)
    ).next_page_token
    error = call_error(
        stub.GetChildRuns, pb.GetChildRunsRequest(run_id=ids[1], page_token=child_token)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = call_error(stub.ListRuns, pb.ListRunsRequest(page=2, page_token=token))
    assert bad_request_field(error) == "page"


@pytest.mark.slow
def test_list_runs_reads_tasks_in_one_batched_statement(
    db: Database, server: RunsServer, stub: RunServiceStub
) -> None:
    # More runs than the page: a page that reaches the last run with a
    # start_time also reads the runs without one (a third statement).
    _seed_runs(db, [T0 + timedelta(minutes=i) for i in range(40)])
    stub.ListRuns(pb.ListRunsRequest(page_size=1))  # warms the version cache
    counts = []
    for size in (3, 30):
        with count_statements(server) as statements:
            runs = stub.ListRuns(pb.ListRunsRequest(page_size=size)).runs
        assert len(runs) == size and all(len(r.tasks) == 2 for r in runs)
        counts.append(len(statements))
    # The page with its tasks in one statement (statements.page_with_tasks).
    assert counts == [1, 1]


def test_list_pages_count_tasks_beyond_the_embedded_ones_and_cross_into_untimed_runs(
    db: Database, stub: RunServiceStub
) -> None:
    """The pages PostgreSQL cannot read in one statement (a run beyond
    TASKS_PER_LISTED_RUN tasks, a page reaching the runs without a
    start_time) are read again in a transaction: the same runs as GetRun's."""
    many = [("llm", TaskStatus.COMPLETED)] * 101 + [("approval", TaskStatus.PAUSED)]
    with db.write() as s:
        wf = add_workflow(s)
        big = add_run(s, wf, start_time=T0, status=RunStatus.PAUSED, tasks=many)
        timed = [
            add_run(s, wf, start_time=T0 + timedelta(minutes=i), tasks=all_done()[:2])
            for i in (1, 2)
        ]
        untimed = add_run(s, wf, start_time=None, tasks=all_done()[:1])
    listed = stub.ListRuns(pb.ListRunsRequest(page_size=10)).runs
    assert [r.id for r in listed] == [*reversed(timed), big, untimed]
    by_id = {r.id: r for r in listed}
    assert len(by_id[big].tasks) == 100 and by_id[big].task_count == 102
    for run_id in (big, untimed, *timed):
        alone = stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
        assert by_id[run_id].task_count == alone.task_count
        assert by_id[run_id].percentage_complete == alone.percentage_complete
        assert [t.is_downstream_of_pause for t in by_id[run_id].tasks] == [
            t.is_downstream_of_pause for t in alone.tasks[: len(by_id[run_id].tasks)]
        ]
        assert by_id[run_id].duration > 0 or run_id == untimed
    # A page of timed runs only, then its next page, which holds the rest.
    first = stub.ListRuns(pb.ListRunsRequest(page_size=2))
    rest = stub.ListRuns(pb.ListRunsRequest(page_size=2, page_token=first.next_page_token))
    assert [r.id for r in [*first.runs, *rest.runs]] == [r.id for r in listed]
    assert not rest.next_page_token


# --- GetRunTasks / GetChildRuns -------------------------------------------------


def test_get_run_tasks_pages_oldest_first(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        run_id = add_run(s, add_workflow(s), tasks=all_done() * 5)
    everything = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id))
    assert len(everything.tasks) == 30 and not everything.next_page_token
    walked, token = [], ""
    while True:
        page = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run_id, page_size=7, page_token=token))
        walked.extend(t.id for t in page.tasks)
        token = page.next_page_token
        if not token:
            break
    assert walked == [t.id for t in everything.tasks]
    assert walked == sorted(walked, key=lambda i: int(i[1:]))
    for request, code in [
        (pb.GetRunTasksRequest(run_id="R99999"), grpc.StatusCode.NOT_FOUND),
        (pb.GetRunTasksRequest(run_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetRunTasksRequest(run_id=run_id, page_size=1001), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        assert call_error(stub.GetRunTasks, request).code() == code


def test_get_child_runs_returns_direct_children_newest_first(
    db: Database, stub: RunServiceStub
) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        parent = add_run(s, wf, run_type="batch")
        kids = [
            add_run(s, wf, parent_run_id=parent, start_time=T0 + timedelta(minutes=i))
            for i in range(5)
        ]
        add_run(s, wf, parent_run_id=kids[0])  # a grandchild
        lonely = add_run(s, wf)
    response = stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent))
    assert [r.id for r in response.runs] == kids[::-1]
    assert all(r.parent_run_id == parent for r in response.runs)
    page = stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent, page_size=3))
    rest = stub.GetChildRuns(
        pb.GetChildRunsRequest(run_id=parent, page_size=3, page_token=page.next_page_token)
    )
    assert [r.id for r in [*page.runs, *rest.runs]] == kids[::-1]
    assert not rest.next_page_token
    assert not stub.GetChildRuns(pb.GetChildRunsRequest(run_id=lonely)).runs
    error = call_error(stub.GetChildRuns, pb.GetChildRunsRequest(run_id="R4242"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- DeleteRun -------------------------------------------------------------------


def _count(db: Database, model: type[Run] | type[Task]) -> int:
    with db.read() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.mark.slow
def test_delete_run_removes_run_tasks_and_descendants(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        root = add_run(s, wf, tasks=all_done())
        child = add_run(s, wf, parent_run_id=root, tasks=all_done())
        add_run(s, wf, parent_run_id=child, tasks=all_done())
        keep = add_run(s, wf, tasks=all_done())
    assert stub.DeleteRun(pb.DeleteRunRequest(run_id=root)) == pb.DeleteRunResponse()
    assert _count(db, Run) == 1 and _count(db, Task) == 6
    assert stub.GetRun(pb.GetRunRequest(run_id=keep)).run.task_count == 6
    for run_id in (root, child):
        error = call_error(stub.GetRun, pb.GetRunRequest(run_id=run_id))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    error = call_error(stub.DeleteRun, pb.DeleteRunRequest(run_id=root))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_delete_refused_while_messages_reference_a_descendant(
    db: Database, stub: RunServiceStub
) -> None:
    with db.write() as s:
        wf = add_workflow(s)
        root = add_run(s, wf, tasks=all_done())
        child = add_run(s, wf, parent_run_id=root, tasks=all_done())
        # PySpur's chat messages point at runs (messages.run_id -> runs.id).
        s.execute(
            text(
                "CREATE TABLE messages (_intid INTEGER PRIMARY KEY, "
                "run_id VARCHAR REFERENCES runs(id), content VARCHAR)"
            )
        )
        s.execute(
            text("INSERT INTO messages (_intid, run_id, content) VALUES (1, :r, 'hi')"),
            {"r": child},
        )
    error = call_error(stub.DeleteRun, pb.DeleteRunRequest(run_id=root))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "messages" in (error.details() or "") and child in (error.details() or "")
    assert _count(db, Run) == 2 and _count(db, Task) == 12  # nothing deleted
    with db.write() as s:
        s.execute(text("DELETE FROM messages"))
    stub.DeleteRun(pb.DeleteRunRequest(run_id=root))
    assert _count(db, Run) == 0 and _count(db, Task) == 0


def test_delete_that_fails_midway_leaves_everything(db: Database, stub: RunServiceStub) -> None:
    """A reference the service does not know of (an unknown table's foreign
    key to a task) makes the database refuse the delete: all or nothing."""
    with db.write() as s:
        wf = add_workflow(s)
        root = add_run(s, wf, tasks=all_done())
        add_run(s, wf, parent_run_id=root, tasks=all_done())
        task_id = s.execute(select(Task.id).where(Task.run_id == root).limit(1)).scalar_one()
        s.execute(
            text(
                "CREATE TABLE evals"
                " (_intid INTEGER PRIMARY KEY, task_id VARCHAR REFERENCES tasks(id))"
            )
        )
        s.execute(text("INSERT INTO evals (_intid, task_id) VALUES (1, :t)"), {"t": task_id})
    error = call_error(stub.DeleteRun, pb.DeleteRunRequest(run_id=root))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _count(db, Run) == 2 and _count(db, Task) == 12


def test_delete_run_validates_its_id(stub: RunServiceStub) -> None:
    error = call_error(stub.DeleteRun, pb.DeleteRunRequest(run_id="S1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(error) == "run_id"
