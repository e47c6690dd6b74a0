"""Rows that PySpur does not write but its database may hold (written by
another tool, or by hand): each is served as PySpur serves it, or refused
with a code that says what is wrong, never an endless listing, a retry
forever (UNAVAILABLE) or an INTERNAL error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import Connection, text

from calls import call_error
from factories import add_run, add_workflow, all_done
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.models import RunStatus, TaskStatus

BASIC = run_pb2.RUN_VIEW_BASIC


def _insert_run(conn: Connection, version: tuple[str, str], start_time: str, **more: object) -> str:
    """A run whose start_time is `start_time` as text, as stored."""
    columns = {"status": "COMPLETED", "workflow_id": version[0], "workflow_version_id": version[1]}
    columns.update(more)  # type: ignore[arg-type]
    names = ", ".join(["run_type", "start_time", *columns])
    values = ", ".join([":run_type", ":start_time", *(f":{k}" for k in columns)])
    conn.execute(
        text(f"INSERT INTO runs ({names}) VALUES ({values})"),
        {"run_type": "batch", "start_time": start_time, **columns},
    )
    found = conn.execute(text("SELECT id FROM runs ORDER BY _intid DESC LIMIT 1"))
    return str(found.scalar_one())


def _refused(call: object, request: object) -> tuple[grpc.StatusCode, str]:
    error = call_error(call, request)
    return error.code(), error.details()


def _walk(page: Callable[[str], tuple[list[str], str]], bound: int = 50) -> list[str]:
    """Every id of a listing, page by page through its tokens; fails rather
    than loop when the listing does not end."""
    seen: list[str] = []
    token = ""
    for _ in range(bound):
        ids, token = page(token)
        seen += ids
        if not token:
            return seen
    raise AssertionError(f"the listing did not end after {bound} pages: {seen}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pages_walk_start_times_stored_in_other_formats(db: Database, stub: RunServiceStub) -> None:
    # SQLite keeps DATETIME as text, and orders it as text: times written
    # without microseconds, with a "T", an offset or as a date only.
    stored = [
        "2026-03-01 00:00:00",
        "2026-03-01 00:00:00",
        "2026-02-15T08:00:00",
        "2026-02-15 12:00:00.000000",
        "2026-02-10T00:00:00+00:00",
        "2026-02-01",
        "2026-01-01 00:00:00.000000",
    ]
    with db.write() as s:
        version = add_workflow(s)
        parent = add_run(s, version, start_time=datetime(2025, 1, 1))
        for start in stored:
            _insert_run(s, version, start)
            _insert_run(s, version, start, parent_run_id=parent)

    def runs_page(token: str) -> tuple[list[str], str]:
        answer = stub.ListRuns(pb.ListRunsRequest(page_size=1, page_token=token, view=BASIC))
        return [r.id for r in answer.runs], answer.next_page_token

    def children_page(token: str) -> tuple[list[str], str]:
        answer = stub.GetChildRuns(
            pb.GetChildRunsRequest(run_id=parent, page_size=2, page_token=token, view=BASIC)
        )
        return [r.id for r in answer.runs], answer.next_page_token

    # Top-level runs (ListRuns' default, as PySpur's) and the children.
    runs = [r.id for r in stub.ListRuns(pb.ListRunsRequest(page_size=100, view=BASIC)).runs]
    children = stub.GetChildRuns(pb.GetChildRunsRequest(run_id=parent, view=BASIC)).runs
    assert len(runs) == len(stored) + 1 and len(children) == len(stored)
    assert _walk(runs_page) == runs
    assert _walk(children_page) == [r.id for r in children]


def test_pages_walk_runs_with_ids_of_zero_and_below(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        version = add_workflow(s)
        newest = add_run(s, version, start_time=datetime(2026, 3, 1))
        for intid, day in ((0, 2), (-5, 1)):
            s.execute(
                text(
                    "INSERT INTO runs (_intid, workflow_id, workflow_version_id, status,"
                    " run_type, start_time) VALUES (:i, :w, :v, 'COMPLETED', 'batch', :t)"
                ),
                {"i": intid, "w": version[0], "v": version[1], "t": datetime(2026, 2, day)},
            )

    def page(token: str) -> tuple[list[str], str]:
        answer = stub.ListRuns(pb.ListRunsRequest(page_size=1, page_token=token, view=BASIC))
        return [r.id for r in answer.runs], answer.next_page_token

    assert _walk(page) == [newest, "R0", "R-5"]
    # What is listed can be read: R0 and R-5 are ids, not malformed ones.
    assert stub.GetRun(pb.GetRunRequest(run_id="R-5", view=BASIC)).run.id == "R-5"
    for malformed in ("R-0", "R01", "R--5", "R-"):
        assert _refused(stub.GetRun, pb.GetRunRequest(run_id=malformed))[0] is (
            grpc.StatusCode.INVALID_ARGUMENT
        )


@pytest.mark.parametrize(
    ("definition", "kind"),
    [([], "an array"), ("x", "a string"), (5, "a number"), ({"nodes": 5, "links": True}, None)],
)
def test_definitions_that_are_no_object(
    db: Database, stub: RunServiceStub, definition: object, kind: str | None
) -> None:
    with db.write() as s:
        version = add_workflow(s)
        run = add_run(s, version, tasks=all_done()[:2])
        s.execute(
            text("UPDATE workflow_versions SET definition = :d WHERE id = :v"),
            {"d": json.dumps(definition), "v": version[1]},
        )
    # What does not show the definition is served: the tasks (no node
    # types: the graph has no nodes), a BASIC run and page.
    tasks = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run)).tasks
    assert [t.node_id for t in tasks] == ["input_node", "llm"]
    assert {t.node_type for t in tasks} == {""}
    basic = stub.GetRun(pb.GetRunRequest(run_id=run, view=BASIC)).run
    assert basic.workflow_version.id == version[1]
    assert [r.id for r in stub.ListRuns(pb.ListRunsRequest(view=BASIC)).runs] == [run]
    if kind is None:  # an object, with odd nodes and links: all of it served
        full = stub.GetRun(pb.GetRunRequest(run_id=run)).run
        assert full.workflow_version.definition["nodes"] == 5
        return
    # The definition itself cannot be a Struct: DATA_LOSS says why, and
    # how to read the run without it.
    for call, request in (
        (stub.GetRun, pb.GetRunRequest(run_id=run)),
        (stub.ListRuns, pb.ListRunsRequest()),
    ):
        code, message = _refused(call, request)
        assert code is grpc.StatusCode.DATA_LOSS
        assert message == (
            f"run {run}: its workflow version {version[1]} has a definition that is {kind},"
            " not a JSON object; RUN_VIEW_BASIC leaves it out"
        )


def test_initial_inputs_that_are_no_object(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        run = add_run(s, add_workflow(s), initial_inputs=[1, 2])
    code, message = _refused(stub.GetRun, pb.GetRunRequest(run_id=run))
    assert code is grpc.StatusCode.DATA_LOSS
    assert message == f"run {run}: initial_inputs holds an array, not a JSON object"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_start_time_with_an_offset_and_no_end(db: Database, stub: RunServiceStub) -> None:
    started = datetime.now(UTC).replace(microsecond=0, tzinfo=None) - timedelta(hours=1)
    with db.write() as s:
        version = add_workflow(s)
        run = _insert_run(s, version, started.isoformat() + "+00:00", status="RUNNING")
        ended = _insert_run(s, version, "2026-02-01T10:00:00+02:00")
        s.execute(
            text("UPDATE runs SET end_time = '2026-02-01 08:30:00.000000' WHERE id = :r"),
            {"r": ended},
        )
    answer = stub.GetRun(pb.GetRunRequest(run_id=run, view=BASIC)).run
    assert answer.start_time.ToDatetime() == started
    assert 3600 <= answer.duration < 3600 + 600  # an hour, and the test's own time
    # A naive end is UTC (storage.md), the offset's start 08:00 UTC.
    assert stub.GetRun(pb.GetRunRequest(run_id=ended, view=BASIC)).run.duration == 1800


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_text_that_is_not_utf8(db: Database, stub: RunServiceStub) -> None:
    with db.write() as s:
        run = add_run(s, add_workflow(s), tasks=[("input_node", TaskStatus.FAILED)])
        s.execute(text("UPDATE tasks SET error = CAST(X'6162FF63' AS TEXT)"))
    # A permanent fault of the data, not an unreachable database (which
    # clients retry): the same on each read that holds it.
    for call, request in (
        (stub.GetRunTasks, pb.GetRunTasksRequest(run_id=run)),
        (stub.GetRun, pb.GetRunRequest(run_id=run)),
        (stub.ListRuns, pb.ListRunsRequest()),
    ):
        code, message = _refused(call, request)
        assert code is grpc.StatusCode.DATA_LOSS
        assert message.startswith("the database holds text that is not valid UTF-8")
    assert stub.GetRun(pb.GetRunRequest(run_id=run, view=BASIC)).run.id == run


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bytes_stored_in_text_columns_are_served_as_text(
    db: Database, stub: RunServiceStub
) -> None:
    """sqlite3 stores bytes given for any column as a BLOB: PySpur's own ORM
    did for a task's `error` (TaskModel(error=b"...")), and PySpur serves it
    as text. SQLite's JSON functions refused it: INTERNAL on every read of
    the run, and of every list page holding it (a review, 2026-12-04)."""
    with db.write() as s:
        version = add_workflow(s)
        run = add_run(s, version, tasks=[("llm", TaskStatus.FAILED)])
        child = add_run(s, version, parent_run_id=run)
        s.execute(
            text("UPDATE tasks SET error = :v WHERE run_id = :r"), {"v": b"rate limited", "r": run}
        )
        s.execute(text("UPDATE runs SET run_type = :v, input_dataset_id = :d WHERE id = :r"),
                  {"v": b"batch", "d": b"DS1", "r": run})  # fmt: skip
        s.execute(text("UPDATE runs SET run_type = :v WHERE id = :r"), {"v": b"\xff", "r": child})
    got = stub.GetRun(pb.GetRunRequest(run_id=run)).run
    assert (got.run_type, got.input_dataset_id) == ("batch", "DS1")
    assert [t.error for t in got.tasks] == ["rate limited"]
    assert [t.error for t in stub.GetRunTasks(pb.GetRunTasksRequest(run_id=run)).tasks] == [
        "rate limited"
    ]
    listed = stub.ListRuns(pb.ListRunsRequest(parent_only=True)).runs
    assert [(r.id, r.run_type, [t.error for t in r.tasks]) for r in listed] == [
        (run, "batch", ["rate limited"])
    ]
    # Bytes that are no UTF-8 are what text that is not UTF-8 is: DATA_LOSS.
    for call, request in (
        (stub.GetRun, pb.GetRunRequest(run_id=child)),
        (stub.GetChildRuns, pb.GetChildRunsRequest(run_id=run)),
    ):
        code, message = _refused(call, request)
        assert code is grpc.StatusCode.DATA_LOSS, message


def test_percentage_complete_is_pyspurs_to_the_bit(db: Database, stub: RunServiceStub) -> None:
    tasks = [("a", TaskStatus.COMPLETED), ("b", TaskStatus.RUNNING), ("c", TaskStatus.PENDING)]
    with db.write() as s:
        run = add_run(s, add_workflow(s), status=RunStatus.RUNNING, tasks=tasks)
    answer = stub.GetRun(pb.GetRunRequest(run_id=run)).run
    # RunResponseSchema: completed / len(tasks) * 100 (100 * 1 / 3 differs
    # in its last bit: 33.333333333333336).
    assert answer.percentage_complete == 1 / 3 * 100 == 33.33333333333333


def test_numbers_too_large_for_a_double(db: Database, stub: RunServiceStub) -> None:
    """PySpur's json.dumps writes any int; one beyond a double's range has no
    google.protobuf.Value: DATA_LOSS naming where it is, not INTERNAL."""
    huge = json.dumps({"o": {"v": [1, 10**400]}})
    with db.write() as s:
        version = add_workflow(s)
        in_run = add_run(s, version)
        in_task = add_run(s, version, tasks=all_done()[:2])
        in_definition = add_run(s, add_workflow(s, "other"))
        s.execute(text("UPDATE runs SET outputs = :o WHERE id = :r"), {"o": huge, "r": in_run})
        task = s.execute(
            text("SELECT id FROM tasks WHERE run_id = :r ORDER BY _intid DESC LIMIT 1"),
            {"r": in_task},
        ).scalar_one()
        s.execute(text("UPDATE tasks SET inputs = :o WHERE id = :t"), {"o": huge, "t": task})
        s.execute(
            text(
                "UPDATE workflow_versions SET definition = :d WHERE id = "
                "(SELECT workflow_version_id FROM runs WHERE id = :r)"
            ),
            {"d": json.dumps({"nodes": [], "links": [], "n": -(10**400)}), "r": in_definition},
        )
    expected = {
        in_run: f"run {in_run}: outputs holds a number too large for a double",
        in_task: f"task {task}: a JSON column holds a number too large for a double",
        in_definition: "a JSON object with a number too large for a double",
    }
    for run, message in expected.items():
        code, said = _refused(stub.GetRun, pb.GetRunRequest(run_id=run))
        assert code is grpc.StatusCode.DATA_LOSS and message in said, said
    code, said = _refused(stub.GetRunTasks, pb.GetRunTasksRequest(run_id=in_task))
    assert code is grpc.StatusCode.DATA_LOSS and expected[in_task] == said
    # What does not hold the number is served.
    assert stub.GetRun(pb.GetRunRequest(run_id=in_task, view=BASIC)).run.id == in_task
    assert stub.GetRun(pb.GetRunRequest(run_id=in_definition, view=BASIC)).run.id == in_definition
    tasks = stub.GetRunTasks(pb.GetRunTasksRequest(run_id=in_definition)).tasks
    assert len(tasks) == 0


# (table, column, stored value, what the message says of it): values no
# reader of ours reads, which another tool may have written (SQLite keeps
# any type in any column; PostgreSQL's types refuse them at the write).
UNREADABLE = [
    ("runs", "initial_inputs", "{not json", "initial_inputs holds a value this service cannot"),
    ("runs", "status", "completed", "'completed' is not among the names of RunStatus"),
    ("runs", "start_time", "not a date", "Invalid isoformat string: 'not a date'"),
    ("runs", "end_time", "yesterday", "end_time holds a value this service cannot read"),
    ("runs", "start_time", 1718409600, "start_time holds a value this service cannot read (Inv"),
    ("runs", "outputs", '{"a": "\\ud800"}', "outputs holds a string with a lone surrogate"),
    ("tasks", "inputs", "{not json", "inputs holds a value this service cannot read"),
    ("tasks", "status", "DONE", "'DONE' is not among the names of TaskStatus"),
    ("tasks", "outputs", '["\\udfff"]', "a JSON column holds a string with a lone surrogate"),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("table", "column", "stored", "said"), UNREADABLE)
def test_values_no_reader_reads_are_data_loss_naming_them(
    db: Database, stub: RunServiceStub, table: str, column: str, stored: object, said: str
) -> None:
    """A review (2026-12-03) found each of these INTERNAL, with a traceback
    logged on every read: DATA_LOSS names the run or task and the column."""
    with db.write() as s:
        run = add_run(s, add_workflow(s), tasks=all_done()[:1])
        key = "run_id" if table == "tasks" else "id"
        s.execute(
            text(f"UPDATE {table} SET {column} = :v WHERE {key} = :r"), {"v": stored, "r": run}
        )
        task = s.execute(text("SELECT id FROM tasks WHERE run_id = :r"), {"r": run}).scalar_one()
    owner = f"run {run}: " if table == "runs" else f"task {task}: "
    reads = [(stub.GetRun, pb.GetRunRequest(run_id=run)), (stub.ListRuns, pb.ListRunsRequest())]
    if table == "tasks":
        reads.append((stub.GetRunTasks, pb.GetRunTasksRequest(run_id=run)))
    for call, request in reads:
        code, message = _refused(call, request)
        assert code is grpc.StatusCode.DATA_LOSS, message
        assert message.startswith(owner) and said in message, message
