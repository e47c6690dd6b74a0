"""README's first command run a second time (`spur-runs migrate && spur-runs
seed`, the server stopped and started again), after its walkthrough
deleted and changed the demo's runs: the walkthrough's preconditions hold
again, nothing else is added, and what is not the demo's is left as it was,
on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from factories import add_run, add_workflow, all_done
from servers import start_server
from spur.runs.v1 import run_pb2
from spur.runs.v1 import run_service_pb2 as pb
from spur.runs.v1.run_service_pb2_grpc import RunServiceStub
from spur_runs.store.db import Database
from spur_runs.store.models import Run, Task
from tools import spur_runs

pytestmark = pytest.mark.filterwarnings("ignore:Computed column:sqlalchemy.exc.SAWarning")

SHOWCASE = [f"R{i}" for i in range(1, 10)]
# What README's first command prints after the first line, when run again.
PUT_BACK_OUTPUT = [
    "demo workflows: S1, S2, S3 (0 created, 3 reused)",
    "batch run: R1 (children R2..R4)",
    "running run: R5",
    "paused run: R6",
    "failed run: R7",
    "canceled run: R8",
    "completed run: R9",
]


def first_command(url: str) -> list[str]:
    """README's first command without its install and serve steps."""
    for args in (["migrate"], ["seed"]):
        result = spur_runs(*args, "--database-url", url)
        assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def the_rest(url: str) -> dict[str, Any]:
    """Every run outside R1..R9 and its tasks, as stored."""
    db = Database.from_url(url, pool_size=1)
    try:
        with db.read() as conn:
            runs = conn.execute(select(Run.__table__).where(Run.id.not_in(SHOWCASE))).all()
            tasks = conn.execute(select(Task.__table__).where(Task.run_id.not_in(SHOWCASE))).all()
    finally:
        db.dispose()
    return {"runs": sorted(map(tuple, runs)), "tasks": sorted(map(tuple, tasks))}


def walk_through(url: str) -> None:
    """What README's walkthrough changes: the Node client deletes R9,
    `spur-runs demo` completes R5, "Deleting runs" deletes R8 and R1 (and
    with it R2..R4)."""
    server = start_server(url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            stub.DeleteRun(pb.DeleteRunRequest(run_id="R9"), timeout=30)
            demo = spur_runs("demo", "--database-url", url, "--runs", "1", "--step-seconds", "0.05")
            assert demo.returncode == 0, demo.stderr
            assert "R5: COMPLETED" in demo.stdout
            for run_id in ("R8", "R1"):
                stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), timeout=30)
            left = stub.ListRuns(pb.ListRunsRequest(page_size=100), timeout=30).runs
            assert {run.id for run in left} & set(SHOWCASE) == {"R5", "R6", "R7"}
    finally:
        server.stop(grace=1)


def check_walkthrough_preconditions(url: str) -> None:
    """What README's walkthrough (and docs/api.md's, docs/watch.md's
    examples) expect of the demo's runs, asked of a real server."""
    server = start_server(url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = RunServiceStub(channel)
            # "newest start_time first": R5, RUNNING, heads the list.
            first = stub.ListRuns(pb.ListRunsRequest(page_size=2), timeout=30).runs
            assert first[0].id == "R5" and first[0].status == run_pb2.Run.RUNNING
            expected = {
                "R5": run_pb2.Run.RUNNING,
                "R6": run_pb2.Run.PAUSED,
                "R7": run_pb2.Run.FAILED,
                "R8": run_pb2.Run.CANCELED,
                "R9": run_pb2.Run.COMPLETED,
            }
            for run_id, status in expected.items():
                run = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run
                assert run.status == status and not run.parent_run_id, run_id
                assert len(run.tasks) == 6, run_id
            paused = stub.GetRun(pb.GetRunRequest(run_id="R6"), timeout=30).run
            assert any(task.is_downstream_of_pause for task in paused.tasks)
            batch = stub.GetRun(pb.GetRunRequest(run_id="R1"), timeout=30).run
            assert batch.run_type == "batch" and batch.status == run_pb2.Run.COMPLETED
            children = stub.GetChildRuns(pb.GetChildRunsRequest(run_id="R1"), timeout=30).runs
            assert sorted(child.id for child in children) == ["R2", "R3", "R4"]
            failed = stub.ListRuns(
                pb.ListRunsRequest(status=[run_pb2.Run.FAILED], page_size=100), timeout=30
            ).runs
            assert [run.id for run in failed] == ["R7"]
            # docs/api.md: FAILED or PAUSED, parents only -> "total_size":2
            counted = stub.ListRuns(
                pb.ListRunsRequest(
                    status=[run_pb2.Run.FAILED, run_pb2.Run.PAUSED],
                    parent_only=True,
                    include_total_size=True,
                ),
                timeout=30,
            )
            assert counted.total_size == 2
            running = stub.ListRuns(
                pb.ListRunsRequest(status=[run_pb2.Run.RUNNING], page_size=100), timeout=30
            ).runs
            assert [run.id for run in running] == ["R5"]
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_readme_first_command_again_puts_the_demo_back(database_url: str) -> None:
    lines = first_command(database_url)
    assert lines[0].startswith("seeded 20 runs (120 tasks, 3 of them child runs) in ")
    # Data that is not the demo's: a PySpur workflow's run, after the seed's.
    db = Database.from_url(database_url, pool_size=1)
    try:
        with db.write() as conn:
            theirs = add_run(conn, add_workflow(conn, "someone's"), tasks=all_done())
    finally:
        db.dispose()
    assert theirs == "R21"
    walk_through(database_url)
    rest = the_rest(database_url)

    lines = first_command(database_url)
    check_walkthrough_preconditions(database_url)
    assert the_rest(database_url) == rest  # R10..R21 and their tasks untouched
    assert re.fullmatch(
        r"put the demo's runs R1\.\.R9 back as seeded in \d+\.\d s \(re-created R1, R2, R3, "
        r"R4, R8, R9; reset R5, R6, R7\), added no runs",
        lines[0],
    ), lines[0]
    assert lines[1:] == PUT_BACK_OUTPUT

    # Once more, on a database where nothing changed since: the same again.
    lines = first_command(database_url)
    assert "(reset R1, R2, R3, R4, R5, R6, R7, R8, R9), added no runs" in lines[0]
    check_walkthrough_preconditions(database_url)
    assert the_rest(database_url) == rest
    assert len(rest["runs"]) == 12  # R10..R20 and theirs: nothing added
