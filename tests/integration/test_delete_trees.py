"""DeleteRun of large and deep trees, and of a run that PySpur writes to
meanwhile: the whole tree goes, or nothing does with a code that says what
to do (ABORTED: retry), never UNAVAILABLE for a database that is up."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from sqlalchemy import create_engine, text

from factories import add_run, add_workflow
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store import runs as store_runs
from spur_runs.store.db import Database
from spur_runs.store.models import TaskStatus

TASKS = [("input_node", TaskStatus.COMPLETED), ("llm", TaskStatus.COMPLETED)]


def _count(db: Database, sql: str) -> int:
    with db.read() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_a_deep_tree_in_small_chunks(
    db: Database, stub: RunServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 3 runs over a tree 4 levels deep, whose tasks point at their
    parent run's tasks: every chunk's runs go after all of their
    descendants, or a foreign key would refuse a statement."""
    monkeypatch.setattr(store_runs, "DELETE_CHUNK", 3)
    with db.write() as s:
        version = add_workflow(s)
        root = add_run(s, version, tasks=TASKS)
        level = [root]
        for _ in range(3):
            level = [
                add_run(s, version, parent_run_id=parent, tasks=TASKS)
                for parent in level
                for _ in range(2)
            ]
        # Each child's tasks point at a task of its parent run.
        s.execute(
            text(
                "UPDATE tasks SET parent_task_id = (SELECT p.id FROM tasks p JOIN runs r "
                "ON p.run_id = r.parent_run_id WHERE r.id = tasks.run_id ORDER BY p._intid "
                "LIMIT 1) WHERE run_id IN (SELECT id FROM runs WHERE parent_run_id IS NOT NULL)"
            )
        )
    other = _other_run(db)
    assert _count(db, "SELECT count(*) FROM runs") == 1 + 2 + 4 + 8 + 1
    stub.DeleteRun(pb.DeleteRunRequest(run_id=root))
    assert _count(db, "SELECT count(*) FROM runs") == 1
    assert _count(db, "SELECT count(*) FROM tasks") == len(TASKS)
    assert stub.GetRun(pb.GetRunRequest(run_id=other)).run.id == other


def _other_run(db: Database) -> str:
    with db.write() as s:
        return add_run(s, add_workflow(s, "other"), tasks=TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_batch_beyond_the_drivers_parameter_limit(db: Database, stub: RunServiceStub) -> None:
    """70,000 child runs: one IN list of them all passed PostgreSQL's 65,535
    parameters, and the delete answered UNAVAILABLE on every try."""
    with db.write() as s:
        version = add_workflow(s)
        root = add_run(s, version, tasks=TASKS)
        s.execute(
            text(
                "INSERT INTO runs (workflow_id, workflow_version_id, status, run_type, "
                "parent_run_id, start_time) SELECT :w, :v, 'COMPLETED', 'batch', :p, "
                "now() FROM generate_series(1, 70000)"
            ),
            {"w": version[0], "v": version[1], "p": root},
        )
    started = time.monotonic()
    stub.DeleteRun(pb.DeleteRunRequest(run_id=root), timeout=120)
    print(f"\nDeleteRun of a batch of 70,000 children: {time.monotonic() - started:.1f} s")
    assert _count(db, "SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_task_added_while_the_run_is_deleted_goes_with_it(
    db: Database, stub: RunServiceStub, migrated_url: str
) -> None:
    """PySpur inserts a task of the run in a transaction still open when
    DeleteRun comes: the delete waits for it (its lock on the tree's runs
    waits for the new row's reference), then deletes it with the run. It
    used to meet the row mid-delete and answer FAILED_PRECONDITION naming
    a reference that did not exist, then ABORTED."""
    with db.write() as s:
        run = add_run(s, add_workflow(s), tasks=TASKS)
    pyspur = create_engine(migrated_url)
    inserted = threading.Event()

    def write_a_task() -> None:
        with pyspur.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tasks (run_id, node_id, status, start_time) "
                    "VALUES (:r, 'late', 'RUNNING', now())"
                ),
                {"r": run},
            )
            inserted.set()
            time.sleep(1.0)  # DeleteRun waits on the new row's lock meanwhile

    writer = threading.Thread(target=write_a_task)
    writer.start()
    try:
        assert inserted.wait(5)
        started = time.monotonic()
        stub.DeleteRun(pb.DeleteRunRequest(run_id=run), timeout=10)
        assert time.monotonic() - started > 0.5  # it did wait for the writer
    finally:
        writer.join()
        pyspur.dispose()
    assert _count(db, "SELECT count(*) FROM tasks") == 0
    assert _count(db, "SELECT count(*) FROM runs") == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_child_moved_out_while_the_run_is_deleted_is_kept(
    db: Database, stub: RunServiceStub, migrated_url: str
) -> None:
    """PySpur moves a child run to another parent in a transaction still open
    when DeleteRun comes. The delete deleted it by its id all the same: a
    run outside the tree, and its tasks, lost (a hostile review, 2026-12-03).
    Now the answer is ABORTED with nothing deleted, and the retry deletes
    the tree without the run that left it."""
    with db.write() as s:
        version = add_workflow(s)
        root = add_run(s, version, tasks=TASKS)
        staying = add_run(s, version, parent_run_id=root, tasks=TASKS)
        leaving = add_run(s, version, parent_run_id=root, tasks=TASKS)
        elsewhere = add_run(s, version, tasks=TASKS)
    pyspur = create_engine(migrated_url)
    moved = threading.Event()

    def move_the_child() -> None:
        with pyspur.begin() as conn:
            conn.execute(
                text("UPDATE runs SET parent_run_id = :p WHERE id = :r"),
                {"p": elsewhere, "r": leaving},
            )
            moved.set()
            time.sleep(1.0)  # DeleteRun reaches the moved run's lock meanwhile

    writer = threading.Thread(target=move_the_child)
    writer.start()
    try:
        assert moved.wait(5)
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteRun(pb.DeleteRunRequest(run_id=root), timeout=10)
        assert raised.value.code() == grpc.StatusCode.ABORTED, raised.value.details()
        assert leaving in (raised.value.details() or "")
    finally:
        writer.join()
        pyspur.dispose()
    assert _count(db, "SELECT count(*) FROM runs") == 4  # nothing deleted
    stub.DeleteRun(pb.DeleteRunRequest(run_id=root), timeout=10)
    for gone in (root, staying):
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetRun(pb.GetRunRequest(run_id=gone))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    kept = stub.GetRun(pb.GetRunRequest(run_id=leaving)).run
    assert kept.parent_run_id == elsewhere
    assert len(kept.tasks) == len(TASKS)


def test_a_task_outside_the_tree_pointing_in_is_refused_for_good(
    db: Database, stub: RunServiceStub
) -> None:
    """A task of another run whose parent_task_id is a task of the run: a
    reference no retry mends, FAILED_PRECONDITION naming it (not ABORTED,
    which would have the client retry forever); nothing deleted."""
    with db.write() as s:
        version = add_workflow(s)
        run, other = add_run(s, version, tasks=TASKS), add_run(s, version, tasks=TASKS)
        s.execute(
            text(
                "UPDATE tasks SET parent_task_id = (SELECT id FROM tasks WHERE run_id = :r "
                "ORDER BY _intid LIMIT 1) WHERE run_id = :o AND node_id = 'llm'"
            ),
            {"r": run, "o": other},
        )
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            stub.DeleteRun(pb.DeleteRunRequest(run_id=run))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"of run {other}" in (raised.value.details() or "")
    assert _count(db, "SELECT count(*) FROM tasks") == 2 * len(TASKS)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("first_deletes", "answer", "runs_left"),
    [
        (("child", "root"), grpc.StatusCode.NOT_FOUND, 0),
        (("child",), grpc.StatusCode.OK, 0),
    ],
)
def test_runs_deleted_by_another_call_meanwhile(
    db: Database,
    stub: RunServiceStub,
    migrated_url: str,
    first_deletes: tuple[str, ...],
    answer: grpc.StatusCode,
    runs_left: int,
) -> None:
    """Another DeleteRun (of the run, or of a run below it) commits while
    this one waits for the tree's locks, its walk having seen those runs.
    It answered ABORTED ("retry"): for the run itself, a retry could only
    say NOT_FOUND; for a run below it, the retry deleted the rest. SQLite,
    where one delete comes after the other, answers NOT_FOUND and OK; so
    does PostgreSQL's now."""
    with db.write() as s:
        version = add_workflow(s)
        ids = {"root": add_run(s, version, tasks=TASKS)}
        ids["child"] = add_run(s, version, parent_run_id=ids["root"], tasks=TASKS)
    other = create_engine(migrated_url)
    outcome: list[grpc.StatusCode] = []
    try:
        with other.connect() as first, other.connect() as watcher:
            transaction = first.begin()
            mine = first.execute(text("SELECT pg_backend_pid()")).scalar_one()
            for name in first_deletes:  # the first delete, not yet committed
                first.execute(text("DELETE FROM tasks WHERE run_id = :r"), {"r": ids[name]})
                first.execute(text("DELETE FROM runs WHERE id = :r"), {"r": ids[name]})

            def second() -> None:
                try:
                    stub.DeleteRun(pb.DeleteRunRequest(run_id=ids["root"]), timeout=20)
                    outcome.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    outcome.append(error.code())

            caller = threading.Thread(target=second)
            caller.start()
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> :mine"
            )
            deadline = time.monotonic() + 10
            while watcher.execute(waiting, {"mine": mine}).scalar_one() == 0:
                assert time.monotonic() < deadline, "DeleteRun never waited for the lock"
                watcher.commit()
                time.sleep(0.02)
            transaction.commit()
            caller.join(20)
    finally:
        other.dispose()
    assert outcome == [answer]
    assert _count(db, "SELECT count(*) FROM runs") == runs_left
    assert _count(db, "SELECT count(*) FROM tasks") == 0
